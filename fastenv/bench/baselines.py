"""Baseline transports that fastenv is measured against (for comparison only).

Each baseline serves the same example env (see :mod:`fastenv.bench.workloads`)
from a separate server process (``python -m fastenv.bench.baselines NAME
PAYLOAD``; a subprocess rather than ``multiprocessing`` so that callers need no
``if __name__ == "__main__"`` guard). The parent waits for the child's ready
line (its port or other token), never for a fixed time, and stops it cleanly:
the client closes its connection (or sends a close request) and closes the
child's stdin, the child exits, and only a child that does not exit within the
timeout is terminated, then killed.

A baseline object is the client: ``reset(seed=None)``, ``step(action)`` and
``close()``, returning exactly what the remote env returned (after a pickle
round trip). Use it as a context manager::

    with SeedPickle("small") as env:
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(action)

Baselines, by name (:data:`BASELINES`), one module per family:

- ``seed-pickle`` (:class:`~fastenv.bench.seed_pickle.SeedPickle`): the seed
  wrapper's protocol.
- ``seed-pickle-nodelay`` (:class:`~fastenv.bench.seed_pickle.SeedPickleNoDelay`):
  the same with Nagle off.
- ``zmq-pickle`` (:class:`~fastenv.bench.zmq_pickle.ZmqPickle`): pyzmq REQ/REP
  with whole-message pickle.
- ``mp-pipe`` (:class:`~fastenv.bench.mp_pipe.MpPipe`): a
  ``multiprocessing.Pipe`` (``Connection.send`` / ``recv``, which pickle) to a
  server process stepping the env.

Their common base, :class:`~fastenv.bench.serverproc.Baseline`, and the
child's side of the process live in :mod:`fastenv.bench.serverproc`; this
module is the registry and the child's entry point. Besides :data:`BASELINES`,
:class:`~fastenv.bench.gym_async.GymAsync` (``gym-async``) wraps Gymnasium's
``AsyncVectorEnv(shared_memory=True)`` with one env, and
:mod:`fastenv.bench.floors` holds the physical floors (shared-memory ping-pong,
memcpy).

None of them transports spaces, ``spec``, ``metadata``, ``render()`` or other
env methods, has heartbeats or reconnection, or protects against a malicious
peer (pickle executes code): they exist to be timed.
"""

from __future__ import annotations

import sys

from fastenv.bench.mp_pipe import MpPipe, serve_pipe
from fastenv.bench.seed_pickle import SeedPickle, SeedPickleNoDelay, serve_seed
from fastenv.bench.serverproc import Baseline
from fastenv.bench.zmq_pickle import ZmqPickle, serve_zmq

__all__ = ["BASELINES", "main"]

BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (SeedPickle, SeedPickleNoDelay, ZmqPickle, MpPipe)
}


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m fastenv.bench.baselines NAME PAYLOAD [ARG]``."""
    name, payload, *rest = sys.argv[1:] if argv is None else argv
    if name == "zmq-pickle":
        serve_zmq(payload)
    elif name == "mp-pipe":
        serve_pipe(payload, int(rest[0]))
    elif name in ("seed-pickle", "seed-pickle-nodelay"):
        serve_seed(payload, nodelay=name == "seed-pickle-nodelay")
    else:
        raise SystemExit(f"unknown baseline {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
