"""fastenv's TCP data plane: a chunked numpy buffer stream beside the control channel.

Used when client and server are on different hosts (or ``transport="tcp"``):
each session gets one raw TCP connection on which calls and replies travel as
small framed headers followed by the arrays' raw bytes, sent scatter-gather
from the arrays and received with ``recv_into`` into owned arrays, in bounded
chunks (see :mod:`fastenv.tcp.framing` for the wire format and
:mod:`fastenv.tcp.plane` for the client plane, the server worker and the
listener).
"""

from fastenv.tcp.framing import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CODEC,
    DEFAULT_MAX_MESSAGE_BYTES,
    MessageRejected,
    MessageStream,
    MissingDependency,
)
from fastenv.tcp.plane import (
    TcpClientPlane,
    TcpDataListener,
    TcpServerWorker,
    connect_data_stream,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CODEC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MessageRejected",
    "MessageStream",
    "MissingDependency",
    "TcpClientPlane",
    "TcpDataListener",
    "TcpServerWorker",
    "connect_data_stream",
]
