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

from fastenv._version import __version__
from fastenv.client import FastRemoteEnv, connect
from fastenv.codec import decode, encode, register_type
from fastenv.errors import (
    AddressInUse,
    ClientClosedError,
    ConnectionLost,
    DecodeError,
    EncodeError,
    FastEnvError,
    FastEnvTimeout,
    FrameTooLarge,
    MissingDependency,
    ProtocolError,
    ProtocolVersionError,
    RemoteEnvError,
    ServerConfigError,
    TargetError,
    TransportError,
    UnknownMethodError,
)
from fastenv.server import EnvServer

__all__ = [
    "AddressInUse",
    "ClientClosedError",
    "ConnectionLost",
    "DecodeError",
    "EncodeError",
    "EnvServer",
    "FastEnvError",
    "FastEnvTimeout",
    "FastRemoteEnv",
    "FrameTooLarge",
    "MissingDependency",
    "ProtocolError",
    "ProtocolVersionError",
    "RemoteEnvError",
    "ServerConfigError",
    "TargetError",
    "TransportError",
    "UnknownMethodError",
    "__version__",
    "connect",
    "decode",
    "encode",
    "register_type",
]
