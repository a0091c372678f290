"""The errors of :mod:`fastenv.ray`, in fastenv's :class:`~fastenv.FastEnvError` family."""

from __future__ import annotations

from fastenv.errors import ConnectionLost, FastEnvError, FastEnvTimeout


class PlacementError(FastEnvError):
    """The servers could not be placed: the placement group or an actor did not come up."""


class PlacementTimeout(PlacementError, FastEnvTimeout):
    """The placement group or a server actor was not ready within the timeout (not enough resources?)."""


class ServerGone(ConnectionLost):
    """A server actor is dead for good (Ray will not restart it: ``max_restarts`` used up, or it was killed)."""


__all__ = ["PlacementError", "PlacementTimeout", "ServerGone"]
