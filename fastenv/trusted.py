"""Trusted mode: an authenticated client ships an env factory (cloudpickle) to the server.

This is the one place where fastenv unpickles code a peer sent, so it is
behind two locks, both checked before a byte of the payload is read:

1. the server was started with ``--allow-trusted`` (``EnvServer(allow_trusted=True)``),
   which it refuses without ``--auth``;
2. the HELLO carrying the factory came on a CURVE connection that the server's
   ZAP handler authenticated (the message's ``User-Id`` is a client key the
   server authorized).

Anything else gets a :class:`~fastenv.errors.TrustedModeError` and the
payload stays an opaque ``bytes`` value that nobody loads. A client never
ships a factory over an unauthenticated connection in the first place.

Whoever holds an authorized client key can then run any code on the server
host, as the server's user: give keys to a trusted-mode server only to people
you would give a shell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastenv.errors import ProtocolError, TrustedModeError

log = logging.getLogger("fastenv.trusted")

NOT_ALLOWED = "this server does not allow trusted mode (start it with `fastenv serve --allow-trusted --auth DIR`)"
NOT_AUTHENTICATED = "trusted mode needs an authenticated connection (a server and client using --auth / auth=)"


def pack_factory(factory: Callable[[], Any]) -> bytes:
    """Cloudpickle ``factory`` (a zero-argument callable) for :func:`load_factory` on the server."""
    if not callable(factory):
        raise TypeError(f"an env factory must be callable, got {type(factory).__name__}")
    import cloudpickle

    return cloudpickle.dumps(factory)


def load_factory(payload: Any, *, allowed: bool, user_id: str | None) -> Callable[[], Any]:
    """Unpickle a shipped factory, only if trusted mode is on and ``user_id`` is authenticated.

    Raises :class:`~fastenv.errors.TrustedModeError` (nothing loaded) otherwise,
    :class:`~fastenv.errors.ProtocolError` for a payload that is not bytes.
    Errors raised while loading (a module missing on the server, ...)
    propagate: they become a remote error for that client.
    """
    if not allowed:
        raise TrustedModeError(NOT_ALLOWED)
    if not user_id:
        raise TrustedModeError(NOT_AUTHENTICATED)
    if type(payload) is not bytes:
        raise ProtocolError("a shipped env factory must be bytes (cloudpickle.dumps of a callable)")
    import cloudpickle

    log.warning("loading an env factory shipped by client key %s (trusted mode)", user_id)
    factory = cloudpickle.loads(payload)
    if not callable(factory):
        raise TypeError(f"the shipped env factory is a {type(factory).__name__}, not a callable")
    return factory


__all__ = ["NOT_ALLOWED", "NOT_AUTHENTICATED", "load_factory", "pack_factory"]
