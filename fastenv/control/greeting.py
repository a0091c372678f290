"""Ask a ZeroMQ peer which security mechanism it speaks, from its ZMTP greeting.

When a CURVE handshake fails without a word (the server just hangs up),
libzmq cannot tell the client why: the server may speak no security at all
(NULL), or speak CURVE with a key other than the one the client pinned. The
ZMTP 3 greeting names the mechanism in plain text before any cryptography, so
a short-lived plain TCP connection settles it: it sends the start of a greeting
(signature and version, enough for the peer to answer with its whole
greeting, not enough for it to judge ours and hang up), reads the peer's
greeting, and hangs up. Only the failure path of a client uses this.
"""

from __future__ import annotations

import socket
import time

SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
GREETING_SIZE = 64
MECHANISM = slice(12, 32)


VERSION = b"\x03\x00"  # ZMTP 3.0


def peer_mechanism(endpoint: str, timeout: float = 1.0) -> str | None:
    """The mechanism (``"NULL"``, ``"CURVE"``, ...) the ZMTP peer at ``tcp://host:port`` announces.

    None when it cannot be reached or does not answer with a ZMTP 3 greeting
    within ``timeout`` seconds.
    """
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        return None
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(SIGNATURE + VERSION)
            received = b""
            while len(received) < GREETING_SIZE:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(GREETING_SIZE - len(received))
                if not chunk:
                    break
                received += chunk
    except OSError:
        return None
    if len(received) < GREETING_SIZE or not received.startswith(SIGNATURE[:1]) or received[9:10] != b"\x7f":
        return None
    return received[MECHANISM].rstrip(b"\x00").decode("ascii", "replace") or None


__all__ = ["peer_mechanism"]
