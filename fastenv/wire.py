"""The rules every route applies to a call and its errors, written once.

A call reaches the server's executor on one of three routes (the
shared-memory arena, the TCP data stream, the ZeroMQ control connection).
Each route reads the request its own way, then hands the decoded body to
:func:`parse_call`; each answers a failure with :func:`error_body`; the client
turns any error body back into a typed exception with :func:`error_from_body`.
So a malformed call, a limit, an env that raises or an unknown method gives
the same error kind, type name and message whichever route it took.

An error body is a plain dict ``{"kind", "type", "message", "traceback"}``:
``kind`` an :class:`ErrorKind` value, ``type`` the exception's qualified
class name (builtins unqualified). Nothing in it is ever executed or looked
up by the client beyond the fixed set of fastenv errors below.
"""

from __future__ import annotations

import enum
from typing import Any

from fastenv.errors import (
    AutoresetModeError,
    ControlDenied,
    EncodeError,
    FastEnvError,
    FrameTooLarge,
    LeaseHeld,
    LimitExceeded,
    NestingTooDeep,
    PlaybackDivergence,
    PlaybackError,
    ProtocolError,
    RecordingExhausted,
    ServerBusy,
    SessionLost,
    TooManyPending,
    TrustedModeError,
    UnknownMethodError,
    make_remote_env_error,
)


class ErrorKind(str, enum.Enum):
    """What went wrong with a request, as the ``kind`` of an error body. Part of the wire format."""

    PROTOCOL = "protocol"  # the request itself is malformed
    LIMIT = "limit"  # the request breaks one of the server's limits
    REMOTE = "remote"  # the env raised: the body carries its traceback
    UNKNOWN_METHOD = "unknown_method"  # no such public method or attribute
    CONTROL = "control"  # an observer, or another client holds the lease
    SESSION_LOST = "session_lost"  # RESUME of a session the server does not hold
    NO_SESSION = "no_session"  # a request on a connection the server knows no session of
    ENCODE = "encode"  # the result cannot be sent
    TRUSTED = "trusted"  # trusted mode refused
    INTERNAL = "internal"  # a bug on the server's side


SESSION_GONE = frozenset({ErrorKind.SESSION_LOST.value, ErrorKind.NO_SESSION.value})

_LIMIT_ERRORS: dict[str, type[LimitExceeded]] = {
    cls.__name__: cls for cls in (FrameTooLarge, NestingTooDeep, ServerBusy, TooManyPending)
}
_CONTROL_ERRORS: dict[str, type[ControlDenied]] = {cls.__name__: cls for cls in (LeaseHeld, AutoresetModeError)}
# What a served recording raises in place of the env (fastenv.recording.playback), by the type name the body carries.
_PLAYBACK_ERRORS: dict[str, type[PlaybackError]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls for cls in (RecordingExhausted, PlaybackDivergence)
}


def type_name(exc: BaseException) -> str:
    """``exc``'s class as an error body names it: qualified, except for builtins."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def error_body(kind: ErrorKind, exc: BaseException, traceback_text: str = "") -> dict[str, str]:
    """The body of an ERROR reply for ``exc``.

    A request refused as malformed (:attr:`ErrorKind.PROTOCOL`) because it
    breaks a limit is :attr:`ErrorKind.LIMIT`, and because trusted mode is
    off :attr:`ErrorKind.TRUSTED`, on every route.
    """
    if kind is ErrorKind.PROTOCOL:
        if isinstance(exc, LimitExceeded):
            kind = ErrorKind.LIMIT
        elif isinstance(exc, TrustedModeError):
            kind = ErrorKind.TRUSTED
    return {"kind": kind.value, "type": type_name(exc), "message": str(exc), "traceback": traceback_text}


def parse_call(body: Any) -> tuple[str, tuple, dict]:
    """``(name, args, kwargs)`` of a decoded CALL body; :class:`ProtocolError` when it is not one."""
    if not (isinstance(body, tuple) and len(body) == 3):
        raise ProtocolError("CALL body must be (name, args, kwargs)")
    name, args, kwargs = body
    if not isinstance(name, str) or not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise ProtocolError("CALL body must be (str, tuple, dict)")
    if kwargs and not all(isinstance(key, str) for key in kwargs):
        raise ProtocolError("keyword argument names must be strings")
    return name, args if args.__class__ is tuple else tuple(args), kwargs


def is_session_gone(body: Any) -> bool:
    """Whether an error body says the server holds no session for this client."""
    return isinstance(body, dict) and body.get("kind") in SESSION_GONE


def error_from_body(body: Any, what: str = "the call") -> FastEnvError:
    """The typed error an ERROR reply's body stands for (never anything the peer names but these).

    ``what`` names the call in the errors that need it (``step()``).
    """
    if not isinstance(body, dict):
        return ProtocolError(f"malformed error reply: {body!r:.200}")
    kind = body.get("kind")
    name = str(body.get("type", "Exception"))
    message = str(body.get("message", ""))
    limit_error = _LIMIT_ERRORS.get(name.rsplit(".", 1)[-1]) if kind in ("limit", "protocol") else None
    if limit_error is not None:
        return limit_error(f"server refused the request: {message}")
    if kind == ErrorKind.LIMIT.value:
        return LimitExceeded(f"server refused the request: {message}")
    if kind == ErrorKind.TRUSTED.value:
        return TrustedModeError(message)
    if kind == ErrorKind.REMOTE.value:
        playback_error = _PLAYBACK_ERRORS.get(name)
        if playback_error is not None:
            return playback_error(message)
        return make_remote_env_error(name, message, str(body.get("traceback", "")))
    if kind == ErrorKind.UNKNOWN_METHOD.value:
        return UnknownMethodError(message)
    if kind == ErrorKind.CONTROL.value:
        return _CONTROL_ERRORS.get(name.rsplit(".", 1)[-1], ControlDenied)(message)
    if kind in SESSION_GONE:
        return SessionLost(message)
    if kind == ErrorKind.ENCODE.value:
        return EncodeError(f"the server could not send the result of {what}: {message}")
    return ProtocolError(f"server rejected the request ({kind}): {message}")


__all__ = ["ErrorKind", "error_body", "error_from_body", "is_session_gone", "parse_call", "type_name"]
