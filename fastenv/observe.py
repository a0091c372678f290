"""Observers: read-only clients that receive every transition a controller causes.

The server owns one :class:`TransitionPublisher`: an XPUB socket (its port is
announced in the handshake) fed by a thread of its own. Calls that change the
env are handed to it through an in-process PUSH socket without waiting; the
XPUB socket drops messages for a subscriber whose queue is full, so a slow or
stalled observer skips transitions and never slows the controller. Each
transition carries the env's transition number, so an observer sees exactly
which ones it missed (:attr:`TransitionSubscriber.skipped`).

Skipping costs the controller almost nothing: the publisher socket refuses
(rather than drops) a message that some observer has no room for, and from
then on transitions are not even encoded, except one probe every
:data:`PROBE_INTERVAL_S` (and what follows it until the publisher thread has
tried it), until a probe goes through. So while an observer is
stalled, all observers skip (they share one queue position); a
fast observer next to a stalled one sees the same gaps.

Joining without losing anything: an observer subscribes to the transition
topic and then to a topic of its own; the publisher answers the second
subscription with a sync message. Subscriptions on one connection arrive in
order, so once the sync message is back, every later transition reaches it.

Authentication: a server started with keys publishes on a CURVE socket (its
ZAP handler admits the same client keys as the control channel), and
observers subscribe with their client keys, so transitions are encrypted and
only authorized clients receive them.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from fastenv import protocol
from fastenv.control.auth import AuthConfig, refuse_unversioned_peers
from fastenv.control.router import HANDSHAKE_TIMEOUT_S
from fastenv.errors import ConnectionLost, FastEnvTimeout, ProtocolError, translate_zmq_errors
from fastenv.protocol import Kind

log = logging.getLogger("fastenv.observe")

TRANSITIONS = b"T"  # topic of transition messages
SYNC = b"S"  # prefix of an observer's own sync topic
# Messages queued per observer (on each side of its connection) before it skips: small,
# because a queued transition holds a copy of its observation.
DEFAULT_QUEUE = 32
HANDOFF_QUEUE = 16  # transitions waiting for the publisher thread (workers never wait for it)
PROBE_INTERVAL_S = 0.02  # while observers are backlogged, how often a transition is tried anyway


@dataclass(frozen=True)
class Transition:
    """One call that changed the shared env, as an observer receives it.

    Attributes:
        seq: the env's transition number (1, 2, ...); a gap means this observer skipped some.
        method: ``"reset"``, ``"step"``, ``"set_state"`` or another env method.
        args: the call's positional arguments (for ``step``: ``(action,)``).
        kwargs: its keyword arguments.
        result: what the env returned.
        session: id of the session that made the call.
        fallback: whether the server made the call itself, applying the
            fallback of a controller's missed deadline (:meth:`FastRemoteEnv.set_deadline`).
    """

    seq: int
    method: str
    args: tuple
    kwargs: dict
    result: Any
    session: str
    fallback: bool = False


class TransitionPublisher:
    """Publishes transitions of a server's env to its observers (server side).

    Args:
        bind: interface to bind (the server's).
        queue: messages queued per observer before it skips.
        auth: the server's CURVE keys (the context must run the server's ZAP handler).
    """

    def __init__(
        self,
        bind: str,
        *,
        queue: int = DEFAULT_QUEUE,
        auth: AuthConfig | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self._context = context or zmq.Context.instance()
        self._inbox_endpoint = f"inproc://fastenv-transitions-{os.getpid()}-{id(self):x}"
        self._lock = threading.Lock()  # the PUSH socket is shared by every worker thread
        self._stop = threading.Event()
        self.active = False  # someone subscribed to transitions: workers publish only then
        self.published = 0
        self.dropped = 0
        self.backlogged = False  # the last message was refused: observers are behind
        self._last_try = 0.0
        # A probe is on its way to the publisher thread: until that thread has tried it, the
        # backlog may already be gone, so transitions are still handed over (the handoff
        # queue bounds them). Without this, the transition right after a successful probe
        # was dropped whenever the controller stepped faster than the thread forwarded.
        self._probing = False
        host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
        with translate_zmq_errors(f"tcp://{host}"):
            self._xpub = self._context.socket(zmq.XPUB)
            self._xpub.setsockopt(zmq.LINGER, 0)
            self._xpub.setsockopt(zmq.SNDHWM, queue)
            self._xpub.setsockopt(zmq.XPUB_NODROP, 1)  # refuse instead of dropping: see backlogged
            self._xpub.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_TIMEOUT_S * 1000))
            refuse_unversioned_peers(self._xpub)
            if auth is not None:
                auth.configure_server(self._xpub)
            if ":" in bind:
                self._xpub.setsockopt(zmq.IPV6, 1)
            self._xpub.bind(f"tcp://{host}:*")
            self.port = int(self._xpub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
            self._inbox = self._context.socket(zmq.PULL)
            self._inbox.setsockopt(zmq.LINGER, 0)
            self._inbox.setsockopt(zmq.RCVHWM, HANDOFF_QUEUE)
            self._inbox.bind(self._inbox_endpoint)
            self._push = self._context.socket(zmq.PUSH)
            self._push.setsockopt(zmq.LINGER, 0)
            self._push.setsockopt(zmq.SNDHWM, HANDOFF_QUEUE)
            self._push.connect(self._inbox_endpoint)
        self._thread = threading.Thread(target=self._run, name="fastenv-publisher", daemon=True)
        self._thread.start()

    def publish(
        self, seq: int, method: str, args: tuple, kwargs: dict, result: Any, session: str, fallback: bool = False
    ) -> None:
        """Hand one transition to the publisher thread; never blocks (a full queue drops it)."""
        if self.backlogged and not self._probing:
            now = time.monotonic()
            if now - self._last_try < PROBE_INTERVAL_S:
                self.dropped += 1
                return
            self._last_try = now
            self._probing = True
        body = {"seq": seq, "method": method, "args": args, "kwargs": kwargs, "result": result, "session": session}
        if fallback:
            body["fallback"] = True
        try:
            frames = protocol.pack(Kind.TRANSITION, seq, body)
        except ProtocolError:  # the result cannot be encoded: observers get the call without it
            body["result"] = None
            frames = protocol.pack(Kind.TRANSITION, seq, body)
        with self._lock:
            if self._stop.is_set():
                return
            try:
                # copy=True: the env may overwrite its arrays on the next step, before this is sent
                self._push.send_multipart([TRANSITIONS, *frames], zmq.NOBLOCK, copy=True)
                self.published += 1
            except zmq.Again:
                self.dropped += 1

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._xpub, zmq.POLLIN)
        poller.register(self._inbox, zmq.POLLIN)
        subscribers = 0
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if self._xpub in events:
                    subscribers = self._on_subscriptions(subscribers)
                if self._inbox in events:
                    self._forward()
        except zmq.ZMQError as exc:  # the context is going away with the process
            if not self._stop.is_set():
                log.warning("transition publisher stopped: %s", exc)

    def _on_subscriptions(self, subscribers: int) -> int:
        while True:
            try:
                event = self._xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return subscribers
            if not event:
                continue
            subscribe, topic = event[0] == 1, event[1:]
            if topic == TRANSITIONS:
                subscribers += 1 if subscribe else -1
                self.active = subscribers > 0
            elif subscribe and topic.startswith(SYNC):
                self._xpub.send_multipart([topic, b""], zmq.NOBLOCK)

    def _forward(self) -> None:
        for _ in range(1000):  # then give subscriptions a turn
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._xpub.send_multipart(frames, zmq.NOBLOCK, copy=False)
                self.backlogged = False
            except zmq.Again:  # an observer's queue is full: skip, and stop encoding for a while
                self.dropped += 1
                self.backlogged = True
            self._probing = False

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the sockets (idempotent)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
        self._thread.join(timeout)
        for sock in (self._push, self._inbox, self._xpub):
            sock.close(linger=0)

    def __enter__(self) -> TransitionPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_sync_ids = itertools.count(1)


class TransitionSubscriber:
    """An observer's receiving end (client side); see :meth:`fastenv.FastRemoteEnv.next_transition`.

    Args:
        endpoint: ``tcp://host:port`` of the server's publisher.
        timeout: seconds to wait for the subscription to take effect.
        queue: transitions queued on this side before the server starts skipping.
        auth: the client's CURVE keys (needed when the server uses authentication).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float,
        queue: int = DEFAULT_QUEUE,
        auth: AuthConfig | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.skipped = 0
        self.received = 0
        self._last_seq: int | None = None
        self._closed = False
        context = context or zmq.Context.instance()
        sync_topic = SYNC + os.urandom(8).hex().encode() + str(next(_sync_ids)).encode()
        with translate_zmq_errors(endpoint):
            self._socket = context.socket(zmq.SUB)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, queue)
            if auth is not None:
                auth.configure_client(self._socket)
            self._socket.setsockopt(zmq.SUBSCRIBE, TRANSITIONS)
            self._socket.setsockopt(zmq.SUBSCRIBE, sync_topic)
            self._socket.connect(endpoint)
        try:
            self._await_sync(sync_topic, timeout)
        except BaseException:
            self.close()
            raise

    def _await_sync(self, sync_topic: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000)):
                raise FastEnvTimeout(f"subscribing to transitions at {self.endpoint} took longer than {timeout:g}s")
            frames = self._socket.recv_multipart()
            if frames[0] == sync_topic:
                self._socket.setsockopt(zmq.UNSUBSCRIBE, sync_topic)
                return
            # a transition that raced the sync message: older than our subscription, skip it

    def next(self, timeout: float | None) -> Transition:
        """The next transition; raises :class:`FastEnvTimeout` if none comes within ``timeout`` seconds."""
        if self._closed:
            raise ConnectionLost(f"the observer connection to {self.endpoint} is closed")
        with translate_zmq_errors(self.endpoint):
            if not self._socket.poll(None if timeout is None else int(timeout * 1000)):
                raise FastEnvTimeout(f"no transition from {self.endpoint} within {timeout:g}s")
            frames = self._socket.recv_multipart(copy=False)
        if bytes(frames[0].buffer) != TRANSITIONS:
            return self.next(timeout)
        message = protocol.unpack(frames[1:])
        body = message.body()
        if message.kind is not Kind.TRANSITION or not isinstance(body, dict):
            raise ProtocolError(f"unexpected {message.kind.name} message on the transition stream")
        seq = int(body["seq"])
        if self._last_seq is not None and seq > self._last_seq + 1:
            self.skipped += seq - self._last_seq - 1
        self._last_seq = seq
        self.received += 1
        return Transition(
            seq,
            str(body["method"]),
            tuple(body["args"]),
            dict(body["kwargs"]),
            body["result"],
            str(body["session"]),
            body.get("fallback") is True,
        )

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self._closed:
            self._closed = True
            self._socket.close(linger=0)


__all__ = ["Transition", "TransitionPublisher", "TransitionSubscriber"]
