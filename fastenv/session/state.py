"""The states a session goes through, on each side."""

from __future__ import annotations

import enum


class ClientState(enum.Enum):
    """Where a client's session stands (:attr:`fastenv.FastRemoteEnv.state`).

    ``IDLE``: ready for a call. ``PENDING``: a call was sent with
    ``send_call`` / ``step_async`` and its result not yet collected.
    ``LOST``: the server no longer holds the session; every call raises
    :class:`~fastenv.SessionLost` (with ``on_session_lost="recreate"``, the
    next call tries to open a new one first). ``CLOSED``: :meth:`close` was called.
    """

    IDLE = "idle"
    PENDING = "pending"
    LOST = "lost"
    CLOSED = "closed"


class SessionState(enum.Enum):
    """Where a session stands on the server.

    ``OFFERED``: shared memory was offered at HELLO and the client has not
    answered (ATTACH) yet; ended after ``attach_grace``. ``ACTIVE``: calls
    may come, on the session's route. ``ENDED``: closed; nothing of it is
    held any more.
    """

    OFFERED = "offered"
    ACTIVE = "active"
    ENDED = "ended"
