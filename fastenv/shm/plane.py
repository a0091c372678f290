"""The shared-memory data plane: calls and replies through a session's arena.

Client: writes a CALL envelope into the request region, rings the request
doorbell, waits on the reply doorbell, and decodes the reply from reply slot
``seq % slots`` as read-only numpy views (zero copy). A view stays valid until
``slots`` further calls have been made (then its slot is reused); pass
``copy=True`` to the client for owned arrays.

Server: one worker thread per session waits on the request doorbell, copies
the request out (the env may keep the action), runs it, writes the reply into
the slot and rings the reply doorbell.

When a reply does not fit its slot, the server creates a bigger generation of
the arena and answers REMAP (with the new segment's name) in the old slot; the
real reply is waiting in the new arena. A request too large for the request
region is preceded by a GROW envelope that makes the server do the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from fastenv import codec
from fastenv.errors import EncodeError, FastEnvTimeout, FrameTooLarge, ProtocolError
from fastenv.shm.arena import (
    CALL,
    ERROR,
    GROW,
    REMAP,
    REPLY_BELL,
    REQUEST_BELL,
    RESULT,
    Arena,
    ArenaShape,
    envelope_size,
)
from fastenv.shm.doorbell import Doorbell
from fastenv.shm import futex

log = logging.getLogger("fastenv.shm")

CONSUMED_WORD = 192  # u32: sequence number of the last request the server copied out
WAIT_SLICE_S = 0.05  # long waits are cut into slices to notice a dead peer or a stop
# Spin budgets (µs) before a wait sleeps in the kernel. Waking a sleeping thread
# costs tens of µs (more in a VM), far above the doorbell's ~2 µs, so each side
# spins for about the time the other side usually takes to answer.
SERVER_SPIN_US = int(os.environ.get("FASTENV_SERVER_SPIN_US", "200"))
CLIENT_SPIN_US = int(os.environ.get("FASTENV_CLIENT_SPIN_US", "200"))
DEFAULT_SHAPE = ArenaShape(request_capacity=64 * 1024, slot_capacity=256 * 1024, slots=4)

# Executes one call; returns (True, value) or (False, error body).
Executor = Callable[[str, tuple, dict], tuple[bool, Any]]


def _grown(current: int, needed: int) -> int:
    return max(current * 2, (needed * 5 // 4 + 4095) // 4096 * 4096)


class ShmServerWorker:
    """Serves one session's arena in a thread."""

    def __init__(
        self,
        arena: Arena,
        execute: Executor,
        *,
        limits: codec.Limits,
        max_message_bytes: int,
        spin_us: int | None = None,
    ) -> None:
        self.arena = arena
        self._max_message_bytes = max_message_bytes
        self._execute = execute
        self._limits = limits
        self._spin_us = spin_us
        self._arenas = [arena]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastenv-shm-worker", daemon=True)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker and release the arenas' names (memory goes when the client unmaps)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for arena in self._arenas:
            arena.unlink()
            arena.close()

    def _run(self) -> None:
        arena = self.arena
        bell = Doorbell(arena.buf, REQUEST_BELL, spin_us=self._spin_us)
        seen = bell.value()
        while not self._stop.is_set():
            try:
                seen = bell.wait(seen, WAIT_SLICE_S)
            except FastEnvTimeout:
                continue
            arena = self._serve_one(arena)
            if arena is not self.arena:  # remapped: wait on the new arena's doorbell
                self.arena = arena
                bell = Doorbell(arena.buf, REQUEST_BELL, spin_us=self._spin_us)
                seen = bell.value()

    def _serve_one(self, arena: Arena) -> Arena:
        """Serve the request waiting in ``arena``; every request gets a reply, whatever happens."""
        seq = 0
        try:
            kind, seq, skeleton, buffers = arena.read_envelope(arena.request_offset(), arena.shape.request_capacity)
            if kind == GROW:
                return self._grow(arena, seq, skeleton)
            return self._call(arena, seq, kind, skeleton, buffers)
        except Exception as exc:  # a bad request must not kill the worker or leave the client waiting
            log.debug("shared-memory request %d failed", seq, exc_info=True)
            futex.store(arena.buf, CONSUMED_WORD, seq & 0xFFFFFFFF)
            body = {"kind": "protocol", "type": type(exc).__name__, "message": str(exc), "traceback": ""}
            return self._reply(arena, seq, ERROR, body)

    def _grow(self, arena: Arena, seq: int, skeleton: memoryview) -> Arena:
        wanted = codec.decode(bytes(skeleton), limits=self._limits)
        futex.store(arena.buf, CONSUMED_WORD, seq & 0xFFFFFFFF)
        if type(wanted) is not int or wanted <= 0:
            raise ProtocolError(f"invalid GROW request {wanted!r}")
        if wanted > self._max_message_bytes:
            raise FrameTooLarge(f"a request of {wanted} bytes exceeds the server's limit of {self._max_message_bytes}")
        shape = arena.shape
        new = self._new_generation(arena, ArenaShape(_grown(shape.request_capacity, wanted), shape.slot_capacity, shape.slots))
        self._announce(arena, new, seq)
        return new

    def _call(self, arena: Arena, seq: int, kind: int, skeleton: memoryview, buffers: list[memoryview]) -> Arena:
        # Copy the request out before anything else: the client may reuse the region.
        owned = [bytearray(b) for b in buffers]
        skeleton_bytes = bytes(skeleton)
        futex.store(arena.buf, CONSUMED_WORD, seq & 0xFFFFFFFF)
        if arena.linked:
            arena.unlink()  # the client wrote here, so it has mapped it: the name is no longer needed
        if kind != CALL:
            reply_kind, value = ERROR, {"kind": "protocol", "type": "ProtocolError",
                                        "message": f"unexpected envelope kind {kind}", "traceback": ""}
        else:
            try:
                body = codec.decode(skeleton_bytes, owned, limits=self._limits)
                if not (isinstance(body, tuple) and len(body) == 3 and isinstance(body[0], str)):
                    raise ProtocolError("CALL body must be (name, args, kwargs)")
                name, args, kwargs = body
                if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                    raise ProtocolError("CALL body must be (str, tuple, dict)")
                ok, value = self._execute(name, args, kwargs)
                reply_kind = RESULT if ok else ERROR
            except (ProtocolError, ValueError, TypeError) as exc:
                reply_kind, value = ERROR, {"kind": "protocol", "type": type(exc).__name__,
                                            "message": str(exc), "traceback": ""}
        return self._reply(arena, seq, reply_kind, value)

    def _reply(self, arena: Arena, seq: int, kind: int, value: Any) -> Arena:
        try:
            skeleton, buffers = codec.encode(value)
        except EncodeError as exc:
            kind = ERROR
            skeleton, buffers = codec.encode({"kind": "encode", "type": "EncodeError", "message": str(exc), "traceback": ""})
        shape = arena.shape
        needed = envelope_size(len(skeleton), [memoryview(b).nbytes for b in buffers])
        target = arena
        if needed > shape.slot_capacity:
            target = self._new_generation(arena, ArenaShape(shape.request_capacity, _grown(shape.slot_capacity, needed), shape.slots))
        slot = seq % target.shape.slots
        target.write_envelope(target.shape.slot_offset(slot), target.shape.slot_capacity, kind, seq, skeleton, buffers)
        if target is not arena:
            Doorbell(target.buf, REPLY_BELL).ring()
            self._announce(arena, target, seq)
        else:
            Doorbell(arena.buf, REPLY_BELL).ring()
        return target

    def _new_generation(self, arena: Arena, shape: ArenaShape) -> Arena:
        new = Arena.create(shape, generation=arena.generation + 1)
        self._arenas.append(new)
        # Older generations are no longer written; the client unmaps them when its views die.
        while len(self._arenas) > 2:
            old = self._arenas.pop(0)
            old.unlink()
            old.close()
        return new

    @staticmethod
    def _announce(old: Arena, new: Arena, seq: int) -> None:
        skeleton, _ = codec.encode({"name": new.name})
        slot = seq % old.shape.slots
        old.write_envelope(old.shape.slot_offset(slot), old.shape.slot_capacity, REMAP, seq, skeleton, [])
        Doorbell(old.buf, REPLY_BELL).ring()


class ShmClientPlane:
    """The client's end of a session's arena.

    Args:
        arena: the attached arena.
        alive: called between wait slices; raises if the server is known to be gone.
        copy: decode replies into owned arrays instead of views into the arena.
    """

    def __init__(self, arena: Arena, alive: Callable[[], None], *, copy: bool = False, spin_us: int | None = None) -> None:
        self._alive = alive
        self._copy = copy
        self._spin_us = CLIENT_SPIN_US if spin_us is None else spin_us
        self._seq = 0
        self._arenas: list[Arena] = []
        self._use(arena)

    def _use(self, arena: Arena) -> None:
        self.arena = arena
        self._arenas.append(arena)
        self._request_bell = Doorbell(arena.buf, REQUEST_BELL, spin_us=self._spin_us)
        self._reply_bell = Doorbell(arena.buf, REPLY_BELL, spin_us=self._spin_us)
        self._fresh = True  # nothing sent to this generation yet
        while len(self._arenas) > 2:  # views into older generations keep their memory alive
            self._arenas.pop(0).close()

    @property
    def slots(self) -> int:
        """How many replies the ring holds: a returned view stays valid for ``slots - 1`` more calls."""
        return self.arena.shape.slots

    def call(self, body: Any, timeout: float | None, what: str) -> tuple[int, Any]:
        """Send a CALL body; returns ``(RESULT | ERROR, decoded value)``."""
        skeleton, buffers = codec.encode(body)
        deadline = None if timeout is None else time.monotonic() + timeout
        sizes = [memoryview(b).nbytes for b in buffers]
        if envelope_size(len(skeleton), sizes) > self.arena.shape.request_capacity:
            grow, _ = codec.encode(envelope_size(len(skeleton), sizes))
            kind, value = self._exchange(GROW, grow, [], deadline, what)
            if kind == ERROR:
                return kind, value
            if kind != REMAP:
                raise ProtocolError("server did not grow the request region")
        kind, value = self._exchange(CALL, skeleton, buffers, deadline, what)
        return kind, value

    def _exchange(self, kind: int, skeleton: bytes, buffers: list[Any], deadline: float | None, what: str) -> tuple[int, Any]:
        arena = self.arena
        self._wait_consumed(deadline, what)
        self._seq += 1
        seq = self._seq
        seen = self._reply_bell.value()
        arena.write_envelope(arena.request_offset(), arena.shape.request_capacity, kind, seq, skeleton, buffers)
        self._request_bell.ring()
        while True:
            slot = arena.shape.slot_offset(seq % arena.shape.slots)
            reply_kind, reply_seq, reply_skeleton, reply_buffers = arena.read_envelope(slot, arena.shape.slot_capacity)
            if reply_seq == seq:
                break
            seen = self._wait(self._reply_bell, seen, deadline, what)
        if reply_kind == REMAP:
            target = codec.decode(bytes(reply_skeleton))
            self._use(Arena.attach(target["name"]))
            if kind == GROW:
                return REMAP, None
            arena = self.arena
            slot = arena.shape.slot_offset(seq % arena.shape.slots)
            reply_kind, reply_seq, reply_skeleton, reply_buffers = arena.read_envelope(slot, arena.shape.slot_capacity)
            if reply_seq != seq:
                raise ProtocolError("remapped arena does not hold the reply")
        if self._copy:
            reply_buffers = [bytearray(b) for b in reply_buffers]
        return reply_kind, codec.decode(reply_skeleton, reply_buffers)

    def _wait_consumed(self, deadline: float | None, what: str) -> None:
        """The server must have copied out our previous request before we overwrite it."""
        if self._fresh:
            self._fresh = False
            return
        last = self._seq & 0xFFFFFFFF
        while futex.load(self.arena.buf, CONSUMED_WORD) != last:
            self._wait(None, 0, deadline, what)

    def _wait(self, bell: Doorbell | None, seen: int, deadline: float | None, what: str) -> int:
        remaining = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
        if remaining <= 0:
            raise FastEnvTimeout(f"{what} got no reply within the timeout (shared memory)")
        if bell is None:
            time.sleep(min(remaining, 0.001))
            self._alive()
            return seen
        try:
            return bell.wait(seen, remaining)
        except FastEnvTimeout:
            self._alive()
            return seen

    def close(self) -> None:
        """Drop the mappings (views already handed out stay valid)."""
        for arena in self._arenas:
            arena.close()
        self._arenas.clear()


__all__ = ["DEFAULT_SHAPE", "ShmClientPlane", "ShmServerWorker"]
