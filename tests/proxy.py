"""A TCP proxy for the tests: forwards connections, cuts them all at once, or cuts new ones on arrival."""

from __future__ import annotations

import random
import socket
import threading


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below Linux's ephemeral range, so no outgoing connection takes it while a server restarts."""
    for port in random.Random().sample(range(20000, 32000), 200):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (linger 0), as a network failure would.

    A pump thread blocked in ``recv`` on it holds the file until that call
    returns, and the reset is only sent then: shutting the reading side first
    wakes it, so the reset goes out now.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


class TcpProxy:
    """Forward ``listen`` to ``target``; :meth:`cut` drops every open connection (new ones still work).

    :meth:`cut_arrivals` makes the next connections be reset as soon as they
    arrive (a reconnection whose own connection is cut). With ``record=True``
    every byte forwarded (both directions) is kept in :attr:`recorded`.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], *, record: bool = False) -> None:
        self.target = target
        self.recorded: bytearray | None = bytearray() if record else None
        self._server = socket.create_server(listen)
        self._server.settimeout(0.1)
        self.address = self._server.getsockname()[:2]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = threading.Event()
        self.cuts = 0
        self._cut_arrivals = 0
        self.arrivals_cut = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                cut_now = self._cut_arrivals > 0
                if cut_now:
                    self._cut_arrivals -= 1
                    self.arrivals_cut += 1
            if cut_now:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.recorded is not None:
                    with self._lock:
                        self.recorded += data
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Reset every open connection (both directions), as a network failure would."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def cut_arrivals(self, count: int) -> None:
        """Reset the next ``count`` connections as soon as they arrive."""
        with self._lock:
            self._cut_arrivals += count

    def let_arrivals_through(self) -> None:
        """Stop resetting new connections (those :meth:`cut_arrivals` asked for and not yet cut)."""
        with self._lock:
            self._cut_arrivals = 0

    def close(self) -> None:
        """Stop accepting and drop everything."""
        self._closed.set()
        self._server.close()
        self.cut()
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
