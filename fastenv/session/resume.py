"""Taking a session up again after a dropped connection: RESUME, then re-open the route.

Both are bounded by the interrupted call's deadline and back off between
attempts; a server whose port refuses connections ends the attempt at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastenv.control.address import refuses_connections
from fastenv.control.dealer import ClientChannel
from fastenv.errors import ConnectionLost, FastEnvTimeout, ProtocolError, SessionLost
from fastenv.protocol import Kind
from fastenv.transport.base import ClientTransport
from fastenv.transport.control import as_reply
from fastenv.wire import error_from_body, is_session_gone

RECONNECT_BACKOFF_S = (0.02, 0.5)  # first and longest pause between attempts
RESUME_ATTEMPT_S = (0.25, 1.0)  # first and longest wait for the answer to one RESUME
REFUSAL_PROBE_S = 0.5  # how long a check that the server's port refuses connections may take


def reconnect_transport(
    transport: ClientTransport, deadline: float | None, cause: ConnectionLost, resume: Callable[[], None]
) -> None:
    """Re-open what the drop broke on the resumed session's route, until the call's deadline.

    A reconnection that fails (its own connection cut, a refused token
    after the server ended the session meanwhile) is followed by a new
    RESUME, which raises :class:`~fastenv.SessionLost` when the session is gone.
    """
    pause, longest = RECONNECT_BACKOFF_S
    while True:
        try:
            transport.reconnect(deadline)
            return
        except (ConnectionLost, FastEnvTimeout) as exc:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ConnectionLost(
                    f"{cause}; the data stream could not be reconnected within the call's timeout ({exc})"
                ) from exc
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, longest)
            resume()
        except ProtocolError as exc:  # a stream that answers something else: not this server any more
            raise ConnectionLost(f"{cause}; the data stream could not be reconnected ({exc})") from exc


def resume_session(
    channel: ClientChannel, session_id: str, token: bytes, deadline: float | None, cause: ConnectionLost
) -> None:
    """RESUME on the control channel, with backoff, until the call's deadline."""
    pause, longest = RECONNECT_BACKOFF_S
    try:
        channel.check_alive()  # take in the connection events so far
    except ConnectionLost:
        pass
    attempt_s = RESUME_ATTEMPT_S[0]
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ConnectionLost(f"{cause}; the session could not be resumed within the call's timeout") from cause
        probe_s = REFUSAL_PROBE_S if remaining is None else min(REFUSAL_PROBE_S, remaining)
        if not channel.connected and refuses_connections(channel.endpoint, probe_s):
            raise ConnectionLost(f"{cause}; the server at {channel.endpoint} is not running (connection refused)") from cause
        try:
            # A RESUME sent into a connection that is being cut is lost: ask again soon.
            attempt = attempt_s if remaining is None else min(attempt_s, max(remaining, 0.001))
            attempt_s = min(attempt_s * 2, RESUME_ATTEMPT_S[1])
            reply = channel.request(
                Kind.RESUME, {"session": session_id, "token": token}, attempt, what="resuming the session"
            )
        except (FastEnvTimeout, ConnectionLost):  # connections cut on arrival look the same: keep trying
            left = None if deadline is None else deadline - time.monotonic()
            time.sleep(pause if left is None else min(pause, max(0.0, left)))
            pause = min(pause * 2, longest)
            continue
        ok, body = as_reply(reply)
        if not ok:
            if is_session_gone(body):
                raise SessionLost(f"{cause}; {body.get('message')}") from cause
            raise error_from_body(body)
        return
