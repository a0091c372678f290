"""Physical floors: the least any same-host env transport can cost (for comparison only).

- ``shm-pingpong-spin`` (:class:`~fastenv.bench.floor_shm.ShmPingPongSpin`) and
  ``shm-pingpong-futex`` (:class:`~fastenv.bench.floor_shm.ShmPingPongFutex`): a client and a server process share one memory
  segment (a ``memfd`` the server inherits, so no name and no cleanup). A step
  is: the client copies the action into the segment and bumps a request
  counter; the server, waiting on that counter, steps the env, ``np.copyto``\\ s
  each observation array into a fixed place in the segment and bumps a reply
  counter; the client, waiting on that, returns read-only views of the
  observation arrays (no copy, no decoding). ``-spin`` waits in a Python
  busy loop on the counter word (never sleeps: one CPU burnt per waiting
  side); ``-futex`` waits with :class:`fastenv.shm.Doorbell` on the native
  backend (a short spin, then a futex sleep, woken by ``ring``). The env
  step and the payload copy are included, as in every other row; what is
  left out is everything a real transport adds: no encoding, no layout
  negotiation, no errors, no reward / flags / info (only the action goes in
  and only the observation comes back: :meth:`~fastenv.bench.floor_shm.ShmPingPongSpin.step` returns
  ``(observation, None, None, None, None)`` and the checks compare the
  observation), one fixed observation structure (an array or a flat dict of
  arrays, learnt from a local ``reset``).
- ``tcp-raw`` (:class:`~fastenv.bench.floor_tcp.TcpRaw`): the network floor. A server process
  listens on 127.0.0.1; TCP_NODELAY on both sides. A request is a fixed
  13-byte header (body length, command, seed) then the action's raw bytes;
  the server steps the env, ``np.copyto``\\ s the observation arrays into a
  preallocated buffer and sends a fixed 8-byte length header and those bytes
  in one ``sendall``; the client ``recv_into``\\ s them, in chunks of at most
  1 MiB, into a preallocated numpy buffer and returns read-only views of it.
  Raw bytes only: no structure, no codec, no reward / flags / info (like the
  shared-memory floors, :meth:`~fastenv.bench.floor_tcp.TcpRaw.step` returns ``(observation, None,
  None, None, None)`` and only the observation is compared), one fixed
  observation layout learnt from a local ``reset`` on both sides.
- ``memcpy`` (:func:`fastenv.bench.memcpy.memcpy_reference`): one in-process ``np.copyto`` of the
  observation's arrays into a preallocated destination: *cached* re-copies the
  same source (source and destination hot in cache), *fresh-source* copies a
  newly allocated and written source each time (as an env renders a new frame
  every step). A reference time, not a transport.

Both floor families share :class:`~fastenv.bench.floor_layout.FloorLayout`; this module is their
registry (:data:`FLOORS`) and their server's entry point: ``python -m
fastenv.bench.floors NAME PAYLOAD [FD]`` (``FD``: the shared-memory floors).
"""

from __future__ import annotations

import sys

from fastenv.bench.floor_shm import ShmPingPongFutex, ShmPingPongSpin, serve_shm
from fastenv.bench.floor_tcp import TcpRaw, serve_tcp
from fastenv.bench.serverproc import Baseline

__all__ = ["FLOORS", "main"]

FLOORS: dict[str, type[Baseline]] = {cls.name: cls for cls in (ShmPingPongSpin, ShmPingPongFutex, TcpRaw)}


def main(argv: list[str] | None = None) -> int:
    """Server entry point: ``python -m fastenv.bench.floors NAME PAYLOAD [FD]``."""
    name, payload, *rest = sys.argv[1:] if argv is None else argv
    if name == TcpRaw.name:
        serve_tcp(payload)
    elif name in (ShmPingPongSpin.name, ShmPingPongFutex.name):
        serve_shm(FLOORS[name].mode, payload, int(rest[0]))  # type: ignore[attr-defined]
    else:
        raise SystemExit(f"unknown floor {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
