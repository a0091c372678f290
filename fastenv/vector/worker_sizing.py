"""How a :class:`~fastenv.vector.workers.WorkerVectorHost` sizes its workers, and the factory they build envs with."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["TargetFactory", "default_workers", "split_envs", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that is missing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(num_envs: int) -> int:
    """The default worker count: one per usable CPU, never more than envs."""
    return max(1, min(int(num_envs), usable_cpus()))


def split_envs(num_envs: int, workers: int) -> list[range]:
    """``num_envs`` envs in ``workers`` contiguous slices whose sizes differ by at most one.

    More workers than envs are cut down to one env each.
    """
    if num_envs < 1 or workers < 1:
        raise ValueError(f"need at least one env and one worker, got {num_envs} envs and {workers} workers")
    workers = min(workers, num_envs)
    size, extra = divmod(num_envs, workers)
    slices, start = [], 0
    for index in range(workers):
        stop = start + size + (index < extra)
        slices.append(range(start, stop))
        start = stop
    return slices


@dataclasses.dataclass(frozen=True)
class TargetFactory:
    """A picklable env factory: ``fastenv serve``'s TARGET and ``--env-kwargs``, resolved where it is called.

    Worker processes build their envs with it (see :func:`fastenv.target.resolve_target`).
    """

    target: str
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self) -> Any:
        make = self.__dict__.get("_make")
        if make is None:  # resolve once per process: a file target's module is loaded once, not per env
            from fastenv.target import resolve_target

            make = resolve_target(self.target, self.env_kwargs)
            object.__setattr__(self, "_make", make)
        return make()

    def __reduce__(self) -> tuple[Any, ...]:
        return (TargetFactory, (self.target, self.env_kwargs))
