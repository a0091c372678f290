"""What a server was configured with, as its session layer reads it."""

from __future__ import annotations

from dataclasses import dataclass

from fastenv import codec
from fastenv.shm.arena import ArenaShape


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
