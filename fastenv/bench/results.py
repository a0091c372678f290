"""Results across repeats, and the JSON documents ``fastenv-bench --json`` writes (no I/O).

- :class:`Row`: one transport's runs on one payload (the comparison table's row).
- :class:`PayloadResults`: every row of one payload, its memcpy reference and targets.
- :class:`ScalingRow`: one transport's scaling points at one count.
- :class:`~fastenv.bench.breakdown.BreakdownRow` (in :class:`PayloadResults`):
  a fastenv row's round trip split into encode, transport, env and decode.
- :func:`comparison_report`, :func:`sweep_report`, :func:`scaling_report`: the
  documents, tagged :data:`SCHEMA`, :data:`SWEEP_SCHEMA` and :data:`SCALING_SCHEMA`.

Throughput (``mb_per_s``) counts the observation's array bytes delivered per
second in a closed loop: observation bytes × steps/s / 10⁶.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from fastenv.bench.axes import ScalingPoint
from fastenv.bench.breakdown import BreakdownRow
from fastenv.bench.memcpy import MemcpyReference
from fastenv.bench.runner import FASTENV_TRANSPORTS
from fastenv.bench.stats import Spread, median_summary, spread
from fastenv.bench.targets import Target
from fastenv.bench.timing import RunResult

__all__ = [
    "SCALING_SCHEMA",
    "SCHEMA",
    "SWEEP_SCHEMA",
    "PayloadResults",
    "Row",
    "ScalingRow",
    "comparison_report",
    "machine_info",
    "reference",
    "scaling_baselines",
    "scaling_ratio",
    "scaling_report",
    "scaling_sweep_report",
    "sweep_report",
]

SCHEMA = "fastenv-bench/2"
SWEEP_SCHEMA = "fastenv-bench-sweep/1"
SCALING_SCHEMA = "fastenv-bench-scaling/1"


@dataclass
class Row:
    """One transport's runs across repeats, or why it has none."""

    transport: str
    runs: list[RunResult] = field(default_factory=list)
    status: str = "ok"  # "ok", "unavailable" or "mismatch"
    error: str | None = None

    @property
    def medians(self) -> dict[str, Spread] | None:
        """Per-metric spreads across repeats (``None`` without runs)."""
        return dict(median_summary([run.summary for run in self.runs])) if self.runs else None

    @property
    def p50(self) -> float:
        medians = self.medians
        return medians["p50_us"].median if medians else math.nan

    def mb_per_s(self, nbytes: int) -> float:
        """Median observation throughput for ``nbytes`` per observation (``nan`` without runs)."""
        medians = self.medians
        return nbytes * medians["steps_per_s"].median / 1e6 if medians else math.nan

    def rtt_us(self) -> np.ndarray:
        """Every timed round trip of every repeat, in µs (for distributions)."""
        if not self.runs:
            return np.zeros(0)
        return np.concatenate([run.rtt_ns for run in self.runs]).astype(np.float64) / 1e3


def reference(rows: Sequence[Row]) -> Row | None:
    """The fastest fastenv row, else the fastest row; ``None`` when nothing ran."""
    measured = [row for row in rows if row.status == "ok" and row.runs]
    preferred = [row for row in measured if row.transport in FASTENV_TRANSPORTS] or measured
    return min(preferred, key=lambda row: row.p50, default=None)


@dataclass
class PayloadResults:
    """Every row of one payload, the observation size, the memcpy reference, the targets and the breakdown.

    ``breakdown`` is ``None`` when it was not measured (``--no-breakdown``).
    """

    payload: str
    nbytes: int
    rows: list[Row]
    memcpy: MemcpyReference | None = None
    targets: list[Target] = field(default_factory=list)
    breakdown: list[BreakdownRow] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The payload's part of a report: reference, one entry per transport, memcpy, targets, breakdown."""
        ref = reference(self.rows)
        results = []
        for row in self.rows:
            medians = row.medians
            ratio = None
            if medians is not None and ref is not None and ref.p50 > 0:
                ratio = medians["p50_us"].median / ref.p50
            results.append(
                {
                    "transport": row.transport,
                    "payload": self.payload,
                    "status": row.status,
                    "error": row.error,
                    "median": {k: s.as_dict() for k, s in medians.items()} if medians else None,
                    "mb_per_s": row.mb_per_s(self.nbytes) if medians else None,
                    "p50_ratio_to_reference": ratio,
                    "runs": [run.as_dict() for run in row.runs],
                }
            )
        return {
            "payload": self.payload,
            "observation_nbytes": self.nbytes,
            "reference": ref.transport if ref is not None else None,
            "results": results,
            "memcpy": self.memcpy.as_dict() if self.memcpy is not None else None,
            "targets": [target.as_dict() for target in self.targets],
            "breakdown": [row.as_dict() for row in self.breakdown] if self.breakdown is not None else None,
        }


@dataclass
class ScalingRow:
    """One transport's points at one scaling count across repeats, or why it has none."""

    transport: str
    count: int
    points: list[ScalingPoint] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None

    def metric(self, name: str) -> Spread:
        """Spread across repeats of a :class:`~fastenv.bench.axes.ScalingPoint` property."""
        return spread(float(getattr(point, name)) for point in self.points)

    @property
    def steps_per_s(self) -> float:
        """Median aggregate steps/s across repeats (``nan`` without points)."""
        return self.metric("steps_per_s").median


def scaling_baselines(rows: Sequence[ScalingRow]) -> dict[str, ScalingRow]:
    """Per transport, its measured row with the smallest count (speedups are relative to it)."""
    base: dict[str, ScalingRow] = {}
    for row in rows:
        if row.status == "ok" and row.points:
            current = base.get(row.transport)
            if current is None or row.count < current.count:
                base[row.transport] = row
    return base


def scaling_ratio(rows: Sequence[ScalingRow], row: ScalingRow, reference: str | None) -> float:
    """``row``'s steps/s over the ``reference`` transport's at the same count (``nan`` when either is missing)."""
    if reference is None or row.status != "ok" or not row.points:
        return math.nan
    for other in rows:
        if other.transport == reference and other.count == row.count and other.status == "ok" and other.points:
            base = other.steps_per_s
            return row.steps_per_s / base if base > 0 else math.nan
    return math.nan


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU count, OS, Python, numpy and pyzmq versions."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical = None
    try:
        from fastenv import __version__ as fastenv_version
    except ImportError:  # pragma: no cover
        fastenv_version = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": physical,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "fastenv": fastenv_version,
    }


def _clean(value: Any) -> Any:
    """Replace non-finite floats by ``None`` so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _header(schema: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "schema": schema,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": dict(config),
    }


def comparison_report(config: Mapping[str, Any], results: PayloadResults) -> dict[str, Any]:
    """One payload's document (:data:`SCHEMA`): machine, config, then :meth:`PayloadResults.as_dict`."""
    return _clean({**_header(SCHEMA, config), **results.as_dict()})


def sweep_report(config: Mapping[str, Any], sections: Sequence[PayloadResults]) -> dict[str, Any]:
    """A sweep's document (:data:`SWEEP_SCHEMA`): machine, config, one entry per payload under ``payloads``."""
    return _clean({**_header(SWEEP_SCHEMA, config), "payloads": [s.as_dict() for s in sections]})


def scaling_report(
    config: Mapping[str, Any], rows: Sequence[ScalingRow], *, reference: str | None = None
) -> dict[str, Any]:
    """A scaling suite's document (:data:`SCALING_SCHEMA`): one entry per (transport, count).

    ``steps_per_s`` counts env steps (a vector env's batch step counts one per
    env); with ``reference``, each entry's ``ratio_to_reference`` is its
    steps/s over that transport's at the same count.
    """
    return _clean({**_header(SCALING_SCHEMA, config), "results": _scaling_results(rows, reference)})


def _scaling_results(rows: Sequence[ScalingRow], reference: str | None) -> list[dict[str, Any]]:
    """One entry per (transport, count) of one payload's scaling suite."""
    base = scaling_baselines(rows)
    results = []
    for row in rows:
        entry: dict[str, Any] = {
            "transport": row.transport,
            "count": row.count,
            "status": row.status,
            "error": row.error,
            "median": None,
            "speedup": None,
            "efficiency": None,
            "reference": reference,
            "ratio_to_reference": scaling_ratio(rows, row, reference),
            "runs": [point.as_dict() for point in row.points],
        }
        if row.points:
            entry["median"] = {
                name: row.metric(name).as_dict()
                for name in ("steps_per_s", "per_client_steps_per_s", "p50_us", "p99_us", "span_s")
            }
            first = base.get(row.transport)
            if first is not None and first.steps_per_s > 0:
                speedup = row.steps_per_s / first.steps_per_s
                entry["speedup"] = speedup
                entry["efficiency"] = speedup * first.count / row.count
        results.append(entry)
    return results


def scaling_sweep_report(
    config: Mapping[str, Any], sections: Mapping[str, Sequence[ScalingRow]], *, reference: str | None = None
) -> dict[str, Any]:
    """Several payloads' scaling suites in one document (:data:`SCALING_SCHEMA`): one
    ``{"payload", "results"}`` entry per payload under ``payloads``, each as :func:`scaling_report`'s."""
    payloads = [
        {"payload": payload, "results": _scaling_results(rows, reference)} for payload, rows in sections.items()
    ]
    return _clean({**_header(SCALING_SCHEMA, config), "payloads": payloads})
