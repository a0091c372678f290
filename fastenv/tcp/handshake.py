"""Opening a session's TCP data stream: the preamble, the listener's answer, the stream object.

The client connects, sends :data:`HELLO` followed by the session token, and
waits for one byte: :data:`ACK` (a session adopted the connection) or
:data:`NAK` (no session holds that token; the listener hangs up).
"""

from __future__ import annotations

import socket
import time

from fastenv.errors import ConnectionLost, FastEnvTimeout, ProtocolError, TransportError
from fastenv.tcp.framing import MessageStream

HELLO = b"FEdata01"  # preamble of a data connection, followed by the session token
ACK = b"\x06"  # the listener's answer once a session adopted the connection
NAK = b"\x15"  # its answer to a token no session holds (then it hangs up)
DEFAULT_TOKEN_SIZE = 16


class StreamRefused(ConnectionLost):
    """The server answered a data stream's preamble with :data:`NAK`: no session holds that token."""


def open_stream(
    sock: socket.socket, chunk_size: int, compression: str | bool | None, max_message_bytes: int
) -> MessageStream:
    """Wrap ``sock`` in a :class:`MessageStream`, closing the socket if that fails (the caller owns it)."""
    try:
        return MessageStream(sock, chunk_size=chunk_size, compression=compression, max_message_bytes=max_message_bytes)
    except BaseException:
        sock.close()
        raise


def connect_data_stream(host: str, port: int, token: bytes, timeout: float) -> socket.socket:
    """Open a session's data connection: connect, send the preamble, wait for the ACK.

    Returns a blocking socket with TCP_NODELAY set. Raises
    :class:`FastEnvTimeout` if it takes longer than ``timeout`` seconds,
    :class:`StreamRefused` if the server holds no session with that token,
    :class:`ConnectionLost` if the connection dropped during the handshake,
    and :class:`TransportError` if nothing listens there.
    """
    deadline = time.monotonic() + timeout
    endpoint = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise FastEnvTimeout(f"connecting the data stream to {endpoint} timed out") from exc
    except (ConnectionResetError, ConnectionAbortedError) as exc:  # reached, then cut: not "nothing listens"
        raise ConnectionLost(f"the data stream to {endpoint} was cut while connecting: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise TransportError(f"cannot connect the data stream to {endpoint}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(HELLO + bytes(token))
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        answer = sock.recv(1)
        if not answer:
            raise ConnectionLost(f"the data stream to {endpoint} was cut during its handshake")
        if answer == NAK:
            raise StreamRefused(f"the server at {endpoint} refused the data stream (unknown or expired session token)")
        if answer != ACK:
            raise ProtocolError(f"the server at {endpoint} answered the data stream preamble with {answer!r}")
        sock.settimeout(None)
        return sock
    except TimeoutError as exc:
        sock.close()
        raise FastEnvTimeout(f"the data stream handshake with {endpoint} timed out") from exc
    except OSError as exc:
        sock.close()
        raise ConnectionLost(f"the data stream handshake with {endpoint} failed: {exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
