"""Which route a new session's calls take, decided in one place, with the reason.

In order (``transport="auto"``):

1. **shared memory** when the server offered a segment and the client can
   map it and echo the nonce the server wrote there (same host, same
   /dev/shm). Host names are never compared.
2. **the TCP data stream** when the server offers one (no authentication)
   and it can be reached.
3. **the control connection** otherwise: a server with authentication (its
   connection is CURVE-encrypted and it offers no raw stream), a data port
   that cannot be reached, or a server that offers none.

``transport="shm"`` fails with :class:`~fastenv.errors.TransportError` where
step 1 fails; ``transport="tcp"`` skips step 1. The server learns the choice
from the ATTACH request (``{"transport": "shm" | "tcp"}``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastenv.control.address import process_alive, split_endpoint
from fastenv.control.dealer import ClientChannel
from fastenv.errors import ConnectionLost, FastEnvError, TransportError
from fastenv.protocol import Kind
from fastenv.shm.arena import Arena
from fastenv.shm.client import ShmClientPlane
from fastenv.shm.spin import advised_spin_us
from fastenv.tcp.client import TcpClientPlane
from fastenv.tcp.handshake import StreamRefused, connect_data_stream
from fastenv.transport.base import ClientTransport
from fastenv.transport.control import ControlTransport, unwrap

RETRY_PAUSE_S = (0.02, 0.5)  # first and longest pause between attempts to connect a data stream cut on the way


@dataclass
class RouteOptions:
    """What the client asked for."""

    transport: str = "auto"  # "auto", "shm" or "tcp"
    copy: bool = False
    spin_us: int | None = None
    compression: str | None = None


@dataclass
class Route:
    """The chosen route: the transport, the data plane the server was told (``"shm"`` or ``"tcp"``), and why."""

    transport: ClientTransport
    plane: str
    reason: str


def open_route(channel: ClientChannel, welcome: dict[str, Any], options: RouteOptions, timeout: float) -> Route:
    """Probe, ATTACH, and open the route of the session ``welcome`` describes (see the module docstring)."""
    deadline = time.monotonic() + timeout
    offer = welcome.get("shm")
    wanted = options.transport
    if wanted == "tcp":
        if offer:
            _attach(channel, {"transport": "tcp"}, timeout)
        return _stream_route(channel, welcome, options, deadline, "transport='tcp' was requested")
    if not offer:
        reason = "the server offers no shared memory (started with shm disabled, or /dev/shm unusable there)"
        if wanted == "shm":
            raise TransportError(f"transport='shm' was requested but {reason}")
        return _stream_route(channel, welcome, options, deadline, f"auto: {reason}")
    try:
        arena = Arena.attach(str(offer.get("name", "")))
    except TransportError as exc:
        reason = f"shared-memory probe failed ({exc}): the server is on another host or another /dev/shm"
        _attach(channel, {"transport": "tcp"}, timeout)
        if wanted == "shm":
            raise TransportError(f"transport='shm' was requested but the {reason}") from exc
        return _stream_route(channel, welcome, options, deadline, f"auto: {reason}")
    try:
        _attach(channel, {"transport": "shm", "nonce": arena.nonce}, timeout)
    except BaseException:
        arena.close()
        raise
    server_pid = welcome.get("server", {}).get("host", {}).get("pid")
    spin_us = options.spin_us if options.spin_us is not None else advised_spin_us(offer.get("client_spin_us"))
    plane = ShmClientPlane(arena, _server_alive(channel, server_pid), copy=options.copy, spin_us=spin_us)
    reason = (
        f"{'auto: ' if wanted == 'auto' else ''}the client mapped the server's segment and echoed its nonce "
        "(same host, same /dev/shm)"
    )
    return Route(plane, "shm", reason)


def _attach(channel: ClientChannel, choice: dict[str, Any], timeout: float) -> None:
    unwrap(channel.request(Kind.ATTACH, choice, timeout, what="attach"))


def _server_alive(channel: ClientChannel, server_pid: Any) -> Any:
    """Between shared-memory wait slices: raise only if the server process is gone.

    The control connection may drop and come back (ZeroMQ reconnects by
    itself) while the arena keeps working; the server's pid decides.
    """

    def check() -> None:
        try:
            channel.check_alive()
        except ConnectionLost:
            if not isinstance(server_pid, int) or not process_alive(server_pid):
                raise

    return check


def _stream_route(
    channel: ClientChannel, welcome: dict[str, Any], options: RouteOptions, deadline: float, reason: str
) -> Route:
    """The TCP data stream if the server offers one that can be reached; the control connection otherwise."""
    offer = welcome.get("tcp")
    if not offer:
        if welcome.get("server", {}).get("auth"):
            why = (
                "calls travel as frames on the CURVE-encrypted ZeroMQ connection "
                "(a server with authentication offers no raw data stream)"
            )
        else:
            why = "calls travel as frames on the ZeroMQ connection (the server offers no data stream)"
        return Route(ControlTransport(channel), "tcp", f"{reason}; {why}")
    host, _ = split_endpoint(channel.endpoint)
    port, token = int(offer["port"]), offer["token"]

    def dial(timeout: float) -> Any:
        return connect_data_stream(host, port, token, timeout)

    pause, longest = RETRY_PAUSE_S
    while True:
        try:
            sock = dial(max(0.001, deadline - time.monotonic()))
            break
        except StreamRefused as exc:
            why = f"calls travel as frames on the ZeroMQ connection ({exc})"
        except ConnectionLost as exc:  # reached, then cut on the way: try again while the handshake's time lasts
            if time.monotonic() + pause < deadline:
                time.sleep(pause)
                pause = min(pause * 2, longest)
                continue
            why = f"calls travel as frames on the ZeroMQ connection (data stream cut repeatedly: {exc})"
        except (FastEnvError, OSError) as exc:  # refused, unreachable or filtered: stay on the control connection
            why = f"calls travel as frames on the ZeroMQ connection (data stream unreachable: {exc})"
        return Route(ControlTransport(channel), "tcp", f"{reason}; {why}")
    limit = channel.max_message_bytes
    plane = TcpClientPlane(
        sock,
        channel.check_alive,
        dial=dial,
        compression=options.compression,
        **({} if limit is None else {"max_message_bytes": limit}),
    )
    return Route(plane, "tcp", f"{reason}; arrays stream in chunks on a dedicated connection to port {port}")
