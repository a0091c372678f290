"""The server's end of a session's arena: a worker thread that runs its calls."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastenv import codec
from fastenv import layout as layout_module
from fastenv.errors import (
    EncodeError,
    FastEnvTimeout,
    FrameTooLarge,
    ProtocolError,
)
from fastenv.layout import (
    native_take,
)
from fastenv.loans import ReplyLoans, use_loans
from fastenv.metrics import replied
from fastenv.shm import futex
from fastenv.shm.arena import (
    CALL,
    ERROR,
    FAST,
    GROW,
    REMAP,
    REPLY_BELL,
    REQUEST_BELL,
    RESULT,
    WITH_LAYOUT,
    Arena,
    ArenaShape,
)
from fastenv.shm.doorbell import Doorbell
from fastenv.shm.kept import KeptTensors
from fastenv.shm.layouts import LayoutReceiver, LayoutSender
from fastenv.shm.plane import CONSUMED_WORD, SERVER_SPIN_US, WAIT_SLICE_S, encode_general, grown, make_bell, words
from fastenv.transport.base import Executor

from fastenv.wire import ErrorKind, error_body, parse_call

if TYPE_CHECKING:
    from fastenv.session.envthread import EnvThread

log = logging.getLogger("fastenv.shm")
WAKE_ALL = 2**31 - 1  # FUTEX_WAKE count: every sleeper


class ShmServerWorker:
    """Serves one session's arena in a thread.

    ``peer_alive`` tells whether the client's process still runs: the arena
    itself never drops, so a session on shared memory ends when that process
    is gone.
    """

    name = "shm"

    def __init__(
        self,
        arena: Arena,
        execute: Executor,
        *,
        limits: codec.Limits,
        max_message_bytes: int,
        spin_us: int | None = None,
        peer_alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.arena = arena
        self._peer_alive = peer_alive
        self._max_message_bytes = max_message_bytes
        self._execute = execute
        self._limits = limits
        self._spin_us = SERVER_SPIN_US if spin_us is None else spin_us
        self._arenas = [arena]
        self._sender = LayoutSender()
        self._receiver = LayoutReceiver(limits)
        self._kept: KeptTensors | None = None
        if layout_module._native_layout is not None:  # the C unpacker copies request tensors into kept ones
            self._kept = self._receiver.kept = KeptTensors(layout_module._native_layout)
        self._reply_bells: dict[int, Doorbell] = {}
        self._loans = ReplyLoans(self._reply_views)  # fastenv.reply_array() during this worker's calls
        self._store = words().store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastenv-shm-worker", daemon=True)
        self._host: EnvThread | None = None  # the env thread serving this session, when it hosts it
        self._left = threading.Event()  # the host thread left the loop for good
        self._hosting = False  # the host thread is in serve_hosted() now
        self._watch(arena)
        self._seen = self._bell.value()

    def start(self, host: EnvThread | None = None) -> None:
        """Start serving: on ``host``'s thread when it takes the session (no hop per call), else on a thread of its own."""
        # Hosting needs the C fast path: its take() waits for requests and pokes at once.
        if host is not None and self._fast:
            self._host = host  # before the host thread can start: stop() must know who serves the session
            if host.host(self):
                return
            self._host = None
        self._thread.start()

    def peer_gone(self, now: float) -> str | None:
        """Why the session should end: its client's process exited (None while it runs)."""
        return None if self._peer_alive() else "its process exited"

    def resumed(self) -> None:
        """Nothing to do: the arena does not drop when the control connection does."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker and release its arenas: names, mappings and descriptors.

        The memory goes when the client unmaps too. A call still running after
        ``timeout`` (an env that hangs) keeps the mappings until it returns: the
        worker thread releases them as it ends.
        """
        self._stop.set()
        host = self._host
        if host is not None:
            if not host.on_owner():
                host.poke()
                self._left.wait(timeout)
            for arena in self._arenas:
                arena.unlink()
            if host.on_owner() and not self._hosting and not self._left.is_set():
                self._release()  # the host thread has left the loop (it is shutting down): release here
                self._left.set()
            return  # the host thread releases the arenas as it leaves the loop (at once, or after a hung call)
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
        while not self._stop.is_set():
            self._serve_next(())

    def serve_hosted(self, poke: Any, poke_offset: int, poke_seen: int) -> bool:
        """Serve requests on the calling thread (an env's, see :meth:`EnvThread.host`) until poked or stopped.

        Returns when the u32 at ``poke_offset`` in ``poke`` no longer reads
        ``poke_seen`` (True) or once the worker is stopped (False; its
        arenas are then released here).
        """
        previous = use_loans(self._loans)
        self._hosting = True
        try:
            while not self._stop.is_set():
                if not self._serve_next((poke, poke_offset, poke_seen)) and words().load(poke, poke_offset) != poke_seen:
                    return True
        finally:
            self._hosting = False
            use_loans(previous)
        self._release()
        self._left.set()
        return False

    def wake(self) -> None:
        """Wake the thread waiting for this session's requests (a hosted wait looks at its poke word).

        Nothing once the worker has stopped: its arenas may be unmapped.
        """
        if self._stop.is_set():
            return
        try:
            futex.native_backend.wake(self.arena.buf, REQUEST_BELL, WAKE_ALL)
        except ValueError:  # unmapped meanwhile: the worker stopped, and nobody waits there any more
            pass

    def _serve_next(self, poke: tuple) -> bool:
        """Wait (one slice, or until poked) for the next request and serve it; whether there was one.

        The C fast path: take() waits and unpacks a FAST request with a layout
        already prepared for the request region; anything else goes through
        :meth:`_serve_one`.
        """
        arena = self.arena
        seen = self._seen
        if self._fast:
            if self._kept is not None:
                self._kept.refresh()  # while the client prepares its request: what the env kept stays its own
            try:
                got = native_take(
                    arena.buf, REQUEST_BELL, seen, self._spin_us, WAIT_SLICE_S, self._region, self._requests, True,
                    CONSUMED_WORD, *poke,
                )
            except Exception:  # e.g. MemoryError copying the action: the long way answers, or reports it
                log.debug("shared-memory fast path failed; serving the request the long way", exc_info=True)
                current = self._bell.value()
                if current == seen:
                    return False  # it failed while waiting: no request yet
                got = (current, 0, 0, 0, False, None)  # the client rings once per request
            if got is None:
                return False
            self._seen = got[0]
            taken = got[4] and not arena.linked  # a first request in an arena goes the long way (unlink)
            arena = self._serve_call(arena, got[3], got[5]) if taken else self._serve_one(arena)
        else:
            try:
                self._seen = self._bell.wait(seen, WAIT_SLICE_S)
            except FastEnvTimeout:
                return False
            arena = self._serve_one(arena)
        if arena is not self.arena:  # remapped: wait on the new arena's doorbell
            self._watch(arena)
            # A new arena's counter starts at 0; the client may already have rung it
            # (it can attach as soon as the REMAP is visible), so never re-read it here.
            self._seen = 0
        return True

    def _watch(self, arena: Arena) -> None:
        """Wait for requests in ``arena`` from now on."""
        self.arena = arena
        self._bell = make_bell(arena.buf, REQUEST_BELL, self._spin_us)
        self._fast = native_take is not None and self._bell.backend is futex.native_backend
        self._region = arena.request_offset()
        self._requests = self._receiver.region(self._region, False)

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
            target = self._reply(arena, seq, RESULT if ok else ERROR, value, name)
            replied(self._execute)
            return target
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
        new = self._new_generation(arena, ArenaShape(grown(shape.request_capacity, wanted), shape.slot_capacity, shape.slots))
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
            encoded = encode_general(kind, value, self._sender, key)
        except EncodeError as exc:
            encoded = encode_general(ERROR, error_body(ErrorKind.ENCODE, exc), self._sender, "")
        if self._loans.from_slot:  # the envelope is about to overwrite the slot these arrays live in
            encoded.buffers = [bytes(memoryview(buffer)) for buffer in encoded.buffers]
        target = arena
        if encoded.size > shape.slot_capacity:
            bigger = ArenaShape(shape.request_capacity, grown(shape.slot_capacity, encoded.size), shape.slots)
            target = self._new_generation(arena, bigger)
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
            bell = self._reply_bells[id(arena)] = make_bell(arena.buf, REPLY_BELL)
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
        make_bell(old.buf, REPLY_BELL).ring()

