"""Addresses, host identity and process liveness."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

import psutil

from fastenv.errors import ServerConfigError


def normalize_address(address: str) -> str:
    """Accept ``tcp://host:port``, ``host:port`` or ``:port`` and return a ZeroMQ endpoint."""
    address = address.strip()
    if "://" in address:
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"invalid fastenv address {address!r}: expected host:port or tcp://host:port")
    return f"tcp://{host or '127.0.0.1'}:{port}"


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``(host, port)`` of ``tcp://host:port`` (IPv6 brackets removed), for plain sockets."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), int(port)


def refuses_connections(endpoint: str, timeout: float) -> bool:
    """Whether the host of ``tcp://host:port`` answers a connection to that port with a refusal.

    A refusal (TCP reset) is the host saying that nothing listens there: the
    server process is gone. Anything else (accepted, no answer, unreachable
    network) proves nothing and returns False.
    """
    host, port = split_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=max(0.001, timeout)):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, *, insecure: bool, authenticated: bool = False) -> None:
    """Refuse a non-loopback bind without authentication, unless ``insecure`` was asked for explicitly."""
    if is_loopback(host) or insecure or authenticated:
        return
    raise ServerConfigError(
        f"refusing to bind {host}: that would expose the env server to the network "
        "without authentication. Serve with --auth DIR (keys from `fastenv keygen DIR`), "
        "bind 127.0.0.1 and reach it through an SSH tunnel (fastenv launch), or pass "
        "--insecure (insecure=True) if you accept that anyone who can reach the port can drive the env"
    )


def host_identity() -> dict[str, str | int]:
    """Who we are: hostname, kernel boot id (same machine ⇔ same boot id) and pid."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot_id = handle.read().strip()
    except OSError:
        boot_id = ""
    return {"hostname": socket.gethostname(), "boot_id": boot_id, "pid": os.getpid()}


def process_alive(pid: Any) -> bool:
    """Whether process ``pid`` on this host is running (a zombie is not); an unknown pid counts as alive."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
