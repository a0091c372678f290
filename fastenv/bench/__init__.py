"""``fastenv.bench``: benchmark fastenv against baseline transports (``fastenv-bench``).

- :mod:`fastenv.bench.workloads`: named payloads (``small``, ``camera``,
  ``camera-<H>x<W>`` for size sweeps, ``costly`` and ``uneven``: the
  CPU-bound :mod:`fastenv.bench.cost_env`).
- :mod:`fastenv.bench.baselines`: the baseline registry and their server's
  entry point: the seed pickle-over-TCP protocol (with and without Nagle,
  :mod:`fastenv.bench.seed_pickle`), pyzmq + pickle
  (:mod:`fastenv.bench.zmq_pickle`) and ``multiprocessing.Pipe``
  (:mod:`fastenv.bench.mp_pipe`), each serving the same env from its own
  process started by :mod:`fastenv.bench.serverproc`; and Gymnasium's
  ``AsyncVectorEnv`` (:mod:`fastenv.bench.gym_async`).
- :mod:`fastenv.bench.floors`: the physical floors (shared-memory ping-pong,
  spin and futex, :mod:`fastenv.bench.floor_shm`; raw TCP,
  :mod:`fastenv.bench.floor_tcp`; their common
  :mod:`fastenv.bench.floor_layout`); :mod:`fastenv.bench.memcpy`: the
  in-process memcpy reference.
- :mod:`fastenv.bench.runner`: :func:`run_transport` starts a transport
  (fastenv over shm, shm with the pure-Python doorbell, and tcp, or any
  baseline) and times it; :mod:`fastenv.bench.timing`: :func:`measure`, the
  client loop, which checks the observations against a local env.
- :mod:`fastenv.bench.stats`: percentiles, rates and spreads across repeats.
- :mod:`fastenv.bench.scaling`: aggregate steps/s against concurrent clients
  (``--scaling clients``) or envs per server (``--scaling envs``);
  :mod:`fastenv.bench.axes`: one axis class per scaling dimension, and the
  points they measure.
- :mod:`fastenv.bench.vectors`: the vector-env clients of ``--scaling envs``
  (``FastVectorEnv``, with ``--workers`` and as the async pool,
  :mod:`fastenv.bench.vector_pool`; Gymnasium's ``AsyncVectorEnv`` and
  ``SyncVectorEnv``; SB3's and PufferLib's vectorizers,
  :mod:`fastenv.bench.vector_peers`).
- :mod:`fastenv.bench.breakdown`: a fastenv row's round trip split into
  encode, transport, env step and decode (``--breakdown``), with the planes'
  in-process paths in :mod:`fastenv.bench.breakdown_paths`.
- :mod:`fastenv.bench.results`: results across repeats and the JSON documents.
- :mod:`fastenv.bench.tables` / :mod:`fastenv.bench.render`: the tables, and
  rendering them as plain text, Markdown or a rich terminal table.
- :mod:`fastenv.bench.progress`: the progress bar (or lines) on stderr.
- :mod:`fastenv.bench.plot`: PNG figures (optional matplotlib, ``fastenv[plot]``).
- :mod:`fastenv.bench.targets`: the shared-memory issue's targets.
- :mod:`fastenv.bench.malloc`: one allocator setting for every process.
- :mod:`fastenv.bench.cli`: the ``fastenv-bench`` command, with its flags in
  :mod:`fastenv.bench.options` and its output in :mod:`fastenv.bench.report`.

Performance claims live here and in ``benchmarks/``, never in the unit tests.
"""

from fastenv.bench.axes import AXES, Axis, ClientsAxis, EnvsAxis, ScalingPoint
from fastenv.bench.baselines import BASELINES
from fastenv.bench.breakdown import BreakdownRow, InProcessCosts, measure_costs
from fastenv.bench.floor_shm import ShmPingPongFutex, ShmPingPongSpin
from fastenv.bench.floors import FLOORS
from fastenv.bench.gym_async import EnvFactory, GymAsync
from fastenv.bench.memcpy import MemcpyReference, memcpy_reference
from fastenv.bench.mp_pipe import MpPipe
from fastenv.bench.render import Column, Note, Table
from fastenv.bench.runner import (
    FASTENV_TRANSPORTS,
    FLOOR_TRANSPORTS,
    TRANSPORTS,
    TransportUnavailable,
    open_transport,
    run_transport,
)
from fastenv.bench.scaling import run_point
from fastenv.bench.seed_pickle import SeedPickle, SeedPickleNoDelay
from fastenv.bench.serverproc import Baseline
from fastenv.bench.stats import Spread, Summary, median_summary, spread, summarize
from fastenv.bench.targets import Target, evaluate
from fastenv.bench.timing import RunResult, TransportMismatch, check_result, measure
from fastenv.bench.workloads import (
    PAYLOADS,
    Workload,
    build,
    get_workload,
    observations_equal,
    snapshot,
)
from fastenv.bench.zmq_pickle import ZmqPickle

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
