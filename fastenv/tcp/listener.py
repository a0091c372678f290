"""Accepting data streams: one thread reads every new connection's preamble and hands it to its session."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
import warnings
from collections.abc import Callable

from fastenv.errors import TransportError
from fastenv.tcp.handshake import ACK, DEFAULT_TOKEN_SIZE, HELLO, NAK

log = logging.getLogger("fastenv.tcp")

DEFAULT_ACCEPT_TIMEOUT_S = 5.0
MAX_PENDING = 128

class TcpDataListener:
    """Accepts data connections and hands each to its session.

    A connection must send :data:`HELLO` followed by a ``token_size``-byte
    session token within ``accept_timeout`` seconds; tokens are read without
    blocking, by one thread, so a slow, silent or garbage-sending connection
    delays nobody and is dropped. ``on_connection(token, sock)`` (called from
    the listener's thread; it must not block) returns True if it adopted the
    socket, which is then answered :data:`ACK` and belongs to the adopter;
    otherwise (or if it raises) the listener closes it.

    Args:
        host: address to bind.
        port: port to bind (0: any free port, see :attr:`port`).
        on_connection: the adopter.
        token_size: length of the session token.
        accept_timeout: how long a new connection may take to send its preamble.
        max_pending: connections still owing their preamble; the oldest is
            dropped beyond this.
    """

    def __init__(
        self,
        host: str,
        port: int = 0,
        *,
        on_connection: Callable[[bytes, socket.socket], bool],
        token_size: int = DEFAULT_TOKEN_SIZE,
        accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT_S,
        max_pending: int = MAX_PENDING,
        backlog: int = 128,
    ) -> None:
        self._on_connection = on_connection
        self._preamble = len(HELLO) + token_size
        self._accept_timeout = accept_timeout
        self._max_pending = max_pending
        self._closed = True  # until everything below exists
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server((host, port), family=family, backlog=backlog)  # SO_REUSEADDR on POSIX
        except OSError as exc:
            raise TransportError(f"cannot listen for data streams on {host}:{port}: {exc.strerror or exc}") from exc
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: dict[socket.socket, tuple[float, bytearray]] = {}
        self.accepted = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="fastenv-tcp-listener", daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        """The bound port."""
        return self.address[1]

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and close the listening and pending sockets. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> TcpDataListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
            self.close()

    def _run(self) -> None:
        try:
            while not self._closed:
                timeout = None
                if self._pending:
                    timeout = max(0.0, min(d for d, _ in self._pending.values()) - time.monotonic())
                try:
                    events = self._selector.select(timeout)
                except OSError:  # interrupted: loop again
                    continue
                for key, _ in events:
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._read_preamble(key.fileobj)  # type: ignore[arg-type]
                self._expire()
        except Exception:  # a bug here must not take the server down
            log.exception("TCP data listener failed")
        finally:
            for sock in list(self._pending):
                self._drop(sock)
            self._selector.close()
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(64)
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ECONNABORTED...: keep serving the others
                log.warning("data stream accept failed: %s", exc)
                return
            sock.setblocking(False)
            if len(self._pending) >= self._max_pending:
                oldest = min(self._pending, key=lambda s: self._pending[s][0])
                self._drop(oldest)
            self._pending[sock] = (time.monotonic() + self._accept_timeout, bytearray())
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _read_preamble(self, sock: socket.socket) -> None:
        entry = self._pending.get(sock)
        if entry is None:
            return
        received = entry[1]
        try:
            data = sock.recv(self._preamble - len(received))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        received += data
        if not HELLO.startswith(bytes(received[: len(HELLO)])):
            log.debug("dropped a connection that is not a fastenv data stream")
            self._drop(sock)
            return
        if len(received) < self._preamble:
            return
        self._selector.unregister(sock)
        del self._pending[sock]
        token = bytes(received[len(HELLO) :])
        sock.setblocking(True)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            adopted = bool(self._on_connection(token, sock))
        except Exception:
            log.exception("on_connection failed for a data stream")
            adopted = False
        if not adopted:
            self.dropped += 1
            try:
                sock.send(NAK)  # so the client can tell a refusal from a connection cut on the way
            except OSError:
                pass
            sock.close()
            return
        self.accepted += 1
        try:
            sock.send(ACK)  # one byte into an empty send buffer: never blocks
        except OSError:
            pass  # the adopter's stream will see the connection is gone

    def _expire(self) -> None:
        now = time.monotonic()
        for sock, (deadline, _) in list(self._pending.items()):
            if deadline <= now:
                log.debug("dropped a data connection that sent no session token in time")
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        self.dropped += 1
        sock.close()
