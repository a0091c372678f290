"""The memcpy reference: one in-process ``np.copyto`` of a payload's observation arrays.

*cached* re-copies the same source (source and destination hot in cache),
*fresh-source* copies a newly allocated and written source each time (as an
env renders a new frame every step). A reference time, not a transport.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv.bench.stats import Summary, summarize
from fastenv.bench.workloads import get_workload, observation_arrays

__all__ = ["MemcpyReference", "memcpy_reference"]


@dataclass(frozen=True)
class MemcpyReference:
    """In-process ``np.copyto`` of one observation's arrays: cached and fresh-source."""

    payload: str
    nbytes: int
    cached: Summary
    fresh: Summary

    def as_dict(self) -> dict[str, Any]:
        return {
            "payload": self.payload,
            "nbytes": self.nbytes,
            "cached": self.cached.as_dict(),
            "fresh_source": self.fresh.as_dict(),
        }


def memcpy_reference(payload: str, copies: int = 200, warmup: int = 10) -> MemcpyReference:
    """Time ``copies`` copies of the payload's observation arrays, each way (see the module docstring)."""
    if copies < 1:
        raise ValueError(f"need copies >= 1, got {copies}")
    workload = get_workload(payload)
    env = workload.make_env()
    try:
        arrays = [array for _, array in observation_arrays(env.reset(seed=workload.seed)[0])]
    finally:
        env.close()
    targets = [np.empty_like(array) for array in arrays]
    clock = time.perf_counter_ns

    def copy_all(sources: list[np.ndarray]) -> int:
        t0 = clock()
        for target, source in zip(targets, sources):
            np.copyto(target, source)
        return clock() - t0

    cached = np.zeros(copies, dtype=np.int64)
    fresh = np.zeros(copies, dtype=np.int64)
    for i in range(-warmup, copies):
        elapsed = copy_all(arrays)
        if i >= 0:
            cached[i] = elapsed
    for i in range(-warmup, copies):
        sources = [np.empty_like(array) for array in arrays]
        for source in sources:
            source.fill(i & 0x7F)  # written just before the copy, as a renderer would
        elapsed = copy_all(sources)
        if i >= 0:
            fresh[i] = elapsed
    return MemcpyReference(payload, sum(a.nbytes for a in arrays), summarize(cached), summarize(fresh))
