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
from dataclasses import dataclass
from typing import Any

from fastenv import codec
from fastenv.errors import (
    EncodeError,
    FastEnvTimeout,
    FrameTooLarge,
    ProtocolError,
)
from fastenv.layout import (
    LayoutMismatch,
    ReceivedLayouts,
    SentLayouts,
    copy_strided,
    native_put,
    native_take,
)
from fastenv.loans import ReplyLoans
from fastenv.shm import futex
from fastenv.shm.arena import (
    CALL,
    ENVELOPE,
    ERROR,
    FAST,
    FAST_DATA,
    GROW,
    REMAP,
    REPLY_BELL,
    REQUEST_BELL,
    RESULT,
    WITH_LAYOUT,
    Arena,
    ArenaShape,
    envelope_size,
)
from fastenv.shm.doorbell import Doorbell
from fastenv.wire import ErrorKind, error_body, parse_call

log = logging.getLogger("fastenv.shm")

CONSUMED_WORD = 192  # u32: sequence number of the last request the server copied out
WAIT_SLICE_S = 0.05  # long waits are cut into slices to notice a dead peer or a stop
# Spin budgets (µs) before a wait sleeps in the kernel. Waking a sleeping thread
# costs tens of µs (more in a VM), far above the doorbell's ~2 µs, so each side
# spins for about the time the other side usually takes to answer.
SERVER_SPIN_US = int(os.environ.get("FASTENV_SERVER_SPIN_US", "200"))
CLIENT_SPIN_US = int(os.environ.get("FASTENV_CLIENT_SPIN_US", "200"))
# Doorbell backend of this process's planes: None for the process default
# (``FASTENV_NATIVE``), or "native" / "python". Tests set it to run the same
# suite on both.
DOORBELL_BACKEND: str | None = None


def _bell(buf: Any, offset: int, spin_us: int | None = None) -> Doorbell:
    return Doorbell(buf, offset, backend=DOORBELL_BACKEND, spin_us=spin_us)


def _words() -> Any:
    """The futex backend for plain word loads and stores."""
    return futex.get_backend(DOORBELL_BACKEND)


DEFAULT_SHAPE = ArenaShape(request_capacity=64 * 1024, slot_capacity=256 * 1024, slots=4)

# Executes one call; returns (True, value) or (False, error body).
Executor = Callable[[str, tuple, dict], tuple[bool, Any]]



class LayoutSender:
    """Sends values through compiled layouts when their structure repeats (see :mod:`fastenv.layout`)."""

    def __init__(self) -> None:
        self._sent = SentLayouts()
        self._prepared: dict[tuple[str, int], tuple[Any, list, int, Any]] = {}

    def prepared(self, arena: Arena, offset: int, capacity: int, key: str) -> tuple[Any, list, int, Any] | None:
        """``(program, views, layout id, layout)`` writing ``key``'s layout into the region at ``offset``.

        None while ``key`` has no layout, or when its layout does not fit the region.
        ``program`` is None without the C packer.
        """
        entry = self._prepared.get((key, offset))  # cleared whenever the arena or key's layout changes
        if entry is None:
            known = self._sent.get(key)
            if known is None:
                return None
            layout_id, layout = known
            if FAST_DATA + layout.size > capacity:
                return None
            entry = (layout.program, layout.views(arena.buf, offset + FAST_DATA), layout_id, layout)
            self._prepared[(key, offset)] = entry
        return entry

    def write_fast(
        self,
        arena: Arena,
        offset: int,
        capacity: int,
        key: str,
        kind: int,
        seq: int,
        value: Any,
        bell: int = -1,
        lent: bytes | None = None,
    ) -> bool:
        """Write ``value`` as a FAST envelope if its key's layout fits it; False otherwise.

        With ``bell`` (a doorbell offset), ring that doorbell once the envelope is complete.
        ``lent`` flags the arrays whose place was lent to the env (:mod:`fastenv.loans`):
        False, with no lent place written over, unless each already holds its array.
        """
        entry = self.prepared(arena, offset, capacity, key)
        if entry is None:
            return False
        program, views, layout_id, layout = entry
        buf = arena.buf
        if program is not None:  # the C packer writes the data and the envelope header, and rings, in one call
            return native_put(program, buf, offset, value, views, copy_strided, kind, layout_id, seq, bell, lent)
        try:
            if lent is not None and not _lent_in_place(layout, views, value, lent):
                return False
            layout.pack_into(buf, offset + FAST_DATA, value, views)
        except LayoutMismatch:
            return False
        ENVELOPE.pack_into(buf, offset, FAST, kind, 0, layout_id, seq)
        if bell >= 0:
            _words().ring(buf, bell, bell + 4)
        return True

    def define(self, key: str, value: Any) -> tuple[int, Any] | None:
        """A new layout for ``value`` (its id and spec), or None if it has none or we gave up."""
        definition = self._sent.define(key, value)
        if definition is not None:
            self._drop_prepared(key)
        return definition

    def forget(self, key: str) -> None:
        """Drop ``key``'s layout: the envelope defining it was never written for the peer."""
        self._sent.forget(key)
        self._drop_prepared(key)

    def _drop_prepared(self, key: str) -> None:
        for prepared in [prepared for prepared in self._prepared if prepared[0] == key]:
            del self._prepared[prepared]

    def forget_arena(self) -> None:
        """Drop cached views after a remap."""
        self._prepared.clear()


def _lent_in_place(layout: Any, views: list, value: Any, lent: bytes) -> bool:
    """Whether each array place flagged in ``lent`` holds an array at that very memory (Python packer)."""
    _, arrays = layout.extract(value)
    for index, flag in enumerate(lent):
        if flag and (index >= len(arrays) or arrays[index].ctypes.data != views[index].ctypes.data):
            return False
    return True


class LayoutReceiver:
    """Rebuilds values sent by a :class:`LayoutSender` (announced layouts checked against ``limits``)."""

    def __init__(self, limits: codec.Limits | None = None) -> None:
        self._received = ReceivedLayouts()
        self._max_array_elements = None if limits is None else limits.max_array_elements
        self._regions: dict[tuple[int, bool], dict[int, tuple[Any, list, Any]]] = {}

    def define(self, layout_id: Any, spec: Any) -> None:
        """Compile a layout announced by the peer (validated like any payload)."""
        self._received.define(layout_id, spec, self._max_array_elements)
        for prepared in self._regions.values():  # an id the peer announces again means what it says now
            prepared.pop(layout_id, None)

    def region(self, offset: int, readonly: bool) -> dict[int, tuple[Any, list, Any]]:
        """The layouts prepared for the region at ``offset``: ``{layout id: (program, views, layout)}``.

        :meth:`read` fills it; ``fastenv._layout.take`` unpacks the layouts it holds.
        """
        prepared = self._regions.get((offset, readonly))  # cleared whenever the arena changes
        if prepared is None:
            prepared = self._regions[(offset, readonly)] = {}
        return prepared

    def read(self, arena: Arena, offset: int, capacity: int, layout_id: int, *, readonly: bool, copy: bool) -> Any:
        """The value of the FAST envelope at ``offset``."""
        prepared = self.region(offset, readonly)
        entry = prepared.get(layout_id)
        buffer = arena.readonly if readonly else arena.buf
        if entry is None:
            layout = self._received.get(layout_id)
            if FAST_DATA + layout.size > capacity:
                raise ProtocolError("layout larger than its region")
            entry = prepared[layout_id] = (layout.program, layout.views(buffer, offset + FAST_DATA), layout)
        _, views, layout = entry
        return layout.unpack(buffer, offset + FAST_DATA, views, copy)

    def forget_arena(self) -> None:
        """Drop cached views after a remap (also from the tables :meth:`region` handed out)."""
        for prepared in self._regions.values():
            prepared.clear()
        self._regions.clear()


def _grown(current: int, needed: int) -> int:
    return max(current * 2, (needed * 5 // 4 + 4095) // 4096 * 4096)


@dataclass
class _Encoded:
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


def _encode_general(kind: int, value: Any, sender: LayoutSender, key: str) -> _Encoded:
    """Encode ``value`` with the general codec, announcing a layout for ``key`` when one fits it."""
    definition = sender.define(key, value) if kind in (CALL, RESULT) else None
    payload = value if definition is None else (definition[0], definition[1], value)
    try:
        skeleton, buffers = codec.encode(payload)
    except BaseException:
        if definition is not None:
            sender.forget(key)
        raise
    return _Encoded(kind, skeleton, buffers, WITH_LAYOUT if definition else 0)


@dataclass
class _Done:
    """A ticket whose answer came before the call was posted (a refused GROW)."""

    ok: bool
    value: Any


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
        self._spin_us = SERVER_SPIN_US if spin_us is None else spin_us
        self._arenas = [arena]
        self._sender = LayoutSender()
        self._receiver = LayoutReceiver(limits)
        self._reply_bells: dict[int, Doorbell] = {}
        self._loans = ReplyLoans(self._reply_views)  # fastenv.reply_array() during this worker's calls
        self._store = _words().store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastenv-shm-worker", daemon=True)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker and release its arenas: names, mappings and descriptors.

        The memory goes when the client unmaps too. A call still running after
        ``timeout`` (an env that hangs) keeps the mappings until it returns: the
        worker thread releases them as it ends.
        """
        self._stop.set()
        thread = self._thread
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        for arena in self._arenas:
            arena.unlink()
        if thread.ident is None or not thread.is_alive():
            self._release()

    def _release(self) -> None:
        """Drop every view into the arenas, then unmap them (idempotent; the thread is not running)."""
        self._sender.forget_arena()
        self._receiver.forget_arena()
        self._reply_bells.clear()
        self._loans.call = None
        for arena in self._arenas:
            arena.unlink()
            arena.close()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            if self._stop.is_set():
                self._release()

    def _serve(self) -> None:
        self._loans.bind()
        arena = self.arena
        bell = _bell(arena.buf, REQUEST_BELL, self._spin_us)
        seen = bell.value()
        # The C fast path: take() waits and unpacks a FAST request with a layout already
        # prepared for the request region; anything else goes through _serve_one.
        fast = native_take is not None and bell.backend is futex.native_backend
        region = arena.request_offset()
        requests = self._receiver.region(region, False)
        while not self._stop.is_set():
            if fast:
                try:
                    got = native_take(
                        arena.buf, REQUEST_BELL, seen, self._spin_us, WAIT_SLICE_S, region, requests, True, CONSUMED_WORD
                    )
                except Exception:  # e.g. MemoryError copying the action: the long way answers, or reports it
                    log.debug("shared-memory fast path failed; serving the request the long way", exc_info=True)
                    current = bell.value()
                    if current == seen:
                        continue  # it failed while waiting: no request yet
                    got = (current, 0, 0, 0, False, None)  # the client rings once per request
                if got is None:
                    continue
                seen = got[0]
                taken = got[4] and not arena.linked  # a first request in an arena goes the long way (unlink)
                arena = self._serve_call(arena, got[3], got[5]) if taken else self._serve_one(arena)
            else:
                try:
                    seen = bell.wait(seen, WAIT_SLICE_S)
                except FastEnvTimeout:
                    continue
                arena = self._serve_one(arena)
            if arena is not self.arena:  # remapped: wait on the new arena's doorbell
                self.arena = arena
                bell = _bell(arena.buf, REQUEST_BELL, self._spin_us)
                region = arena.request_offset()
                requests = self._receiver.region(region, False)
                # A new arena's counter starts at 0; the client may already have rung it
                # (it can attach as soon as the REMAP is visible), so never re-read it here.
                seen = 0

    def _consumed(self, arena: Arena, seq: int) -> None:
        self._store(arena.buf, CONSUMED_WORD, seq & 0xFFFFFFFF)
        if arena.linked:
            arena.unlink()  # the client wrote here, so it has mapped it: the name is no longer needed

    def _serve_one(self, arena: Arena) -> Arena:
        """Serve the request waiting in ``arena``; every request gets a reply, whatever happens."""
        offset, capacity = arena.request_offset(), arena.shape.request_capacity
        seq = 0
        try:
            kind, flags, _, skeleton_len, seq = arena.read_header(offset)
            if kind == FAST:
                # Layout values are rebuilt with copies: the env may keep the action.
                body = self._receiver.read(arena, offset, capacity, skeleton_len, readonly=False, copy=True)
                self._consumed(arena, seq)
            elif kind == GROW:
                _, seq, skeleton, _ = arena.read_envelope(offset, capacity)
                return self._grow(arena, seq, skeleton)
            elif kind == CALL:
                _, seq, skeleton, buffers = arena.read_envelope(offset, capacity)
                owned = [bytearray(b) for b in buffers]  # copy out before the client reuses the region
                skeleton_bytes = bytes(skeleton)
                self._consumed(arena, seq)
                body = codec.decode(skeleton_bytes, owned, limits=self._limits)
                if flags & WITH_LAYOUT:
                    if not (isinstance(body, tuple) and len(body) == 3):
                        raise ProtocolError("malformed layout definition")
                    self._receiver.define(body[0], body[1])
                    body = body[2]
            else:
                raise ProtocolError(f"unexpected envelope kind {kind}")
        except Exception as exc:  # a bad request must not kill the worker or leave the client waiting
            log.debug("shared-memory request %d failed", seq, exc_info=True)
            self._consumed(arena, seq)
            return self._reply(arena, seq, ERROR, error_body(ErrorKind.PROTOCOL, exc), "")
        return self._serve_call(arena, seq, body)

    def _serve_call(self, arena: Arena, seq: int, body: Any) -> Arena:
        """Run the call ``body`` (already copied out of the request region) and reply."""
        try:
            name, args, kwargs = parse_call(body)
        except ProtocolError as exc:
            log.debug("shared-memory request %d is not a call", seq, exc_info=True)
            return self._reply(arena, seq, ERROR, error_body(ErrorKind.PROTOCOL, exc), "")
        loans = self._loans
        loans.call = (name, arena, seq)
        ok, value = self._execute(name, args, kwargs)
        if not loans.lent:
            loans.call = None
            return self._reply(arena, seq, RESULT if ok else ERROR, value, name)
        # The env wrote into arrays from fastenv.reply_array(): some may be the reply slot itself.
        if ok and self._reply_fast(arena, seq, value, name, loans.places()):
            loans.end(value, settled=True)
            return arena
        target = self._reply(arena, seq, RESULT if ok else ERROR, value, name, fast=False)
        loans.call = (name, target, seq)  # learn the places in the arena the reply went to
        loans.end(value, settled=False)
        return target

    def _reply_views(self, call: tuple[str, Arena, int]) -> tuple[list, Any] | None:
        """The reply layout's arrays in the slot of ``call`` = (key, arena, seq), and the layout."""
        key, arena, seq = call
        shape = arena.shape
        prepared = self._sender.prepared(arena, shape.slot_offset(seq % shape.slots), shape.slot_capacity, key)
        return None if prepared is None else (prepared[1], prepared[3])

    def _grow(self, arena: Arena, seq: int, skeleton: memoryview) -> Arena:
        wanted = codec.decode(bytes(skeleton), limits=self._limits)
        self._consumed(arena, seq)
        if type(wanted) is not int or wanted <= 0:
            invalid = ProtocolError(f"invalid GROW request {wanted!r}")
            return self._reply(arena, seq, ERROR, error_body(ErrorKind.PROTOCOL, invalid), "")
        if wanted > self._max_message_bytes:
            error = FrameTooLarge(f"a request of {wanted} bytes exceeds the server's limit of {self._max_message_bytes}")
            return self._reply(arena, seq, ERROR, error_body(ErrorKind.PROTOCOL, error), "")
        shape = arena.shape
        new = self._new_generation(arena, ArenaShape(_grown(shape.request_capacity, wanted), shape.slot_capacity, shape.slots))
        self._announce(arena, new, seq)
        return new

    def _reply_fast(self, arena: Arena, seq: int, value: Any, key: str, lent: bytes | None = None) -> bool:
        """Write the RESULT ``value`` for ``seq`` through ``key``'s layout and ring; False if it has none that fits."""
        shape = arena.shape
        offset = shape.slot_offset(seq % shape.slots)
        return self._sender.write_fast(arena, offset, shape.slot_capacity, key, RESULT, seq, value, REPLY_BELL, lent)

    def _reply(self, arena: Arena, seq: int, kind: int, value: Any, key: str, *, fast: bool = True) -> Arena:
        """Write the reply to ``seq`` and ring; the arena it is in (a new one when it outgrew the slot).

        ``fast`` False: skip the layout (already tried, or not allowed).
        """
        if kind == RESULT and fast and self._reply_fast(arena, seq, value, key):
            return arena
        shape = arena.shape
        try:
            encoded = _encode_general(kind, value, self._sender, key)
        except EncodeError as exc:
            encoded = _encode_general(ERROR, error_body(ErrorKind.ENCODE, exc), self._sender, "")
        if self._loans.from_slot:  # the envelope is about to overwrite the slot these arrays live in
            encoded.buffers = [bytes(memoryview(buffer)) for buffer in encoded.buffers]
        target = arena
        if encoded.size > shape.slot_capacity:
            grown = ArenaShape(shape.request_capacity, _grown(shape.slot_capacity, encoded.size), shape.slots)
            target = self._new_generation(arena, grown)
        encoded.write(target, target.shape.slot_offset(seq % target.shape.slots), target.shape.slot_capacity, seq)
        if target is not arena:
            self._reply_bell(target).ring()
            self._announce(arena, target, seq)
        else:
            self._reply_bell(arena).ring()
        return target

    def _reply_bell(self, arena: Arena) -> Doorbell:
        bell = self._reply_bells.get(id(arena))
        if bell is None:
            bell = self._reply_bells[id(arena)] = _bell(arena.buf, REPLY_BELL)
        return bell

    def _new_generation(self, arena: Arena, shape: ArenaShape) -> Arena:
        new = Arena.create(shape, generation=arena.generation + 1)
        self._arenas.append(new)
        self._sender.forget_arena()
        self._receiver.forget_arena()
        # Older generations are no longer written; the client unmaps them when its views die.
        while len(self._arenas) > 2:
            old = self._arenas.pop(0)
            self._reply_bells.pop(id(old), None)
            old.unlink()
            old.close()
        return new

    @staticmethod
    def _announce(old: Arena, new: Arena, seq: int) -> None:
        skeleton, _ = codec.encode({"name": new.name})
        slot = seq % old.shape.slots
        old.write_envelope(old.shape.slot_offset(slot), old.shape.slot_capacity, REMAP, seq, skeleton, [])
        _bell(old.buf, REPLY_BELL).ring()


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
        self._request_bell = _bell(arena.buf, REQUEST_BELL, self._spin_us)
        self._reply_bell = _bell(arena.buf, REPLY_BELL, self._spin_us)
        self._sender.forget_arena()
        self._receiver.forget_arena()
        shape = arena.shape
        self._request_offset = arena.request_offset()
        self._slot_offsets = [shape.slot_offset(slot) for slot in range(shape.slots)]
        self._slot_layouts = [self._receiver.region(offset, True) for offset in self._slot_offsets]
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
        """How many replies the ring holds: a returned view stays valid for ``slots - 1`` more calls."""
        return self.arena.shape.slots

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
            try:
                got = native_take(
                    self.arena.buf, REPLY_BELL, seen, self._spin_us, remaining,
                    self._slot_offsets[slot], self._slot_layouts[slot], self._copy, -1,
                )
            except BaseException:  # interrupted (Ctrl-C) before the reply was read
                self._unread = (CALL, seq, seen)
                raise
            if got is not None and got[4] and got[3] == seq:
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
        seq = self._seq + 1
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
        seq = self._seq + 1
        write: Callable[[int], None] | None = None
        if not self._sender.write_fast(arena, offset, capacity, key, CALL, seq, body):
            encoded = _encode_general(CALL, body, self._sender, key)
            if encoded.size > capacity:
                grow, _ = codec.encode(encoded.size)
                kind, value = self._exchange(
                    GROW, lambda seq: arena.write_envelope(offset, capacity, GROW, seq, grow, []), deadline, what
                )
                if kind == ERROR:
                    if encoded.flags & WITH_LAYOUT:
                        self._sender.forget(key)  # the definition never reached the server
                    return _Done(False, value)
                if kind != REMAP:
                    raise ProtocolError("server did not grow the request region")
                arena = self.arena
                offset, capacity = arena.request_offset(), arena.shape.request_capacity

            def write_general(seq: int) -> None:
                encoded.write(arena, offset, capacity, seq)

            write = write_general
        return self._post(write, CALL)

    def receive(self, ticket: Any, deadline: float | None, what: str) -> tuple[bool, Any]:
        """Wait for the reply to the call behind ``ticket`` (from :meth:`send`)."""
        if isinstance(ticket, _Done):
            return ticket.ok, ticket.value
        kind, value = self._collect(CALL, ticket, deadline, what)
        return kind != ERROR, value

    def _exchange(
        self, kind: int, write: Callable[[int], None] | None, deadline: float | None, what: str
    ) -> tuple[int, Any]:
        """Send the request (``write(seq)`` puts it in place; None: already written) and read the reply."""
        return self._collect(kind, self._post(write, kind), deadline, what)

    def _post(self, write: Callable[[int], None] | None, kind: int) -> tuple[int, int]:
        """Write the next request (None: already written) and ring; returns ``(seq, reply bell value)``."""
        self._seq += 1
        seq = self._seq
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
        try:
            while True:
                # Read the slot only after a ring: the ring publishes a complete reply.
                current = self._wait(self._reply_bell, seen, deadline, what)
                if current == seen:
                    continue  # a wait slice passed: the peer is alive, keep waiting
                seen = current
                reply_kind, flags, _, skeleton_len, reply_seq = arena.read_header(slot)
                if reply_seq == seq:
                    break
        except BaseException:  # timed out or interrupted: read this reply before the next call
            self._unread = (kind, *posted)
            raise
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
        if reply_kind == FAST:
            return flags, self._receiver.read(arena, slot, capacity, skeleton_len, readonly=True, copy=self._copy)
        _, _, skeleton, buffers = arena.read_envelope(slot, capacity)
        if self._copy:
            buffers = [bytearray(b) for b in buffers]
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
        while _words().load(self.arena.buf, CONSUMED_WORD) != last:
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


__all__ = ["DEFAULT_SHAPE", "LayoutReceiver", "LayoutSender", "ShmClientPlane", "ShmServerWorker"]
