"""Server side of the control channel (ZeroMQ ROUTER)."""

from __future__ import annotations

import errno
from typing import Any

import psutil
import zmq
from zmq.utils.monitor import parse_monitor_message

from fastenv import protocol
from fastenv.control.auth import AuthConfig, refuse_unversioned_peers
from fastenv.control.dealer import HEARTBEAT_INTERVAL_S, heartbeat_options
from fastenv.errors import AddressInUse, TransportError

HANDSHAKE_TIMEOUT_S = 10.0  # a connection that has not completed its handshake by then is dropped


def _port_holder(port: int) -> str:
    """Describe the process listening on ``port``, if we are allowed to see it."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f" (held by pid {conn.pid}: {' '.join(proc.cmdline())[:200]})"
    except (psutil.Error, OSError):
        pass
    return ""


class ServerSocket:
    """A bound ROUTER socket: receives ``[identity, *frames]`` and replies to an identity.

    Args:
        host: interface to bind.
        port: TCP port; 0 picks a free one.
        max_message_bytes: ZeroMQ drops a peer that sends a larger frame.
        heartbeat_interval: seconds between ZMTP heartbeats; a peer silent for
            two intervals is disconnected (and then fails :meth:`probe`).
        auth: CURVE keys; the socket then accepts only authenticated,
            encrypted connections (the context needs a
            :class:`~fastenv.control.zap.ZapHandler`, or every client is refused).
        handshake_timeout: seconds a new connection may take to complete its
            ZMTP (and CURVE) handshake before it is dropped.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_message_bytes: int,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        auth: AuthConfig | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        context: zmq.Context | None = None,
    ) -> None:
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.HANDSHAKE_IVL, max(1, int(handshake_timeout * 1000)))
        refuse_unversioned_peers(self.socket)
        if auth is not None:
            auth.configure_server(self.socket)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished peer fails: see probe()
        for option, value in heartbeat_options(heartbeat_interval).items():
            self.socket.setsockopt(option, value)
        if ":" in host and not host.startswith("["):
            self.socket.setsockopt(zmq.IPV6, 1)
            host = f"[{host}]"
        endpoint = f"tcp://{host}:{port if port else '*'}"
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close(linger=0)
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(
                    f"port {port} on {host} is already in use{_port_holder(port)}; "
                    f"pick another port (--port 0 chooses a free one) or find the holder with "
                    f"`ss -ltnp 'sport = :{port}'`"
                ) from exc
            raise TransportError(f"cannot bind {endpoint}: {exc.strerror}") from exc
        self.address: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._disconnections = 0
        self._closed = False

    def recv(self) -> list[Any] | None:
        """One pending message as ``[identity, *frames]``, or None if nothing is waiting."""
        try:
            return self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None

    def send(self, identity: bytes, frames: list[Any]) -> bool:
        """Reply to ``identity`` without blocking; False if the peer is gone or not reading."""
        try:
            self.socket.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError:
            return False

    def probe(self, identity: bytes) -> bool:
        """Whether ``identity`` is still connected (a full queue counts as connected).

        Sends a PONG with request id 0, which clients ignore.
        """
        try:
            self.socket.send_multipart([identity, *protocol.pack(protocol.Kind.PONG, 0, None)], zmq.NOBLOCK)
            return True
        except zmq.Again:
            return True
        except zmq.ZMQError as exc:
            return exc.errno != errno.EHOSTUNREACH

    def disconnections(self) -> int:
        """How many connections (handshaken or not) have closed so far."""
        while True:
            try:
                raw = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return self._disconnections
            if parse_monitor_message(raw)["event"] == zmq.EVENT_DISCONNECTED:
                self._disconnections += 1

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self.socket.close(linger=0)
