"""A ZAP handler: decides which CURVE clients a server's sockets accept.

libzmq asks the ZeroMQ Authentication Protocol handler of a socket's context
(RFC 27, a REP socket bound to ``inproc://zeromq.zap.01``) about every
connection that completes a CURVE handshake. :class:`ZapHandler` answers from
an allow-list of client public keys, and gives an accepted connection the
client's public key (Z85) as its ``User-Id``, which the server reads from
each message (``frame.get("User-Id")``).

One handler serves one context, so an authenticated
:class:`~fastenv.server.EnvServer` runs its sockets in a context of its own.
Its sockets set ``ZAP_ENFORCE_DOMAIN`` (see
:meth:`~fastenv.control.auth.AuthConfig.configure_server`), so if the handler
is missing every client is refused, never let in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection

import zmq
from zmq.utils import z85

from fastenv.errors import ServerConfigError

log = logging.getLogger("fastenv.auth")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
POLL_MS = 100  # how often the handler thread looks at its stop flag


class ZapHandler:
    """Answers ZAP requests for ``context`` in a thread, from an allow-list of Z85 client keys.

    Args:
        context: the context whose sockets it authenticates (one handler per context).
        authorized: Z85 public keys of the clients to accept.

    Attributes:
        accepted / refused: how many handshakes it let in / refused.
    """

    def __init__(self, context: zmq.Context, authorized: Collection[bytes]) -> None:
        self._authorized = frozenset(authorized)
        self._stop = threading.Event()
        self.accepted = 0
        self.refused = 0
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            raise ServerConfigError(f"cannot start the ZAP handler: {exc.strerror}") from exc
        self._thread = threading.Thread(target=self._run, name="fastenv-zap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._socket
        try:
            while not self._stop.is_set():
                if not sock.poll(POLL_MS):
                    continue
                request = sock.recv_multipart()
                sock.send_multipart(self.answer(request))
        except zmq.ZMQError as exc:  # the context is going away with the process
            if not self._stop.is_set():
                log.warning("ZAP handler stopped: %s", exc)
        finally:
            sock.close(linger=0)

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request: ``[version, request id, status, text, user id, metadata]``."""
        request_id = request[1] if len(request) > 1 else b""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            return self._refuse(request_id, b"malformed ZAP request")
        _, _, _, address, _, mechanism, *credentials = request
        peer = address.decode("ascii", "replace")
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return self._refuse(request_id, b"CURVE required")
        key = z85.encode(credentials[0])
        if key not in self._authorized:
            log.warning("refused a client from %s: its key %s is not authorized", peer, key.decode())
            return self._refuse(request_id, b"client key not authorized")
        self.accepted += 1
        return [ZAP_VERSION, request_id, b"200", b"OK", key, b""]

    def _refuse(self, request_id: bytes, text: bytes) -> list[bytes]:
        self.refused += 1
        return [ZAP_VERSION, request_id, b"400", text, b"", b""]

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the thread (which closes the socket); True once it has ended. Idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> ZapHandler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["ZAP_ENDPOINT", "ZapHandler"]
