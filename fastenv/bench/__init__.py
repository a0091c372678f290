"""``fastenv.bench``: benchmark fastenv against baseline transports (``fastenv-bench``).

- :mod:`fastenv.bench.workloads`: named payloads (``small``, ``camera``,
  ``camera-<H>x<W>`` for size sweeps).
- :mod:`fastenv.bench.baselines`: the seed pickle-over-TCP protocol (with and
  without Nagle), pyzmq + pickle and ``multiprocessing.Pipe``, each serving
  the same env from its own process, and Gymnasium's ``AsyncVectorEnv``.
- :mod:`fastenv.bench.floors`: the physical floors (shared-memory ping-pong,
  spin and futex; the in-process memcpy reference).
- :mod:`fastenv.bench.runner`: :func:`run_transport` times step round trips
  (fastenv over shm, shm with the pure-Python doorbell, and tcp, or any
  baseline) and checks the observations against a local env.
- :mod:`fastenv.bench.stats`: percentiles, rates and spreads across repeats.
- :mod:`fastenv.bench.scaling`: aggregate steps/s against concurrent clients
  (``--scaling clients``) or envs per server (``--scaling envs``), one axis
  class per scaling dimension.
- :mod:`fastenv.bench.vectors`: the vector-env clients of ``--scaling envs``
  (``FastVectorEnv``, Gymnasium's ``AsyncVectorEnv`` and ``SyncVectorEnv``).
- :mod:`fastenv.bench.breakdown`: a fastenv row's round trip split into
  encode, transport, env step and decode (``--breakdown``).
- :mod:`fastenv.bench.results`: results across repeats and the JSON documents.
- :mod:`fastenv.bench.tables` / :mod:`fastenv.bench.render`: the tables, and
  rendering them as plain text, Markdown or a rich terminal table.
- :mod:`fastenv.bench.progress`: the progress bar (or lines) on stderr.
- :mod:`fastenv.bench.plot`: PNG figures (optional matplotlib, ``fastenv[plot]``).
- :mod:`fastenv.bench.targets`: the shared-memory issue's targets.
- :mod:`fastenv.bench.malloc`: one allocator setting for every process.
- :mod:`fastenv.bench.cli`: the ``fastenv-bench`` command.

Performance claims live here and in ``benchmarks/``, never in the unit tests.
"""

from fastenv.bench.baselines import (
    BASELINES,
    Baseline,
    EnvFactory,
    GymAsync,
    MpPipe,
    SeedPickle,
    SeedPickleNoDelay,
    ZmqPickle,
)
from fastenv.bench.breakdown import BreakdownRow, InProcessCosts, measure_costs
from fastenv.bench.floors import (
    FLOORS,
    MemcpyReference,
    ShmPingPongFutex,
    ShmPingPongSpin,
    memcpy_reference,
)
from fastenv.bench.render import Column, Note, Table
from fastenv.bench.runner import (
    FASTENV_TRANSPORTS,
    FLOOR_TRANSPORTS,
    TRANSPORTS,
    RunResult,
    TransportMismatch,
    TransportUnavailable,
    check_result,
    measure,
    open_transport,
    run_transport,
)
from fastenv.bench.scaling import (
    AXES,
    Axis,
    ClientsAxis,
    EnvsAxis,
    ScalingPoint,
    run_point,
)
from fastenv.bench.stats import Spread, Summary, median_summary, spread, summarize
from fastenv.bench.targets import Target, evaluate
from fastenv.bench.workloads import (
    PAYLOADS,
    Workload,
    build,
    get_workload,
    observations_equal,
    snapshot,
)

__all__ = [
    "AXES",
    "BASELINES",
    "FASTENV_TRANSPORTS",
    "FLOORS",
    "FLOOR_TRANSPORTS",
    "PAYLOADS",
    "TRANSPORTS",
    "Axis",
    "Baseline",
    "BreakdownRow",
    "ClientsAxis",
    "Column",
    "EnvFactory",
    "EnvsAxis",
    "GymAsync",
    "InProcessCosts",
    "MemcpyReference",
    "MpPipe",
    "Note",
    "RunResult",
    "ScalingPoint",
    "SeedPickle",
    "SeedPickleNoDelay",
    "ShmPingPongFutex",
    "ShmPingPongSpin",
    "Spread",
    "Summary",
    "Table",
    "Target",
    "TransportMismatch",
    "TransportUnavailable",
    "Workload",
    "ZmqPickle",
    "build",
    "check_result",
    "evaluate",
    "get_workload",
    "measure",
    "measure_costs",
    "median_summary",
    "memcpy_reference",
    "observations_equal",
    "open_transport",
    "run_point",
    "run_transport",
    "snapshot",
    "spread",
    "summarize",
]
