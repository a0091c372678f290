"""A TCP proxy that injects the faults of a real network: latency, jitter, a bandwidth cap, connection cuts.

``fastenv proxy LISTEN TARGET`` sits between a client and a server so a
control loop (and fastenv's own reconnection) can be tested under the
network it will meet. A :class:`FaultProxy` forwards one port; a fastenv
server listens on two or three (control, data stream, observers), so the
command forwards each of them on the same port number of the listening host.

Faults, each direction on its own:

- **latency** and **jitter**: every chunk is delivered ``latency + U(0,
  jitter)`` after it arrived, never before a chunk that arrived earlier
  (TCP keeps order: jitter delays, it does not reorder);
- **bandwidth**: delivery is paced to at most that many bytes per second;
- **cuts**: :meth:`FaultProxy.cut` resets every open connection (as a
  network failure would); :meth:`FaultProxy.cut_arrivals` resets new ones
  as they arrive; a :class:`LinkProfile` with ``cut_every`` does both on a
  schedule (cut, then refuse connections for ``cut_for`` seconds).

The random choices come from ``LinkProfile.seed``, printed by the command,
so a run can be repeated.
"""

from __future__ import annotations

import collections
import random
import socket
import threading
import time
from dataclasses import dataclass

CHUNK = 65536


@dataclass(frozen=True)
class LinkProfile:
    """The faults a :class:`FaultProxy` injects (each direction of each connection on its own).

    Attributes:
        latency: seconds added to every chunk's delivery.
        jitter: at most this many more seconds, drawn uniformly per chunk (order is kept).
        bandwidth: bytes per second at most (None: no cap).
        cut_every: reset every connection each this many seconds (None: never).
        cut_for: after each scheduled cut, reset new connections for this long.
        seed: seeds the jitter (None: a random seed, see :attr:`FaultProxy.seed`).
    """

    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float | None = None
    cut_every: float | None = None
    cut_for: float = 0.0
    seed: int | None = None

    @property
    def shapes_traffic(self) -> bool:
        """Whether chunks are delayed or paced (else they are forwarded as they come)."""
        return self.latency > 0 or self.jitter > 0 or self.bandwidth is not None


def reset_socket(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (linger 0), as a network failure would.

    A thread blocked in ``recv`` on it holds the file until that call
    returns, and the reset is only sent then: shutting the reading side
    first wakes it, so the reset goes out now.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Forward ``listen`` to ``target`` through the faults of ``profile``.

    Args:
        listen: ``(host, port)`` to accept on (port 0: any; see :attr:`address`).
        target: ``(host, port)`` to connect each accepted connection to.
        profile: the faults (default: none, a plain forwarder).
        record: keep every byte forwarded, both directions, in :attr:`recorded`.

    Attributes:
        address: where it listens.
        seed: the seed of its random choices.
        cuts: resets of every connection so far; arrivals_cut: connections reset on arrival.
        forwarded: bytes forwarded so far, ``{"up": client to server, "down": server to client}``.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        profile: LinkProfile | None = None,
        *,
        record: bool = False,
    ) -> None:
        self.target = target
        self.profile = profile or LinkProfile()
        self.seed = self.profile.seed if self.profile.seed is not None else self.new_seed()
        self._random = random.Random(self.seed)
        self.recorded: bytearray | None = bytearray() if record else None
        self.forwarded = {"up": 0, "down": 0}
        self._server = socket.create_server(listen)
        self._server.settimeout(0.1)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = threading.Event()
        self.cuts = 0
        self._cut_arrivals = 0
        self._refuse_until = 0.0
        self.arrivals_cut = 0
        self._threads = [threading.Thread(target=self._accept, name="fastenv-proxy", daemon=True)]
        if self.profile.cut_every is not None:
            self._threads.append(threading.Thread(target=self._cut_on_schedule, name="fastenv-proxy-cuts", daemon=True))
        for thread in self._threads:
            thread.start()

    @staticmethod
    def new_seed() -> int:
        """A fresh random seed for a :class:`LinkProfile`."""
        return random.SystemRandom().randrange(2**32)

    # ------------------------------------------------------------------ faults

    def cut(self) -> None:
        """Reset every open connection (both directions), as a network failure would."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                reset_socket(sock)

    def cut_arrivals(self, count: int) -> None:
        """Reset the next ``count`` connections as soon as they arrive."""
        with self._lock:
            self._cut_arrivals += count

    def let_arrivals_through(self) -> None:
        """Stop resetting new connections (those :meth:`cut_arrivals` asked for, and a scheduled outage)."""
        with self._lock:
            self._cut_arrivals = 0
            self._refuse_until = 0.0

    def _cut_on_schedule(self) -> None:
        every = self.profile.cut_every
        assert every is not None
        while not self._closed.wait(every):
            with self._lock:
                self._refuse_until = time.monotonic() + self.profile.cut_for
            self.cut()

    # ------------------------------------------------------------------ forwarding

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                cut_now = self._cut_arrivals > 0 or time.monotonic() < self._refuse_until
                if self._cut_arrivals > 0:
                    self._cut_arrivals -= 1
                if cut_now:
                    self.arrivals_cut += 1
            if cut_now:
                reset_socket(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, upstream))
            for src, dst, way in ((client, upstream, "up"), (upstream, client, "down")):
                pump = self._shaped if self.profile.shapes_traffic else self._direct
                threading.Thread(target=pump, args=(src, dst, way), name="fastenv-proxy-pump", daemon=True).start()

    def _received(self, data: bytes, way: str) -> None:
        with self._lock:
            self.forwarded[way] += len(data)
            if self.recorded is not None:
                self.recorded += data

    def _direct(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                self._received(data, way)
                dst.sendall(data)
        except OSError:
            pass
        _shut(src, dst)

    def _shaped(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        """Read chunks as they come; a second thread delivers each at its time."""
        line: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()
        done = [False]
        deliver = threading.Thread(target=self._deliver, args=(line, ready, done, dst, src), daemon=True)
        deliver.start()
        profile = self.profile
        last = 0.0
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                self._received(data, way)
                with self._lock:
                    extra = self._random.uniform(0.0, profile.jitter) if profile.jitter else 0.0
                last = max(last, time.monotonic() + profile.latency + extra)  # never before an earlier chunk
                with ready:
                    line.append((last, data))
                    ready.notify()
        except OSError:
            pass
        with ready:
            done[0] = True
            ready.notify()

    def _deliver(
        self,
        line: collections.deque[tuple[float, bytes]],
        ready: threading.Condition,
        done: list[bool],
        dst: socket.socket,
        src: socket.socket,
    ) -> None:
        bandwidth = self.profile.bandwidth
        free_at = 0.0  # when the capped link is free again
        try:
            while True:
                with ready:
                    while not line and not done[0]:
                        ready.wait()
                    if not line:
                        break
                    due, data = line.popleft()
                if bandwidth is not None:  # delivered once its last byte has crossed the capped link
                    free_at = max(due, free_at) + len(data) / bandwidth
                    due = free_at
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                dst.sendall(data)
        except OSError:
            pass
        _shut(src, dst)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop accepting and drop every connection (idempotent)."""
        self._closed.set()
        self._server.close()
        self.cut()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _shut(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
