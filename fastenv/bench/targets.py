"""The data-plane issues' targets, evaluated on one run's medians (pure functions, no I/O).

Per payload (p50 and p99 are the medians across repeats of each row):

``small``
    ``fastenv-shm`` p50 ≤ 10 µs; ``gym-async`` p50 ≥ 10 × ``fastenv-shm`` p50;
    ``fastenv-shm`` p99 ≤ 5 × its p50; ``fastenv-tcp`` p50 ≤ 0.6 × ``zmq-pickle`` p50.
``camera`` (and ``camera-alloc``, the same frames without :func:`fastenv.reply_array`)
    ``fastenv-shm`` p50 ≤ 1.3 × one ``np.copyto`` of the observation (shown
    against the cached re-copy and against the fresh-source copy, see
    :mod:`fastenv.bench.floors`); ``gym-async`` p50 ≥ 4 × ``fastenv-shm`` p50;
    ``fastenv-shm`` p99 ≤ 5 × its p50; ``fastenv-tcp`` p50 ≤ 1.5 × ``tcp-raw``
    p50 (the raw socket moving the same bytes, env step included on both);
    ``zmq-pickle`` p50 ≥ 3 × ``fastenv-tcp`` p50.

A target whose rows did not run (or the memcpy reference is missing) is
``n/a``, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "evaluate", "format_targets"]


@dataclass(frozen=True)
class Target:
    """One target: ``measured`` compared with ``limit`` (``at_most`` or at least)."""

    name: str
    measured: float
    limit: float
    unit: str  # "µs" or "x" (a ratio)
    at_most: bool
    formula: str

    @property
    def status(self) -> str:
        """``PASS``, ``MISS`` or ``n/a`` (not measured)."""
        if math.isnan(self.measured):
            return "n/a"
        ok = self.measured <= self.limit if self.at_most else self.measured >= self.limit
        return "PASS" if ok else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "formula": self.formula,
            "measured": None if math.isnan(self.measured) else self.measured,
            "limit": self.limit,
            "unit": self.unit,
            "comparison": "<=" if self.at_most else ">=",
            "status": self.status,
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not (math.isnan(a) or math.isnan(b)) else math.nan


def evaluate(
    payload: str,
    p50_us: Mapping[str, float],
    p99_us: Mapping[str, float],
    memcpy_us: Mapping[str, float] | None = None,
) -> list[Target]:
    """The targets for ``payload`` from per-row p50 / p99 (µs) and memcpy p50s (``cached``, ``fresh``)."""

    def p50(row: str) -> float:
        return float(p50_us.get(row, math.nan))

    shm = p50("fastenv-shm")
    tail = Target(
        f"{payload}: fastenv-shm p99 tail", _ratio(float(p99_us.get("fastenv-shm", math.nan)), shm),
        5.0, "x", True, "fastenv-shm p99 / p50",
    )  # fmt: skip
    if payload == "small":
        return [
            Target("small step: fastenv-shm p50", shm, 10.0, "µs", True, "fastenv-shm p50"),
            Target("small step: vs gym-async", _ratio(p50("gym-async"), shm), 10.0, "x", False,
                   "gym-async p50 / fastenv-shm p50"),
            tail,
            Target("small step: fastenv-tcp vs zmq-pickle", _ratio(p50("fastenv-tcp"), p50("zmq-pickle")), 0.6,
                   "x", True, "fastenv-tcp p50 / zmq-pickle p50"),
        ]  # fmt: skip
    if payload in ("camera", "camera-alloc"):
        memcpy_us = memcpy_us or {}
        return [
            Target("camera: fastenv-shm vs memcpy (cached)", _ratio(shm, memcpy_us.get("cached", math.nan)), 1.3,
                   "x", True, "fastenv-shm p50 / np.copyto p50 (cached re-copy)"),
            Target("camera: fastenv-shm vs memcpy (fresh source)", _ratio(shm, memcpy_us.get("fresh", math.nan)),
                   1.3, "x", True, "fastenv-shm p50 / np.copyto p50 (fresh source)"),
            Target("camera: vs gym-async", _ratio(p50("gym-async"), shm), 4.0, "x", False,
                   "gym-async p50 / fastenv-shm p50"),
            tail,
            Target("camera: fastenv-tcp vs tcp-raw", _ratio(p50("fastenv-tcp"), p50("tcp-raw")), 1.5, "x", True,
                   "fastenv-tcp p50 / tcp-raw p50"),
            Target("camera: fastenv-tcp vs zmq-pickle", _ratio(p50("zmq-pickle"), p50("fastenv-tcp")), 3.0, "x",
                   False, "zmq-pickle p50 / fastenv-tcp p50"),
        ]  # fmt: skip
    return [tail]


def format_targets(targets: list[Target]) -> str:
    """``targets:`` then one line per target: status, name, formula, measured against limit."""
    lines = ["targets:"]
    for target in targets:
        op = "≤" if target.at_most else "≥"
        measured = "-" if math.isnan(target.measured) else (
            f"{target.measured:,.1f} µs" if target.unit == "µs" else f"{target.measured:.2f}x"
        )
        limit = f"{target.limit:g} µs" if target.unit == "µs" else f"{target.limit:g}x"
        lines.append(f"  [{target.status:>4}] {target.formula} {op} {limit}: {measured}")
    return "\n".join(lines)
