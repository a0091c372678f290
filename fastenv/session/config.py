"""What a server was configured with, as its session layer reads it."""

from __future__ import annotations

from dataclasses import dataclass

from fastenv import codec
from fastenv.errors import ServerConfigError
from fastenv.shm.arena import ArenaShape

MODES = ("shared", "per-client")
ATTACH_GRACE_S = 10.0  # a session that leaves its shared-memory offer unanswered is ended after this long
DEFAULT_MAX_SESSIONS = 256
DEFAULT_MAX_PENDING = 64


@dataclass(frozen=True)
class ServerConfig:
    """The settings of :class:`fastenv.EnvServer` (see its docstring for each)."""

    mode: str
    limits: codec.Limits
    max_message_bytes: int
    max_sessions: int
    max_pending: int
    attach_grace: float
    heartbeat_interval: float
    shm: bool
    arena_shape: ArenaShape
    shm_spin_us: int
    authenticated: bool
    allow_trusted: bool


def check_settings(
    mode: str,
    has_factory: bool,
    heartbeat_interval: float,
    max_sessions: int,
    max_pending: int,
    attach_grace: float,
    shm_slots: int,
) -> None:
    """Raise :class:`~fastenv.errors.ServerConfigError` for a setting out of range."""
    if heartbeat_interval <= 0:
        raise ServerConfigError("heartbeat_interval must be positive")
    if mode not in MODES:
        raise ServerConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "per-client" and not has_factory:
        raise ServerConfigError("per-client mode needs a factory (each client gets its own env)")
    if max_sessions < 1 or max_pending < 1:
        raise ServerConfigError("max_sessions and max_pending must be at least 1")
    if attach_grace <= 0:
        raise ServerConfigError("attach_grace must be positive")
    if shm_slots < 2:
        raise ServerConfigError("shm_slots must be at least 2")
