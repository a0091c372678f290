"""Local port forwarding through an SSH connection (``ssh -L``), with paramiko.

A :class:`PortForwarder` owns local listening sockets. Each accepted
connection gets a ``direct-tcpip`` channel to its remote ``(host, port)``,
opened by the SSH server on the remote side, and two threads copy bytes in
each direction (half-closes passed on). :meth:`PortForwarder.close` closes
the listeners, every connection and channel, and joins the threads.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections import Counter
from collections.abc import Callable

import paramiko

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
_JOIN_TIMEOUT = 5.0


class _Pipe:
    """One forwarded connection: a local socket and its SSH channel, copied both ways."""

    def __init__(self, sock: socket.socket, channel: paramiko.Channel, on_done: Callable[[_Pipe], None]) -> None:
        self.sock = sock
        self.channel = channel
        self._on_done = on_done
        self._open = 2
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._upstream, name="fastenv-forward-up", daemon=True),
            threading.Thread(target=self._downstream, name="fastenv-forward-down", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _upstream(self) -> None:
        try:
            while data := self.sock.recv(CHUNK):
                self.channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self.channel.shutdown_write()
            self._finished()

    def _downstream(self) -> None:
        try:
            while data := self.channel.recv(CHUNK):
                self.sock.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            self.channel.close()
            self.sock.close()
            self._on_done(self)

    def abort(self) -> None:
        """Wake both threads: they see EOF and close everything."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.channel.close()


class PortForwarder:
    """Forward local ports to ``(host, port)`` pairs as seen from the SSH server.

    Example::

        with PortForwarder(connection.transport) as forwarder:
            local = forwarder.add(("127.0.0.1", 0), ("127.0.0.1", 5555))
            forwarder.start()

    Attributes:
        accepted: connections accepted so far, per local ``(host, port)``.
    """

    def __init__(self, transport: paramiko.Transport, *, open_timeout: float = 10.0) -> None:
        self._transport = transport
        self._open_timeout = open_timeout
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._routes: dict[socket.socket, tuple[tuple[str, int], tuple[str, int]]] = {}
        self._pipes: set[_Pipe] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.accepted: Counter[tuple[str, int]] = Counter()

    def add(self, local: tuple[str, int], remote: tuple[str, int]) -> tuple[str, int]:
        """Listen on ``local`` (port 0: any free port) and forward to ``remote``; return the bound address.

        Raises OSError (``EADDRINUSE``...) when ``local`` cannot be bound.
        """
        family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.bind(local)
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        bound = listener.getsockname()[:2]
        self._routes[listener] = ((str(bound[0]), int(bound[1])), remote)
        self._selector.register(listener, selectors.EVENT_READ)
        return str(bound[0]), int(bound[1])

    def start(self) -> None:
        """Start accepting connections (in a background thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="fastenv-forward-accept", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_reader:
                    return
                listener = key.fileobj
                assert isinstance(listener, socket.socket)
                try:
                    conn, peer = listener.accept()
                except OSError:  # BlockingIOError (already taken), ECONNABORTED...
                    continue
                local, remote = self._routes[listener]
                self.accepted[local] += 1
                threading.Thread(
                    target=self._connect, args=(conn, peer, remote), name="fastenv-forward-open", daemon=True
                ).start()

    def _connect(self, conn: socket.socket, peer: tuple, remote: tuple[str, int]) -> None:
        """Open the channel for one accepted connection (off the accept loop: it takes a round trip)."""
        conn.setblocking(True)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            channel = self._transport.open_channel(
                "direct-tcpip", remote, (str(peer[0]), int(peer[1])), timeout=self._open_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            log.debug("forward to %s:%s refused: %s", remote[0], remote[1], exc)
            conn.close()
            return
        pipe = _Pipe(conn, channel, self._forget)
        with self._lock:
            if self._closed:
                channel.close()
                conn.close()
                return
            self._pipes.add(pipe)
        pipe.start()

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def close(self) -> None:
        """Stop listening, close every forwarded connection, join the threads (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pipes = list(self._pipes)
        if self._thread is not None:
            self._wake_writer.send(b"x")
            self._thread.join(_JOIN_TIMEOUT)
        for listener in self._routes:
            self._selector.unregister(listener)
            listener.close()
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()
        for pipe in pipes:
            pipe.abort()
        for pipe in pipes:
            for thread in pipe.threads:
                thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> PortForwarder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
