"""The ZeroMQ control channel: a DEALER on the client, a ROUTER on the server.

Every message carries a request id, so requests can be pipelined and late
replies (to a request that already timed out) are recognised and dropped.
ZeroMQ's own heartbeats detect a dead peer; a socket monitor turns the loss of
the connection into :class:`~fastenv.errors.ConnectionLost` while a call is
pending instead of a wait for the full timeout.

With keys (:mod:`fastenv.control.auth`) both ends speak CURVE: the server's
:class:`~fastenv.control.zap.ZapHandler` admits only authorized client keys,
and the client pins the server's key. The server takes in messages per client
and serves them in turn (:mod:`fastenv.control.inbox`).
"""

from fastenv.control.address import host_identity, normalize_address
from fastenv.control.auth import AuthConfig
from fastenv.control.dealer import ClientChannel
from fastenv.control.router import ServerSocket

__all__ = ["AuthConfig", "ClientChannel", "ServerSocket", "host_identity", "normalize_address"]
