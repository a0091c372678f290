"""Summaries of per-step round-trip times: pure functions, no I/O.

Samples are nanosecond integers (from :func:`time.perf_counter_ns`); summaries
are reported in microseconds. Percentiles use numpy's default linear
interpolation between closest ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

__all__ = ["Spread", "Summary", "median_summary", "spread", "summarize"]


@dataclass(frozen=True)
class Summary:
    """One run's round-trip statistics, in microseconds (``steps_per_s`` in 1/s).

    ``steps_per_s`` is the sequential rate ``1 / mean``: what a closed loop of
    back-to-back steps achieves. ``cpu_us`` is the mean client CPU time per step
    (``nan`` when no CPU samples were given); ``server_cpu_us`` the server
    process's CPU time (user + system, its children included) over the timed
    loop divided by the timed steps (``nan`` without a separate server process).
    """

    count: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    steps_per_s: float
    cpu_us: float = math.nan
    server_cpu_us: float = math.nan

    def as_dict(self) -> dict[str, float]:
        """A plain dict (JSON-ready; ``nan`` is written as ``NaN`` by :mod:`json`)."""
        return asdict(self)


@dataclass(frozen=True)
class Spread:
    """The median of a metric across repeats and how far the repeats spread."""

    median: float
    low: float
    high: float

    @property
    def relative(self) -> float:
        """``(high - low) / median`` (0 for a single repeat, ``nan`` for a zero median)."""
        if self.median == 0:
            return math.nan
        return (self.high - self.low) / self.median

    def as_dict(self) -> dict[str, float]:
        """``{"median", "low", "high", "relative"}``."""
        return {"median": self.median, "low": self.low, "high": self.high, "relative": self.relative}


def summarize(
    rtt_ns: Sequence[int] | np.ndarray,
    cpu_ns: Sequence[int] | np.ndarray | None = None,
    server_cpu_ns: float | None = None,
) -> Summary:
    """Summarise per-step round-trip times (ns) and optional per-step client CPU times (ns).

    ``server_cpu_ns`` is the server's total CPU time over all the timed steps (ns), if known.

    Raises:
        ValueError: when ``rtt_ns`` is empty or ``cpu_ns`` has another length.
    """
    samples = np.asarray(rtt_ns, dtype=np.float64).ravel()
    if samples.size == 0:
        raise ValueError("summarize() needs at least one round-trip sample")
    p50, p90, p99 = np.percentile(samples, [50.0, 90.0, 99.0])
    mean = float(samples.mean())
    cpu = math.nan
    if cpu_ns is not None:
        cpu_samples = np.asarray(cpu_ns, dtype=np.float64).ravel()
        if cpu_samples.size != samples.size:
            raise ValueError(f"got {cpu_samples.size} CPU samples for {samples.size} round trips")
        cpu = float(cpu_samples.mean()) / 1e3
    return Summary(
        count=int(samples.size),
        p50_us=float(p50) / 1e3,
        p90_us=float(p90) / 1e3,
        p99_us=float(p99) / 1e3,
        max_us=float(samples.max()) / 1e3,
        mean_us=mean / 1e3,
        steps_per_s=1e9 / mean if mean > 0 else math.inf,
        cpu_us=cpu,
        server_cpu_us=math.nan if server_cpu_ns is None else float(server_cpu_ns) / samples.size / 1e3,
    )


def spread(values: Iterable[float]) -> Spread:
    """Median, minimum and maximum of one metric across repeats (``nan`` values ignored)."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if data.size == 0:
        return Spread(math.nan, math.nan, math.nan)
    return Spread(float(np.median(data)), float(data.min()), float(data.max()))


def median_summary(summaries: Sequence[Summary]) -> Mapping[str, Spread]:
    """Per-metric :class:`Spread` across repeated runs of one transport.

    The result maps each :class:`Summary` field name (``count`` included) to
    its spread; medians are taken metric by metric, so they need not come from
    the same repeat.
    """
    if not summaries:
        raise ValueError("median_summary() needs at least one summary")
    return {f.name: spread(float(getattr(s, f.name)) for s in summaries) for f in fields(Summary)}
