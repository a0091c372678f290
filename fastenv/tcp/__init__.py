"""fastenv's TCP data plane: calls and replies on a raw TCP stream beside the control channel.

Used when client and server are on different hosts (or ``transport="tcp"``).

The client opens one extra TCP connection per session with
:func:`~fastenv.tcp.handshake.connect_data_stream`, which sends a preamble (:data:`HELLO` + the
session token) and waits for the server's one-byte acknowledgement. The
server's :class:`~fastenv.tcp.listener.TcpDataListener` reads preambles without blocking on any one
connection and hands each socket to ``on_connection(token, sock)``, which binds
it to its session (a :class:`~fastenv.tcp.worker.TcpServerWorker`, held across
reconnections by :class:`~fastenv.tcp.session.TcpServerStream`).

Then, one call at a time: the client sends a CALL (the codec's skeleton and
raw array buffers, see :mod:`fastenv.tcp.framing`), the worker executes it and
answers RESULT or ERROR with the same sequence number; arrays land in buffers
nobody else references through ``recv_into`` (fresh, or recycled once every
array built on them is gone, see :mod:`fastenv.tcp.pool`), so the client owns
them: writable, and never overwritten while it holds them. From the second
call of a kind on, calls and replies travel as compiled layouts
(:mod:`fastenv.tcp.layouts`).

Bounded memory and backpressure: neither side queues anything. The worker
reads the next request only after the previous reply went out, and sends
with blocking writes: when the client stops reading, the kernel's socket
buffers fill and the worker blocks, up to ``io_timeout`` of no progress, then
aborts the connection. So each side holds at most the message it is sending
plus the one it is receiving (their arrays, and compressed copies when
compression is on) and a 64 KiB staging buffer, however many steps run.

Security: the session token is the stream's only credential and the stream
is not encrypted, so a server started with authentication (CURVE keys) does
not open this listener at all: its clients' calls travel on the encrypted
control connection instead (see :mod:`fastenv.server`).

Failures: every wait is sliced (:data:`~fastenv.tcp.socketio.WAIT_SLICE_S`) so
the client's ``alive()`` check and the worker's stop flag are seen within
~50 ms; a call that times out, or any error in the middle of a message,
aborts the stream, and later calls on it raise
:class:`~fastenv.errors.ConnectionLost` at once. The client then resumes its
session on the control connection and connects a new stream
(:meth:`~fastenv.tcp.client.TcpClientPlane.reconnect`).
"""

from fastenv.errors import MissingDependency
from fastenv.tcp.client import TcpClientPlane
from fastenv.tcp.compression import DEFAULT_CODEC
from fastenv.tcp.format import MessageRejected
from fastenv.tcp.framing import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_MESSAGE_BYTES, MessageStream
from fastenv.tcp.handshake import StreamRefused, connect_data_stream
from fastenv.tcp.listener import TcpDataListener
from fastenv.tcp.session import TcpServerStream
from fastenv.tcp.worker import TcpServerWorker

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CODEC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MessageRejected",
    "MessageStream",
    "MissingDependency",
    "StreamRefused",
    "TcpClientPlane",
    "TcpDataListener",
    "TcpServerStream",
    "TcpServerWorker",
    "connect_data_stream",
]
