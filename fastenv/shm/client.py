"""The client's end of a session's arena."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastenv import codec
from fastenv.errors import (
    ConnectionLost,
    FastEnvTimeout,
    ProtocolError,
)
from fastenv.layout import (
    ChangedView,
    native_take,
)
from fastenv.shm import futex
from fastenv.shm.arena import (
    CALL,
    ERROR,
    FAST,
    GROW,
    REMAP,
    REPLY_BELL,
    REQUEST_BELL,
    WITH_LAYOUT,
    Arena,
)
from fastenv.shm.doorbell import Doorbell
from fastenv.shm.layouts import LayoutReceiver, LayoutSender
from fastenv.shm.plane import CLIENT_SPIN_US, CONSUMED_WORD, WAIT_SLICE_S, Done, encode_general, make_bell, words
from fastenv.shm.slots import ReplySlots
from fastenv.shm.spin import SpinBudget


class ShmClientPlane:
    """The client's end of a session's arena.

    Args:
        arena: the attached arena.
        alive: called between wait slices; raises if the server is known to be gone.
        copy: decode replies into owned arrays instead of views into the arena.

    Returned arrays are writable views into the reply slot they arrived in,
    and that slot is not written again while any of them is alive
    (:mod:`fastenv.shm.slots`): what a call returned never changes unless the
    caller changes it.

    The arena never drops: a :class:`~fastenv.errors.ConnectionLost` from it
    means the server process is gone, and the session with it, so this route
    is not resumable.
    """

    name = "shm"
    resumable = False

    def __init__(self, arena: Arena, alive: Callable[[], None], *, copy: bool = False, spin_us: int | None = None) -> None:
        self._alive = alive
        self._copy = copy
        self._spin_us = CLIENT_SPIN_US if spin_us is None else spin_us
        self._spin = SpinBudget(self._spin_us)  # the fast path's budget, adapted to how long replies take
        self._seq = 0
        self._arenas: list[Arena] = []
        self._sender = LayoutSender()
        self._receiver = LayoutReceiver()
        # A call posted whose reply was not read (it timed out): read before the next call, since
        # the reply may define a layout or announce a new arena that later replies rely on.
        # Recorded only when a wait for a reply is left early (timeout, Ctrl-C): no per-call cost.
        self._unread: tuple[int, int, int] | None = None  # (kind, seq, reply bell value before it)
        self._use(arena)

    def _use(self, arena: Arena) -> None:
        self.arena = arena
        self._arenas.append(arena)
        self._request_bell = make_bell(arena.buf, REQUEST_BELL, self._spin_us)
        self._reply_bell = make_bell(arena.buf, REPLY_BELL, self._spin_us)
        self._sender.forget_arena()
        self._receiver.forget_arena()
        shape = arena.shape
        self._request_offset = arena.request_offset()
        self._slot_offsets = [shape.slot_offset(slot) for slot in range(shape.slots)]
        self._slot_layouts = [self._receiver.region(offset, False) for offset in self._slot_offsets]
        self._slots = ReplySlots(self._slot_layouts)
        self._fast = native_take is not None and self._reply_bell.backend is futex.native_backend
        self._load = self._reply_bell.backend.load
        self._fresh = True  # nothing sent to this generation yet
        while len(self._arenas) > 2:  # views into older generations keep their memory alive
            self._arenas.pop(0).close()

    @property
    def copies(self) -> bool:
        """Whether replies are decoded into owned arrays."""
        return self._copy

    @property
    def slots(self) -> int:
        """How many reply slots the arena has: up to ``slots - 1`` replies the caller holds stay zero-copy."""
        return self.arena.shape.slots

    def reconnect(self, deadline: float | None) -> None:
        """Never called: the route is not resumable."""
        raise ConnectionLost("shared memory cannot be reconnected: the server process is gone")

    def resend(self, body: Any, deadline: float | None, what: str) -> Any:
        """Never called: the route is not resumable."""
        raise ConnectionLost("shared memory cannot be reconnected: the server process is gone")

    def call(self, body: Any, timeout: float | None, what: str) -> tuple[bool, Any]:
        """Send a CALL body; returns ``(True, result)`` or ``(False, error body)``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.exchange(body, deadline, what)

    def exchange(self, body: Any, deadline: float | None, what: str) -> tuple[bool, Any]:
        """:meth:`send` then :meth:`receive`, with one C call each way when layouts cover both.

        That fast path (``fastenv._layout.put`` and ``take``) applies once the call's
        request and its reply each have a layout and the C packer and native doorbell
        are in use; a call it does not cover, at any point, continues on the general
        path with the same semantics (timeouts, remaps, liveness checks).
        """
        if self._unread is not None:
            self._read_unread(deadline, what)
        ticket = self._send_fast(body) if self._fast else None
        if ticket is None:
            return self.receive(self.send(body, deadline, what), deadline, what)
        seq, seen = ticket
        remaining = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
        if remaining > 0:
            slot = seq % len(self._slot_offsets)
            spin = self._spin
            try:
                got = native_take(
                    self.arena.buf, REPLY_BELL, seen, spin.now, remaining,
                    self._slot_offsets[slot], self._slot_layouts[slot], self._copy or slot == self._slots.bounce, -1,
                )
            except ChangedView:  # the reply is there; the general path reads it with new views
                return self.receive(ticket, deadline, what)
            except BaseException:  # interrupted (Ctrl-C) before the reply was read
                self._unread = (CALL, seq, seen)
                raise
            if got is not None:
                if got[6] or spin.off:
                    spin.waited(got[6])
                elif spin.sleeps:
                    spin.sleeps = 0
                if got[4] and got[3] == seq:
                    return got[2] != ERROR, got[5]
        return self.receive(ticket, deadline, what)

    def _read_unread(self, deadline: float | None, what: str) -> None:
        """Read (and drop) the reply of a call that timed out, so its layouts and remaps are known."""
        assert self._unread is not None
        kind, seq, seen = self._unread
        self._collect(kind, (seq, seen), deadline, f"{what} (waiting for the reply of an earlier call that timed out)")

    def _send_fast(self, body: Any) -> tuple[int, int] | None:
        """Put a CALL whose layout is known and ring, in C; None (nothing rung) when that does not apply."""
        if self._fresh:
            return None
        arena = self.arena
        buf = arena.buf
        if self._load(buf, CONSUMED_WORD) != self._seq & 0xFFFFFFFF:
            return None  # the server still reads our last request: the general path waits
        seq = self._next_seq()
        seen = self._load(buf, REPLY_BELL)
        capacity = arena.shape.request_capacity
        if not self._sender.write_fast(arena, self._request_offset, capacity, body[0], CALL, seq, body, REQUEST_BELL):
            return None  # no layout yet, or another structure: nothing was rung
        self._seq = seq
        return seq, seen

    def send(self, body: Any, deadline: float | None, what: str) -> Any:
        """Put a CALL in the request region and ring; returns a ticket for :meth:`receive`."""
        key = body[0]
        if self._unread is not None:
            self._read_unread(deadline, what)
        self._wait_consumed(deadline, what)
        arena = self.arena
        offset, capacity = arena.request_offset(), arena.shape.request_capacity
        seq = self._next_seq()
        write: Callable[[int], None] | None = None
        if not self._sender.write_fast(arena, offset, capacity, key, CALL, seq, body):
            encoded = encode_general(CALL, body, self._sender, key)
            if encoded.size > capacity:
                grow, _ = codec.encode(encoded.size)
                kind, value = self._exchange(
                    GROW, lambda seq: arena.write_envelope(offset, capacity, GROW, seq, grow, []), deadline, what
                )
                if kind == ERROR:
                    if encoded.flags & WITH_LAYOUT:
                        self._sender.forget(key)  # the definition never reached the server
                    return Done(False, value)
                if kind != REMAP:
                    raise ProtocolError("server did not grow the request region")
                arena = self.arena
                offset, capacity = arena.request_offset(), arena.shape.request_capacity

            def write_general(seq: int) -> None:
                encoded.write(arena, offset, capacity, seq)

            write = write_general
            seq = self._next_seq()  # a GROW on the way used numbers too
        return self._post(write, CALL, seq)

    def receive(self, ticket: Any, deadline: float | None, what: str) -> tuple[bool, Any]:
        """Wait for the reply to the call behind ``ticket`` (from :meth:`send`)."""
        if isinstance(ticket, Done):
            return ticket.ok, ticket.value
        kind, value = self._collect(CALL, ticket, deadline, what)
        return kind != ERROR, value

    def _exchange(
        self, kind: int, write: Callable[[int], None] | None, deadline: float | None, what: str
    ) -> tuple[int, Any]:
        """Send the request (``write(seq)`` puts it in place; None: already written) and read the reply."""
        return self._collect(kind, self._post(write, kind), deadline, what)

    def _next_seq(self) -> int:
        """The next call's sequence number: its reply slot must hold nothing the caller still has."""
        return self._seq + 1 if self._copy else self._slots.next_seq(self._seq)

    def _post(self, write: Callable[[int], None] | None, kind: int, seq: int | None = None) -> tuple[int, int]:
        """Write request ``seq`` (default: the next; ``write`` None: already written) and ring.

        Returns ``(seq, reply bell value)``.
        """
        seq = self._seq = self._next_seq() if seq is None else seq
        seen = self._reply_bell.value()
        if write is not None:
            write(seq)
        self._fresh = False
        self._request_bell.ring()
        return seq, seen

    def _collect(self, kind: int, posted: tuple[int, int], deadline: float | None, what: str) -> tuple[int, Any]:
        """Wait for and read the reply to the request ``posted`` by :meth:`_post`."""
        seq, seen = posted
        arena = self.arena
        slot = arena.shape.slot_offset(seq % arena.shape.slots)
        spin = self._spin
        started = time.monotonic()
        try:
            while True:
                # Read the slot only after a ring: the ring publishes a complete reply.
                current = self._wait(self._reply_bell, seen, deadline, what, spin.now)
                if current == seen:
                    continue  # a wait slice passed: the peer is alive, keep waiting
                seen = current
                reply_kind, flags, _, skeleton_len, reply_seq = arena.read_header(slot)
                if reply_seq == seq:
                    break
        except BaseException:  # timed out or interrupted: read this reply before the next call
            self._unread = (kind, *posted)
            raise
        spin.waited((time.monotonic() - started) * 1e6 > spin.budget)  # answered later than a spin would catch
        if self._unread is not None and self._unread[1] == seq:
            self._unread = None  # a call that was left pending is answered now
        if reply_kind == REMAP:
            _, _, skeleton, _ = arena.read_envelope(slot, arena.shape.slot_capacity)
            target = codec.decode(bytes(skeleton))
            self._use(Arena.attach(target["name"]))
            if kind == GROW:
                return REMAP, None
            arena = self.arena
            slot = arena.shape.slot_offset(seq % arena.shape.slots)
            reply_kind, flags, _, skeleton_len, reply_seq = arena.read_header(slot)
            if reply_seq != seq:
                raise ProtocolError("remapped arena does not hold the reply")
        capacity = arena.shape.slot_capacity
        copy = self._copy or self._slots.copies(seq)
        if reply_kind == FAST:
            return flags, self._receiver.read(arena, slot, capacity, skeleton_len, readonly=False, copy=copy)
        _, _, skeleton, buffers = arena.read_envelope(slot, capacity, readonly=False)
        if copy:
            buffers = [bytearray(b) for b in buffers]
        else:  # arrays are built on these (their base), which says whether the caller still holds one
            buffers = [np.frombuffer(b, np.uint8) for b in buffers]
            self._slots.decoded(seq % self._slots.count, buffers)
        value = codec.decode(skeleton, buffers)
        if flags & WITH_LAYOUT:
            if not (isinstance(value, tuple) and len(value) == 3):
                raise ProtocolError("malformed layout definition")
            self._receiver.define(value[0], value[1])
            value = value[2]
        return reply_kind, value

    def _wait_consumed(self, deadline: float | None, what: str) -> None:
        """The server must have copied out our previous request before we overwrite it."""
        if self._fresh:
            return
        last = self._seq & 0xFFFFFFFF
        while words().load(self.arena.buf, CONSUMED_WORD) != last:
            self._wait(None, 0, deadline, what)

    def _wait(self, bell: Doorbell | None, seen: int, deadline: float | None, what: str, spin_us: int | None = None) -> int:
        remaining = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
        if remaining <= 0:
            raise FastEnvTimeout(f"{what} got no reply within the timeout (shared memory)")
        if bell is None:
            time.sleep(min(remaining, 0.001))
            self._alive()
            return seen
        try:
            return bell.wait(seen, remaining, spin_us)
        except FastEnvTimeout:
            self._alive()
            return seen

    def close(self) -> None:
        """Drop the mappings (views already handed out stay valid)."""
        for arena in self._arenas:
            arena.close()
        self._arenas.clear()

