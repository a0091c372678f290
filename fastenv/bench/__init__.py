"""``fastenv.bench``: benchmark fastenv against baseline transports (``fastenv-bench``).

- :mod:`fastenv.bench.workloads`: named payloads (``small``, ``camera``).
- :mod:`fastenv.bench.baselines`: the seed pickle-over-TCP protocol (with and
  without Nagle) and pyzmq + pickle, each serving the same env from its own
  process.
- :mod:`fastenv.bench.runner`: :func:`run_transport` times step round trips
  and checks the observations against a local env.
- :mod:`fastenv.bench.stats`: percentiles, rates and spreads across repeats.
- :mod:`fastenv.bench.cli`: the ``fastenv-bench`` command.

Performance claims live here and in ``benchmarks/``, never in the unit tests.
"""

from fastenv.bench.baselines import BASELINES, Baseline, SeedPickle, SeedPickleNoDelay, ZmqPickle
from fastenv.bench.runner import (
    FASTENV_TRANSPORTS,
    TRANSPORTS,
    RunResult,
    TransportMismatch,
    TransportUnavailable,
    open_transport,
    run_transport,
)
from fastenv.bench.stats import Spread, Summary, median_summary, spread, summarize
from fastenv.bench.workloads import PAYLOADS, Workload, build, get_workload, observations_equal

__all__ = [
    "BASELINES",
    "FASTENV_TRANSPORTS",
    "PAYLOADS",
    "TRANSPORTS",
    "Baseline",
    "RunResult",
    "SeedPickle",
    "SeedPickleNoDelay",
    "Spread",
    "Summary",
    "TransportMismatch",
    "TransportUnavailable",
    "Workload",
    "ZmqPickle",
    "build",
    "get_workload",
    "median_summary",
    "observations_equal",
    "open_transport",
    "run_transport",
    "spread",
    "summarize",
]
