"""Scaling axes and points: what a ``--scaling`` count means, and what one (transport, count) measured.

An *axis* says what a count means. :data:`AXES` holds:

- ``clients``: one ``fastenv serve TARGET --mode per-client`` server and
  *count* client processes, each driving its own env on it.
- ``envs``: one ``fastenv serve TARGET --num-envs COUNT --mode per-client``
  server (*count* envs behind one batched
  :class:`~fastenv.vector.VectorHost`; with ``--workers auto`` for the
  ``fastenv-workers`` and ``fastenv-pool`` rows) and one client process
  driving them with :class:`fastenv.FastVectorEnv`; in the same table,
  Gymnasium's ``AsyncVectorEnv(COUNT envs, shared_memory=True)``
  (``gym-async``) and ``SyncVectorEnv(COUNT envs)`` (``gym-sync``, the
  reference), SB3's ``SubprocVecEnv`` and PufferLib's multiprocessing
  vectorizer over the same env, each built in its own client process (see
  :mod:`fastenv.bench.vectors`). Throughput counts env steps: batch steps ×
  count (× 1/2 for the pool, whose calls return half the envs).

A :class:`ScalingPoint` is one (transport, count) run of an axis: the
:class:`ClientRun` of every client process, and the throughput over the span
from the first client's start to the last client's end.

Adding an axis: subclass :class:`Axis` (the server arguments for a count,
how many client processes, their extra arguments, the env steps per ``step``
call, which transports it runs and how its table reads) and register it in
:data:`AXES`; teach the client process
(:func:`fastenv.bench.scaling._client_main`) any new client argument. The
CLI (``--scaling``, ``--counts``, ``--transports``), the table, the JSON and
the plot take the axis from :data:`AXES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastenv.bench.runner import FASTENV_TRANSPORTS
from fastenv.bench.stats import Summary, spread
from fastenv.bench.vectors import (
    GYM_VECTORS,
    PEER_VECTORS,
    VECTOR_TRANSPORTS,
    WORKER_ROWS,
    env_steps_per_call,
    served_by,
    unavailable,
)

__all__ = [
    "AXES",
    "SCALING_TRANSPORTS",
    "Axis",
    "ClientRun",
    "ClientsAxis",
    "EnvsAxis",
    "ScalingPoint",
]


class Axis:
    """What a scaling count means: the server's arguments and the client processes for a count.

    Subclass and register in :data:`AXES` to add an axis (see the module docstring).
    """

    #: The ``--scaling`` name.
    name: str = ""
    #: What the count is, for table headers and plot labels.
    label: str = ""
    #: The transports the axis can run (``--transports``).
    transports: tuple[str, ...] = FASTENV_TRANSPORTS
    #: The transports it runs when ``--transports`` is not given.
    default_transports: tuple[str, ...] = ("fastenv-shm", "fastenv-tcp")
    #: The counts it runs when ``--counts`` is not given.
    default_counts: tuple[int, ...] = (1, 2, 4)
    #: What the throughput counts (the plot's y axis).
    rate_label: str = "steps/s (all clients)"
    #: Whether a point has several clients (the table's "per client" column).
    per_client: bool = True
    #: What one timed call is (table headers: "steps", "p50 µs").
    call: str = "step"
    #: A transport every row is compared with at the same count (a table column), if any.
    reference: str | None = None
    #: ``--quick``: the counts, and the payloads (None: ``--payload``'s).
    quick_counts: tuple[int, ...] = (1, 2)
    quick_payloads: tuple[str, ...] | None = None

    def server_args(self, count: int, transport: str | None = None) -> list[str]:
        """Extra ``fastenv serve`` arguments for ``count`` (and the row ``transport``)."""
        raise NotImplementedError

    def server_transport(self, transport: str) -> str | None:
        """The fastenv server row to start for ``transport`` (None: its clients need no server)."""
        return transport if transport in FASTENV_TRANSPORTS else None

    def unavailable(self, transport: str, payload: str) -> str | None:
        """Why ``transport`` cannot run ``payload`` on this machine (a library missing), or None."""
        return None

    def vector_envs(self, count: int) -> int | None:
        """How many envs one vector env of a point with ``count`` has (None: the clients' envs are single)."""
        return None

    def client_processes(self, count: int) -> int:
        """How many client processes a point with ``count`` runs."""
        raise NotImplementedError

    def client_args(self, count: int) -> list[str]:
        """Extra arguments of every client process (``python -m fastenv.bench.scaling``)."""
        return []

    def env_steps_per_call(self, count: int, transport: str | None = None) -> int:
        """Env steps one client ``step`` call makes (more than 1 for a vector env)."""
        return 1

    def notes(self) -> list[str]:
        """Footnotes that say what the axis's rows are."""
        return []


class ClientsAxis(Axis):
    """``count`` client processes, each with its own env on one per-client-mode server."""

    name = "clients"
    label = "clients"

    def server_args(self, count: int, transport: str | None = None) -> list[str]:
        return ["--mode", "per-client"]

    def client_processes(self, count: int) -> int:
        return count


class EnvsAxis(Axis):
    """``count`` envs behind one vector env, one client: a ``--num-envs`` server, or Gymnasium's vector envs."""

    name = "envs"
    label = "envs"
    transports = VECTOR_TRANSPORTS
    default_transports = ("fastenv-shm", "fastenv-tcp", *WORKER_ROWS, *GYM_VECTORS, *PEER_VECTORS)
    default_counts = (1, 2, 4, 8, 16)
    rate_label = "env steps/s (one client, one vector env)"
    per_client = False
    call = "batch step"
    reference = "gym-sync"
    quick_counts = (8,)
    quick_payloads = ("small", "costly", "uneven")

    def server_args(self, count: int, transport: str | None = None) -> list[str]:
        workers = ["--workers", "auto"] if transport in WORKER_ROWS else []
        return ["--num-envs", str(count), "--mode", "per-client", *workers]

    def server_transport(self, transport: str) -> str | None:
        return served_by(transport)

    def unavailable(self, transport: str, payload: str) -> str | None:
        return unavailable(transport, payload)

    def vector_envs(self, count: int) -> int | None:
        return count

    def client_processes(self, count: int) -> int:
        return 1

    def client_args(self, count: int) -> list[str]:
        return ["--num-envs", str(count)]

    def env_steps_per_call(self, count: int, transport: str | None = None) -> int:
        return count if transport is None else env_steps_per_call(transport, count)

    def notes(self) -> list[str]:
        fastenv = (
            "fastenv-* = FastVectorEnv(copy=False) on one `fastenv serve --num-envs N --mode per-client` server "
            "(N envs stepped in turn by one batched VectorHost); fastenv-workers: the server with --workers auto "
            "(one worker process per usable CPU, at most N); fastenv-pool: the same server as an async pool, "
            "FastVectorEnv(batch_size=N/2): a batch step = send + recv of the first N/2 envs to finish"
        )
        gym = (
            "gym-async = Gymnasium AsyncVectorEnv(N envs, shared_memory=True): one worker process per env, "
            "observations copied out; gym-sync = SyncVectorEnv(N envs) in the client process (no IPC)"
        )
        peers = (
            "sb3-subproc = Stable-Baselines3 SubprocVecEnv (one process per env); puffer-mp = PufferLib "
            "Multiprocessing vectorizer, synchronous, one worker per usable CPU but one (dividing N; its "
            "processes busy-wait for each other); each where it imports"
        )
        return [fastenv, gym, peers]


#: The scaling axes, by ``--scaling`` name.
AXES: dict[str, Axis] = {axis.name: axis for axis in (ClientsAxis(), EnvsAxis())}
#: Every transport some axis runs.
SCALING_TRANSPORTS: tuple[str, ...] = tuple(dict.fromkeys(t for axis in AXES.values() for t in axis.transports))


@dataclass(frozen=True)
class ClientRun:
    """One client's timed loop within a point: when it started (monotonic ns), how long, and its round trips."""

    start_ns: int
    wall_s: float
    summary: Summary

    @property
    def end_ns(self) -> int:
        return self.start_ns + int(self.wall_s * 1e9)

    def as_dict(self) -> dict[str, Any]:
        return {"start_ns": self.start_ns, "wall_s": self.wall_s, "summary": self.summary.as_dict()}


@dataclass
class ScalingPoint:
    """All clients of one (axis, count, transport) run; a step call makes :attr:`env_steps_per_call` env steps."""

    axis: str
    count: int
    transport: str
    payload: str
    env_steps_per_call: int
    clients: list[ClientRun] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Timed step calls over all clients."""
        return sum(c.summary.count for c in self.clients)

    @property
    def span_s(self) -> float:
        """From the first client's first timed step to the last client's last."""
        if not self.clients:
            return 0.0
        return (max(c.end_ns for c in self.clients) - min(c.start_ns for c in self.clients)) / 1e9

    @property
    def steps_per_s(self) -> float:
        """Aggregate env steps per second: all timed step calls × :attr:`env_steps_per_call` over :attr:`span_s`."""
        span = self.span_s
        return self.steps * self.env_steps_per_call / span if span > 0 else float("nan")

    @property
    def per_client_steps_per_s(self) -> float:
        """The median client's own rate (its env steps over its own timed wall time)."""
        per_call = self.env_steps_per_call
        return spread(c.summary.count * per_call / c.wall_s for c in self.clients if c.wall_s > 0).median

    @property
    def p50_us(self) -> float:
        """The median of the clients' p50 round trips."""
        return spread(c.summary.p50_us for c in self.clients).median

    @property
    def p99_us(self) -> float:
        """The worst client's p99 round trip."""
        return spread(c.summary.p99_us for c in self.clients).high

    def as_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "count": self.count,
            "transport": self.transport,
            "payload": self.payload,
            "steps": self.steps,
            "env_steps_per_call": self.env_steps_per_call,
            "env_steps": self.steps * self.env_steps_per_call,
            "span_s": self.span_s,
            "steps_per_s": self.steps_per_s,
            "per_client_steps_per_s": self.per_client_steps_per_s,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "clients": [c.as_dict() for c in self.clients],
        }
