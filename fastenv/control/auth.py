"""CURVE keys: the key-file layout, ``fastenv keygen``, and socket configuration.

fastenv authenticates and encrypts its ZeroMQ sockets (the control channel
and the observers' transition stream) with ZeroMQ's CURVE mechanism. Each
side holds a key pair; the server accepts only the client public keys it was
given (checked by :class:`~fastenv.control.zap.ZapHandler`), and the client
pins the server's public key, so neither side can be impersonated.

Key directory layout (``fastenv keygen DIR`` writes all of it)::

    DIR/server.key                  server public key   (clients need a copy)
    DIR/server.key_secret           server secret key   (stays on the server, mode 0600)
    DIR/client.key                  client public key
    DIR/client.key_secret           client secret key   (stays with the client, mode 0600)
    DIR/authorized_clients/*.key    public keys of the clients the server accepts

``fastenv serve --auth DIR`` reads ``server.key_secret`` and every
``authorized_clients/*.key``; a client's ``auth=DIR`` reads
``client.key_secret`` and pins ``server.key``. On two machines, the server
keeps ``server.key_secret`` and ``authorized_clients/``; the client gets
``server.key`` and its own ``client.key_secret``. Files are ZeroMQ
certificates (``zmq.auth.create_certificates`` format); a client key made
with another ZeroMQ tool works once its public file is put in
``authorized_clients/``.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import zmq
from zmq.utils import z85

from fastenv.errors import KeyFileError

log = logging.getLogger("fastenv.auth")

SERVER_NAME = "server"
CLIENT_NAME = "client"
AUTHORIZED_DIR = "authorized_clients"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
ZAP_DOMAIN = b"fastenv"
KEY_LENGTH = 40  # a Z85-encoded CURVE key

AuthLike = Union["AuthConfig", str, os.PathLike]


def refuse_unversioned_peers(socket: zmq.Socket) -> None:
    """Make a listening ``socket`` (before bind) hang up at once on peers that do not speak ZMTP 3.

    libzmq takes a peer whose first byte is not the ZMTP 3 signature for an
    unversioned ZMTP 1.0 peer: its handshake completes at once, its bytes (an
    HTTP request line, a port scanner's probe) become messages, and neither
    the handshake timeout nor heartbeats ever drop it, so each one would hold
    a file descriptor for as long as it stays open. libzmq refuses such peers
    on any socket that names a ZAP domain. Without authentication the domain
    is not enforced and no ZAP handler runs, so every ZMTP 3 peer is admitted
    as before; with authentication :meth:`AuthConfig.configure_server` sets it too.
    """
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


@dataclass(frozen=True)
class AuthConfig:
    """The CURVE keys of one side of fastenv's connections.

    Build it from a key directory with :meth:`for_server` / :meth:`for_client`
    (``auth="DIR"`` does that for you), or from keys you hold.

    Attributes:
        public_key: this side's public key (Z85, 40 bytes).
        secret_key: this side's secret key (Z85, 40 bytes).
        server_key: (clients) the server's public key: the connection fails
            unless the server proves it holds the matching secret key.
        authorized_clients: (servers) the client public keys allowed in.
    """

    public_key: bytes
    secret_key: bytes
    server_key: bytes | None = None
    authorized_clients: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        for what, key in (("public key", self.public_key), ("secret key", self.secret_key)):
            _check_key(key, what)
        if self.server_key is not None:
            _check_key(self.server_key, "server key")
        for key in self.authorized_clients:
            _check_key(key, "authorized client key")

    def __repr__(self) -> str:  # never print the secret key
        role = "client" if self.server_key is not None else "server"
        return f"AuthConfig({role}, public_key={self.public_key.decode()!r})"

    @property
    def is_client(self) -> bool:
        """Whether this is a client's configuration (it pins a server key)."""
        return self.server_key is not None

    @classmethod
    def for_server(cls, directory: str | os.PathLike) -> AuthConfig:
        """The server's keys: ``DIR/server.key_secret`` and ``DIR/authorized_clients/*.key``."""
        root = Path(directory).expanduser()
        public, secret = _load_pair(root / (SERVER_NAME + SECRET_SUFFIX))
        allowed_dir = root / AUTHORIZED_DIR
        if not allowed_dir.is_dir():
            raise KeyFileError(
                f"{allowed_dir} does not exist: put the public key files (*.key) of the clients "
                f"this server accepts there (`fastenv keygen {root}` makes one)"
            )
        allowed = frozenset(_load_public(path) for path in sorted(allowed_dir.glob("*" + PUBLIC_SUFFIX)))
        if not allowed:
            raise KeyFileError(
                f"{allowed_dir} holds no client public keys (*.key): no client could connect; "
                f"add one with `fastenv keygen {root} --name NAME`"
            )
        return cls(public, secret, authorized_clients=allowed)

    @classmethod
    def for_client(cls, directory: str | os.PathLike, *, name: str = CLIENT_NAME) -> AuthConfig:
        """A client's keys: ``DIR/NAME.key_secret``, pinning the server key ``DIR/server.key``."""
        root = Path(directory).expanduser()
        public, secret = _load_pair(root / (name + SECRET_SUFFIX))
        server_key = _load_public(root / (SERVER_NAME + PUBLIC_SUFFIX))
        return cls(public, secret, server_key=server_key)

    def configure_server(self, socket: zmq.Socket) -> None:
        """Make ``socket`` (before bind) a CURVE server whose clients the ZAP handler checks."""
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        # Without a ZAP handler libzmq would accept any key: refuse instead.
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def configure_client(self, socket: zmq.Socket) -> None:
        """Make ``socket`` (before connect) a CURVE client pinning :attr:`server_key`."""
        if self.server_key is None:
            raise KeyFileError("this AuthConfig has no server key to pin: build it with AuthConfig.for_client")
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)


def server_auth(value: AuthLike | None) -> AuthConfig | None:
    """``EnvServer(auth=...)``: None, an :class:`AuthConfig`, or a key directory."""
    if value is None or isinstance(value, AuthConfig):
        if isinstance(value, AuthConfig) and value.is_client:
            raise KeyFileError("a server needs AuthConfig.for_server(...), not a client's keys")
        return value
    return AuthConfig.for_server(value)


def client_auth(value: AuthLike | None) -> AuthConfig | None:
    """``FastRemoteEnv(auth=...)``: None, an :class:`AuthConfig`, or a key directory."""
    if value is None or isinstance(value, AuthConfig):
        if isinstance(value, AuthConfig) and not value.is_client:
            raise KeyFileError("a client needs AuthConfig.for_client(...) (it pins the server's key)")
        return value
    return AuthConfig.for_client(value)


def keygen(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Write CURVE key files into ``directory``; returns the files written.

    Without ``name``: a server pair, a ``client`` pair, and the client's
    public key in ``authorized_clients/`` (one directory both sides can use).
    ``name="server"``: the server pair only. Any other name: a client pair
    ``NAME.key`` / ``NAME.key_secret``, authorized in ``authorized_clients/``
    when the directory holds the server's secret key. Existing key files are
    never overwritten.
    """
    root = Path(directory).expanduser()
    names = [SERVER_NAME, CLIENT_NAME] if name is None else [name]
    for each in names:
        if not each or "/" in each or each.startswith(".") or each == AUTHORIZED_DIR:
            raise KeyFileError(f"invalid key name {each!r}")
        for suffix in (PUBLIC_SUFFIX, SECRET_SUFFIX):
            if (root / (each + suffix)).exists():
                raise KeyFileError(f"{root / (each + suffix)} already exists; remove it first to make a new key")
    try:
        root.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for each in names:
            public, secret = zmq.curve_keypair()
            public_file = root / (each + PUBLIC_SUFFIX)
            secret_file = root / (each + SECRET_SUFFIX)
            _write_certificate(public_file, public, None)
            _write_certificate(secret_file, public, secret)
            written += [public_file, secret_file]
            if each != SERVER_NAME and (root / (SERVER_NAME + SECRET_SUFFIX)).exists():
                allowed_dir = root / AUTHORIZED_DIR
                allowed_dir.mkdir(exist_ok=True)
                copy = allowed_dir / (each + PUBLIC_SUFFIX)
                _write_certificate(copy, public, None)
                written.append(copy)
    except OSError as exc:
        raise KeyFileError(f"cannot write keys into {root}: {exc.strerror or exc}") from exc
    return written


def _write_certificate(path: Path, public: bytes, secret: bytes | None) -> None:
    """Write a ZeroMQ certificate (ZPL text); a secret one is created with mode 0600."""
    kind = "Secret" if secret is not None else "Public"
    lines = [
        f"#   ZeroMQ CURVE {kind} Certificate, written by fastenv keygen",
        "#   Keep it private: never copy it to another user." if secret is not None else "#   Give it to the peer.",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret is not None else 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("\n".join(lines) + "\n")


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_LENGTH:
        raise KeyFileError(f"invalid CURVE {what}: expected {KEY_LENGTH} Z85 characters")
    try:
        z85.decode(key)
    except (ValueError, KeyError, IndexError, struct.error) as exc:
        raise KeyFileError(f"invalid CURVE {what}: not Z85") from exc


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key (is it the public .key file?)")
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("secret key file %s is readable by other users: chmod 600 it", path)
    except OSError:
        pass
    return public, secret


def _load_public(path: Path) -> bytes:
    return _load(path)[0]


def _load(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeyFileError(f"key file {path} not found (make keys with `fastenv keygen {path.parent}`)")
    from zmq.auth.certs import (
        load_certificate,  # imported on use: zmq.auth pulls in asyncio
    )

    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
    for key, what in ((public, "public key"), (secret, "secret key")):
        if key is not None:
            try:
                _check_key(key, what)
            except KeyFileError as exc:
                raise KeyFileError(f"{path}: {exc}") from None
    return public, secret


__all__ = ["AUTHORIZED_DIR", "AuthConfig", "client_auth", "keygen", "server_auth"]
