"""The shared-memory data plane: calls and replies through a session's arena.

This module holds what both ends share (spin budgets, the default arena
shape, doorbells, general-path envelopes); the ends are
:class:`fastenv.shm.client.ShmClientPlane` and
:class:`fastenv.shm.worker.ShmServerWorker`, the layouts they exchange
:mod:`fastenv.shm.layouts`.

Client: writes a CALL envelope into the request region, rings the request
doorbell, waits on the reply doorbell, and decodes the reply from reply slot
``seq % slots`` as numpy views (zero copy). It picks ``seq`` so that the slot
holds nothing the caller still has (:mod:`fastenv.shm.slots`): a returned view
never changes; pass ``copy=True`` to the client for owned arrays.

Server: one worker thread per session waits on the request doorbell, copies
the request out (the env may keep the action), runs it, writes the reply into
the slot and rings the reply doorbell.

When a reply does not fit its slot, the server creates a bigger generation of
the arena and answers REMAP (with the new segment's name) in the old slot; the
real reply is waiting in the new arena. A request too large for the request
region is preceded by a GROW envelope that makes the server do the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from fastenv import codec
from fastenv.shm import futex
from fastenv.shm.arena import (
    CALL,
    RESULT,
    WITH_LAYOUT,
    Arena,
    ArenaShape,
    envelope_size,
)
from fastenv.shm.doorbell import Doorbell
from fastenv.shm.layouts import LayoutSender

CONSUMED_WORD = 192  # u32: sequence number of the last request the server copied out
WAIT_SLICE_S = 0.05  # long waits are cut into slices to notice a dead peer or a stop
# Spin budgets (µs) before a wait sleeps in the kernel. Waking a sleeping thread
# costs tens of µs (more in a VM), far above the doorbell's ~2 µs, so each side
# spins for about the time the other side usually takes to answer.
SERVER_SPIN_US = int(os.environ.get("FASTENV_SERVER_SPIN_US", "200"))
CLIENT_SPIN_US = int(os.environ.get("FASTENV_CLIENT_SPIN_US", "200"))


def make_bell(buf: Any, offset: int, spin_us: int | None = None) -> Doorbell:
    """A doorbell on the backend :mod:`fastenv.native` selected."""
    return Doorbell(buf, offset, spin_us=spin_us)


def words() -> Any:
    """The futex backend for plain word loads and stores."""
    return futex.get_backend(None)


# 10 reply slots: a caller holding its last 8 replies (a frame stack, a short history) still gets
# the next one zero-copy; a caller that drops its values uses the first two or three only (see
# fastenv.shm.slots). Slots the caller never needs are never touched, so they cost no memory.
DEFAULT_SHAPE = ArenaShape(request_capacity=64 * 1024, slot_capacity=256 * 1024, slots=10)




def grown(current: int, needed: int) -> int:
    return max(current * 2, (needed * 5 // 4 + 4095) // 4096 * 4096)


@dataclass
class Encoded:
    """A message encoded by the general codec, ready to be written into any region."""

    kind: int
    skeleton: bytes
    buffers: list[Any]
    flags: int

    @property
    def size(self) -> int:
        """Bytes the envelope needs."""
        return envelope_size(len(self.skeleton), [memoryview(b).nbytes for b in self.buffers])

    def write(self, arena: Arena, offset: int, capacity: int, seq: int) -> None:
        """Write the envelope with sequence number ``seq``."""
        arena.write_envelope(offset, capacity, self.kind, seq, self.skeleton, self.buffers, self.flags)


def encode_general(kind: int, value: Any, sender: LayoutSender, key: str) -> Encoded:
    """Encode ``value`` with the general codec, announcing a layout for ``key`` when one fits it."""
    definition = sender.define(key, value) if kind in (CALL, RESULT) else None
    payload = value if definition is None else (definition[0], definition[1], value)
    try:
        skeleton, buffers = codec.encode(payload)
    except BaseException:
        if definition is not None:
            sender.forget(key)
        raise
    return Encoded(kind, skeleton, buffers, WITH_LAYOUT if definition else 0)


@dataclass
class Done:
    """A ticket whose answer came before the call was posted (a refused GROW)."""

    ok: bool
    value: Any

