"""fastenv: serve a simulation environment on one host, drive it from another.

The client, :class:`FastRemoteEnv`, behaves like the served env: the same
``reset`` / ``step`` / ``get_state`` calls, the same return values. The server,
:class:`EnvServer` (or ``fastenv serve TARGET``), owns the env.

Quick start::

    $ fastenv serve CartPole-v1
    fastenv: ready tcp://127.0.0.1:40123

    >>> import fastenv
    >>> env = fastenv.connect("127.0.0.1:40123")
    >>> obs, info = env.reset(seed=0)
"""

from fastenv import gym_envs as _gym_envs  # noqa: F401  (registers the fastenv/... Gymnasium ids, lazily)
from fastenv._version import __version__
from fastenv.client import FastRemoteEnv, connect
from fastenv.codec import Limits, decode, encode, register_dataclass, register_type
from fastenv.control.auth import AuthConfig
from fastenv.errors import (
    AddressInUse,
    AlreadyPendingError,
    AuthenticationError,
    AuthenticationRequired,
    AutoresetModeError,
    ClientClosedError,
    ClientKeyRefused,
    ConnectionLost,
    ControlDenied,
    DecodeError,
    EncodeError,
    FastEnvError,
    FastEnvTimeout,
    FrameTooLarge,
    HostKeyError,
    IncompatibleEnvsError,
    KeyFileError,
    LaunchError,
    LaunchTimeout,
    LeaseHeld,
    LimitExceeded,
    MissingDependency,
    NestingTooDeep,
    NoPendingCallError,
    PoolNotReadyError,
    PoolUsageError,
    EnvInFlightError,
    PlaybackDivergence,
    PlaybackError,
    ProtocolError,
    ProtocolVersionError,
    RecordingExhausted,
    RemoteEnvError,
    ServerBusy,
    ServerConfigError,
    ServerKeyMismatch,
    SessionLost,
    SSHConnectError,
    TargetError,
    TooManyPending,
    TorchRequired,
    TransportError,
    TrustedModeError,
    UnknownMethodError,
)
from fastenv.loans import reply_array
from fastenv.server import EnvServer
from fastenv.session.deadline import DeadlineReport, Fallback
from fastenv.session.state import ClientState

__all__ = [
    "AddressInUse",
    "AlreadyPendingError",
    "AuthConfig",
    "AuthenticationError",
    "AuthenticationRequired",
    "AutoresetModeError",
    "ClientKeyRefused",
    "ClientState",
    "KeyFileError",
    "LimitExceeded",
    "Limits",
    "NestingTooDeep",
    "ServerBusy",
    "ServerKeyMismatch",
    "TooManyPending",
    "TorchRequired",
    "TrustedModeError",
    "ClientClosedError",
    "ConnectionLost",
    "ControlDenied",
    "DeadlineReport",
    "DecodeError",
    "EncodeError",
    "EnvServer",
    "FastEnvError",
    "FastEnvTimeout",
    "FastRemoteEnv",
    "Fallback",
    "FrameTooLarge",
    "IncompatibleEnvsError",
    "HostKeyError",
    "LaunchError",
    "LaunchTimeout",
    "LeaseHeld",
    "MissingDependency",
    "NoPendingCallError",
    "PoolNotReadyError",
    "PoolUsageError",
    "EnvInFlightError",
    "PlaybackDivergence",
    "PlaybackError",
    "ProtocolError",
    "ProtocolVersionError",
    "RecordingExhausted",
    "RemoteEnvError",
    "SSHConnectError",
    "ServerConfigError",
    "SessionLost",
    "TargetError",
    "TransportError",
    "UnknownMethodError",
    "__version__",
    "connect",
    "decode",
    "encode",
    "register_dataclass",
    "register_type",
    "reply_array",
]


_LAZY = {"FastBatchedVectorEnv": "fastenv.vector", "FastVectorEnv": "fastenv.vector", "VectorHost": "fastenv.vector"}


def __getattr__(name: str) -> object:
    """Import the Gymnasium-backed names on first use (``fastenv.FastVectorEnv``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastenv' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
