"""The one exception family fastenv raises.

Everything fastenv raises derives from :class:`FastEnvError`. Errors from the
OS, ZeroMQ or the decoder are translated at the edge (see
:func:`translate_zmq_errors`), so callers never see a bare ``zmq.ZMQError`` or
``RuntimeError`` from deep inside.

Hierarchy::

    FastEnvError
    ├── FastEnvTimeout            (also TimeoutError)
    ├── TransportError            (also ConnectionError)
    │   ├── ConnectionLost
    │   │   └── SessionLost
    │   └── AddressInUse
    ├── ProtocolError
    │   ├── ProtocolVersionError
    │   ├── DecodeError
    │   │   └── NestingTooDeep    (also LimitExceeded)
    │   ├── EncodeError           (also TypeError)
    │   └── FrameTooLarge         (also LimitExceeded)
    ├── LimitExceeded             (a configured server limit; the session goes on)
    │   ├── ServerBusy            (max_sessions reached)
    │   └── TooManyPending        (max_pending requests of one client)
    ├── AuthenticationError       (also PermissionError)
    │   ├── AuthenticationRequired  (the server needs keys; the client gave none)
    │   ├── ClientKeyRefused        (the server does not authorize this client's key)
    │   └── ServerKeyMismatch       (the server could not prove it holds the pinned key)
    ├── KeyFileError              (also ValueError; a key file is missing or malformed)
    ├── TrustedModeError          (shipping an env factory was refused)
    ├── RemoteEnvError            (carries the remote type, message, traceback)
    ├── UnknownMethodError        (also AttributeError)
    ├── ClientClosedError
    ├── ControlDenied
    │   ├── LeaseHeld
    │   └── AutoresetModeError    (also IncompatibleEnvsError; a shared server's declared mode)
    ├── AlreadyPendingError       (step_async while a call is still pending)
    ├── NoPendingCallError        (step_wait without step_async)
    ├── PoolUsageError            (also ValueError; FastVectorEnv send / recv misused)
    │   ├── EnvInFlightError      (send for an env that recv has not returned yet)
    │   └── PoolNotReadyError     (also NoPendingCallError; recv with fewer envs in flight than it returns)
    ├── IncompatibleEnvsError     (also ValueError; servers of one FastVectorEnv differ)
    ├── PlaybackError             (a served recording cannot answer a call: fastenv replay --serve)
    │   ├── RecordingExhausted    (no recorded call of that method is left)
    │   └── PlaybackDivergence    (--strict: the call's arguments differ from the recorded ones)
    ├── ServerConfigError
    ├── TargetError
    ├── MissingDependency         (also ImportError)
    └── LaunchError               (starting a server over SSH failed)
        ├── SSHConnectError       (also ConnectionError)
        │   └── HostKeyError
        └── LaunchTimeout         (also FastEnvTimeout)
"""

from __future__ import annotations

import builtins
import contextlib
import errno
from collections.abc import Iterator

import zmq


class FastEnvError(Exception):
    """Base class of every error fastenv raises."""


class FastEnvTimeout(FastEnvError, TimeoutError):
    """A call did not complete within its timeout."""


class TransportError(FastEnvError, ConnectionError):
    """The connection to the peer failed or was lost."""


class ConnectionLost(TransportError):
    """The peer went away (process killed, network gone) while a call was pending."""


class SessionLost(ConnectionLost):
    """The server no longer holds this client's session (it restarted, or reaped the session).

    Attributes:
        recreated: True when the client was asked to re-create lost sessions
            (``on_session_lost="recreate"``) and did: the client works again,
            on a fresh session whose env was reset.
        reset_result: what that reset returned (None when not recreated).
    """

    def __init__(self, message: str, *, recreated: bool = False, reset_result: object = None) -> None:
        super().__init__(message)
        self.recreated = recreated
        self.reset_result = reset_result


class AddressInUse(TransportError):
    """The server could not bind because the address is already taken."""


class ProtocolError(FastEnvError):
    """A peer sent something that is not a valid fastenv message."""


class ProtocolVersionError(ProtocolError):
    """Client and server speak different protocol versions."""

    def __init__(self, client_version: int, server_version: int, detail: str = "") -> None:
        self.client_version = client_version
        self.server_version = server_version
        message = (
            f"protocol version mismatch: client speaks v{client_version}, "
            f"server speaks v{server_version}"
        )
        if detail:
            message += f" ({detail})"
        message += "; install the same fastenv version on both sides"
        super().__init__(message)


class DecodeError(ProtocolError):
    """A payload could not be decoded, or was refused because it is not plain data."""


class EncodeError(ProtocolError, TypeError):
    """A value cannot be sent: its type is not supported by the codec."""


class TorchRequired(DecodeError):
    """A torch tensor arrived where torch is not installed.

    Install ``fastenv[torch]``, or open the client with ``tensors="numpy"``
    (the server then sends tensors as numpy arrays).
    """


class LimitExceeded(FastEnvError):
    """A request broke one of the server's configured limits.

    Only the offending request (or handshake) is refused: the client's
    session, and every other client, go on as before.
    """


class FrameTooLarge(ProtocolError, LimitExceeded):
    """A frame or array exceeds the configured size limit (bytes or element count)."""


class NestingTooDeep(DecodeError, LimitExceeded):
    """A payload nests containers deeper than the configured ``max_depth``."""


class ServerBusy(LimitExceeded):
    """The server already holds ``max_sessions`` sessions; try again after some close."""


class TooManyPending(LimitExceeded):
    """This client has ``max_pending`` requests waiting on the server already."""


class AuthenticationError(FastEnvError, PermissionError):
    """The CURVE handshake with the server failed; the subclass says which side refused."""


class AuthenticationRequired(AuthenticationError):
    """The server requires authentication, and this client connected without keys (``auth=``)."""


class ClientKeyRefused(AuthenticationError):
    """The server refused this client's key: it is not among the server's authorized clients."""


class ServerKeyMismatch(AuthenticationError):
    """The server did not prove it holds the pinned server key (wrong key, or a server without auth)."""


class KeyFileError(FastEnvError, ValueError):
    """A CURVE key file or key directory is missing, unreadable or malformed."""


class TrustedModeError(FastEnvError):
    """Shipping an env factory (trusted mode) was refused: the server does not allow it,
    or the connection is not authenticated."""


class RemoteEnvError(FastEnvError):
    """The served environment raised an exception.

    Attributes:
        remote_type: qualified name of the exception type on the server.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: formatted traceback from the server.

    When the remote type is a builtin exception (``ValueError``, ``KeyError``,
    ...), the raised object is also an instance of that builtin, so
    ``except ValueError`` works on the client just as it would locally.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        super().__init__(f"{remote_type}: {remote_message}")

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self):  # keep picklable despite the custom __init__
        return (make_remote_env_error, (self.remote_type, self.remote_message, self.remote_traceback))


class UnknownMethodError(FastEnvError, AttributeError):
    """The env has no public method or attribute of that name."""


class ClientClosedError(FastEnvError):
    """The client was used after ``close()``."""


class ControlDenied(FastEnvError):
    """This client may not change the env: it is an observer, or another client holds the control lease."""


class LeaseHeld(ControlDenied):
    """Another client holds the control lease of the shared env."""


class ServerConfigError(FastEnvError, ValueError):
    """The server was configured in a way it refuses (for example an unsafe bind)."""


class TargetError(FastEnvError, ValueError):
    """A ``fastenv serve`` target could not be resolved to an env or factory."""


class MissingDependency(FastEnvError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class LaunchError(FastEnvError):
    """Starting a server on another host over SSH failed (``fastenv.launch``).

    Attributes:
        output: the last lines the remote side printed (stdout and stderr), also
            at the end of the message.
        exit_status: the remote command's exit status, when it exited.
    """

    def __init__(self, message: str, *, output: str = "", exit_status: int | None = None) -> None:
        super().__init__(message)
        self.output = output
        self.exit_status = exit_status


class SSHConnectError(LaunchError, ConnectionError):
    """The SSH connection could not be opened or authenticated."""


class HostKeyError(SSHConnectError):
    """The SSH host is not in known_hosts (and was not accepted), or its key changed."""


class LaunchTimeout(LaunchError, FastEnvTimeout):
    """Connecting over SSH, or the remote server getting ready, took longer than allowed."""


class AlreadyPendingError(FastEnvError):
    """An asynchronous call (``step_async``) is still waiting for its ``step_wait``."""


class NoPendingCallError(FastEnvError):
    """``step_wait`` was called without a pending ``step_async``."""


class PoolUsageError(FastEnvError, ValueError):
    """The async pool of a :class:`~fastenv.FastVectorEnv` (``send`` / ``recv``) was used wrongly.

    Raised for env ids out of range or repeated, an action count that does not
    match the env ids, and the pool used while it is off or busy.
    """


class EnvInFlightError(PoolUsageError):
    """``send`` named an env that is still in flight (sent, and not yet returned by ``recv``)."""


class PoolNotReadyError(PoolUsageError, NoPendingCallError):
    """``recv`` was called with fewer envs in flight than the ``batch_size`` it returns."""


class IncompatibleEnvsError(FastEnvError, ValueError):
    """Servers combined into one vector env do not serve compatible envs (different spaces)."""


class AutoresetModeError(ControlDenied, IncompatibleEnvsError):
    """A client asked a shared server for another autoreset mode than the one it declares.

    ``fastenv serve TARGET --num-envs N --autoreset MODE`` fixes the mode for
    every client of a shared vector env; connect without ``autoreset_mode=``
    (or with the declared one), or serve it ``--mode per-client``, where the
    declared mode is only each client's default.
    """


class PlaybackError(FastEnvError):
    """A served recording (``fastenv replay PATH --serve``) cannot answer a call as it was recorded.

    The server goes on serving: other calls, and other clients, are answered.
    """


class RecordingExhausted(PlaybackError):
    """The recorded session made no more calls of this method: the recording ran out."""


class PlaybackDivergence(PlaybackError):
    """A call's arguments differ from the recorded call's (a recording served with ``--strict``).

    The recorded call is not used up: the same call with the recorded
    arguments is answered next.
    """


_REMOTE_ERROR_CLASSES: dict[str, type[RemoteEnvError]] = {}


def make_remote_env_error(remote_type: str, message: str, traceback_text: str = "") -> RemoteEnvError:
    """Build a :class:`RemoteEnvError` that also subclasses a matching builtin exception.

    Only builtin exception types are mirrored (looked up by name in
    :mod:`builtins`); nothing from the peer is imported or executed.
    """
    base = getattr(builtins, remote_type, None)
    mirror_ok = (
        isinstance(base, type)
        and issubclass(base, Exception)
        and not issubclass(base, OSError)  # OSError's layout does not mix with others
        and base is not Exception
    )
    if not mirror_ok:
        return RemoteEnvError(remote_type, message, traceback_text)
    cls = _REMOTE_ERROR_CLASSES.get(remote_type)
    if cls is None:
        cls = type(f"Remote{remote_type}", (RemoteEnvError, base), {"__module__": __name__})
        _REMOTE_ERROR_CLASSES[remote_type] = cls
    return cls(remote_type, message, traceback_text)


@contextlib.contextmanager
def translate_zmq_errors(endpoint: str) -> Iterator[None]:
    """Translate ZeroMQ errors raised inside the block into fastenv errors naming ``endpoint``."""
    try:
        yield
    except zmq.Again as exc:
        raise FastEnvTimeout(f"{endpoint}: operation timed out") from exc
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(f"{endpoint}: address already in use") from exc
        if exc.errno == zmq.ETERM:
            raise ClientClosedError(f"{endpoint}: context was terminated") from exc
        raise TransportError(f"{endpoint}: {exc.strerror}") from exc
