"""An SSH connection (through ``ProxyJump`` hosts if configured), host keys checked.

Keys come from the resolved destination (``IdentityFile``, the explicit
``identity``, ``~/.ssh/id_*`` when none is configured) and from the SSH agent.
Host keys are checked against ``known_hosts``: an unknown host is refused with
:class:`~fastenv.HostKeyError` unless ``accept_unknown_host=True`` (or the
config says ``StrictHostKeyChecking accept-new``), in which case its key is
appended to the user's known_hosts file, like ``ssh -o
StrictHostKeyChecking=accept-new``. A changed key is always refused.

A ``ProxyJump`` hop is a ``direct-tcpip`` channel opened on the previous hop's
transport and used as the socket of the next connection. A ``ProxyCommand``
runs with its stdin and stdout on one end of a socket pair; paramiko gets the
other end, a real socket (timeouts and EOF behave as on TCP).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
from pathlib import Path
from typing import Any

import paramiko

from fastenv.errors import HostKeyError, LaunchTimeout, SSHConnectError
from fastenv.launch.destination import SSH_PORT, SSHDestination

KEEPALIVE_S = 15  # an SSH keepalive this often notices a dead peer and keeps NAT mappings open
# AES-GCM first: one pass for cipher and MAC (AES-NI), about a third faster than
# paramiko's default aes-ctr + hmac for the arrays a tunnel carries. Servers
# without it (OpenSSH has it since 6.2) negotiate the next one.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown hosts, or accept them and append their key to ``record_in``."""

    def __init__(self, accept: bool, record_in: Path) -> None:
        self.accept = accept
        self.record_in = record_in

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept:
            raise HostKeyError(
                f"{hostname} is not a known host ({key.get_name()} key {key.fingerprint}, checked against "
                f"{self.record_in}). Check the fingerprint, then connect once with `ssh` to record it, "
                "or pass accept_unknown_host=True (--accept-unknown-host) to record it now"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.record_in.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.record_in, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n".encode("ascii"))


class CommandProxy:
    """A ``ProxyCommand`` process whose stdin and stdout are one end of a socket pair.

    :attr:`sock` is the other end, for paramiko. :meth:`close` closes it (the
    command sees EOF), then ends and reaps the process. The command's stderr is
    ours, as with ``ssh``.
    """

    def __init__(self, command: str) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(shlex.split(command), stdin=theirs, stdout=theirs)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours

    def close(self, timeout: float = 5.0) -> None:
        """Close the socket, SIGTERM the command if it does not exit by itself, reap it (idempotent)."""
        self.sock.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


class SSHConnection:
    """An open SSH connection to a destination and the jump hosts it goes through.

    Use as a context manager, or call :meth:`close` (closes the hops in reverse order).
    """

    def __init__(
        self, destination: SSHDestination, clients: list[paramiko.SSHClient], proxy: CommandProxy | None = None
    ) -> None:
        self.destination = destination
        self._clients = clients
        self._proxy = proxy

    @property
    def transport(self) -> paramiko.Transport:
        """The transport of the connection to the destination itself."""
        transport = self._clients[-1].get_transport()
        if transport is None:
            raise SSHConnectError(f"the SSH connection to {self.destination} is closed")
        return transport

    @property
    def direct_peer(self) -> str | None:
        """The address the destination was reached at, or None when through a jump host or ProxyCommand."""
        if len(self._clients) > 1 or self.destination.proxy_command:
            return None
        with contextlib.suppress(OSError, SSHConnectError):
            return str(self.transport.getpeername()[0])
        return None

    @property
    def active(self) -> bool:
        """Whether the connection to the destination is still up."""
        transport = self._clients[-1].get_transport() if self._clients else None
        return transport is not None and transport.is_active()

    def run(self, command: str, timeout: float) -> paramiko.Channel:
        """Start ``command`` in the user's login shell; stdout and stderr come combined on the channel."""
        try:
            channel = self.transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectError(f"cannot open an SSH session on {self.destination}: {exc}") from exc
        try:
            channel.set_combine_stderr(True)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()
            raise SSHConnectError(f"{self.destination} refused to run the launch command: {exc}") from exc
        return channel

    def close(self) -> None:
        """Close every hop (idempotent)."""
        while self._clients:
            self._clients.pop().close()
        if self._proxy is not None:
            self._proxy.close()

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_connection(
    destination: SSHDestination,
    *,
    known_hosts: str | os.PathLike[str] | None = None,
    accept_unknown_host: bool = False,
    connect_timeout: float = 10.0,
) -> SSHConnection:
    """Connect to ``destination`` through its jump hosts; raises typed :class:`~fastenv.LaunchError` subclasses.

    Args:
        known_hosts: the known_hosts file to check and record keys in (default:
            the config's ``UserKnownHostsFile`` or ``~/.ssh/known_hosts``, plus the
            read-only ``/etc/ssh/ssh_known_hosts``).
        accept_unknown_host: accept (and record) a host key seen for the first time.
        connect_timeout: seconds for each hop's TCP connect, SSH banner, authentication and channel opens.
    """
    clients: list[paramiko.SSHClient] = []
    hops = destination.hops()
    sock: Any = None
    proxy: CommandProxy | None = None
    try:
        for index, hop in enumerate(hops):
            if index == 0 and hop.proxy_command:
                proxy = _proxy_command(hop)
                sock = proxy.sock
            clients.append(_connect_hop(hop, sock, known_hosts, accept_unknown_host, connect_timeout))
            if index + 1 < len(hops):
                sock = _jump_channel(clients[-1], hop, hops[index + 1], connect_timeout)
    except BaseException:
        if sock is not None:  # a jump channel not (or no longer) owned by a transport
            with contextlib.suppress(Exception):
                sock.close()
        for client in reversed(clients):
            client.close()
        if proxy is not None:
            proxy.close()
        raise
    connection = SSHConnection(destination, clients, proxy)
    first = clients[0].get_transport()
    if first is not None and isinstance(first.sock, socket.socket):
        with contextlib.suppress(OSError):  # the tunnel carries a request/reply protocol: no Nagle delay
            first.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for client in clients:
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_S)
    return connection


def _proxy_command(hop: SSHDestination) -> CommandProxy:
    assert hop.proxy_command is not None
    try:
        return CommandProxy(hop.proxy_command)
    except (OSError, ValueError) as exc:
        raise SSHConnectError(f"ProxyCommand for {hop} ({hop.proxy_command!r}) failed to start: {exc}") from exc


def _jump_channel(client: paramiko.SSHClient, hop: SSHDestination, target: SSHDestination, timeout: float) -> Any:
    transport = client.get_transport()
    assert transport is not None
    try:
        return transport.open_channel("direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0), timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SSHConnectError(f"the jump host {hop} could not open a connection to {target}: {exc}") from exc


def _known_hosts_files(hop: SSHDestination, explicit: str | os.PathLike[str] | None) -> tuple[list[Path], list[Path]]:
    """(user files, system files): the first user file is where accepted keys are recorded."""
    if explicit is not None:
        return [Path(explicit).expanduser()], []
    user = [Path(name) for name in hop.known_hosts_files] or [Path("~/.ssh/known_hosts").expanduser()]
    return user, [Path(SYSTEM_KNOWN_HOSTS)]


def _transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A paramiko Transport that prefers :data:`PREFERRED_CIPHERS`."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    first = [name for name in PREFERRED_CIPHERS if name in options.ciphers]
    options.ciphers = tuple(first + [name for name in options.ciphers if name not in first])
    return transport


def _connect_hop(
    hop: SSHDestination,
    sock: Any,
    known_hosts: str | os.PathLike[str] | None,
    accept_unknown_host: bool,
    timeout: float,
) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    user_files, system_files = _known_hosts_files(hop, known_hosts)
    keys = [name for name in hop.identity_files if os.path.isfile(name)]
    try:
        for path in system_files:
            if path.is_file():
                client.load_system_host_keys(str(path))
        for path in user_files:
            if path.is_file():
                client.load_host_keys(str(path))
        client.set_missing_host_key_policy(_HostKeyPolicy(accept_unknown_host or hop.accept_new_hosts, user_files[0]))
        client.connect(
            hop.hostname,
            hop.port,
            username=hop.user,
            key_filename=keys or None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=hop.allow_agent,
            look_for_keys=hop.look_for_keys,
            sock=sock,
            transport_factory=_transport,
        )
    except BaseException as exc:
        client.close()
        if isinstance(exc, Exception):
            raise _translate(exc, hop, keys, timeout) from exc
        raise
    return client


def _translate(exc: Exception, hop: SSHDestination, keys: list[str], timeout: float) -> Exception:
    """paramiko and OS errors -> fastenv's launch errors, naming the host."""
    if isinstance(exc, HostKeyError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        name = hop.hostname if hop.port == SSH_PORT else f"[{hop.hostname}]:{hop.port}"
        return HostKeyError(
            f"the host key of {hop} has CHANGED: known_hosts has {exc.expected_key.get_name()} "
            f"{exc.expected_key.fingerprint}, the server presented {exc.key.get_name()} {exc.key.fingerprint}. "
            f"Someone may be intercepting the connection; if the host was reinstalled, remove the old key "
            f"(ssh-keygen -R '{name}') and connect again"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        tried = ", ".join(keys) if keys else ("~/.ssh/id_*" if hop.look_for_keys else "no key files")
        agent = " and the SSH agent" if hop.allow_agent and os.environ.get("SSH_AUTH_SOCK") else ""
        return SSHConnectError(f"authentication as {hop.user!r} on {hop} failed (tried {tried}{agent}): {exc}")
    if isinstance(exc, TimeoutError) or "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
        return LaunchTimeout(f"connecting to {hop} over SSH took longer than {timeout:g}s: {exc}")
    if isinstance(exc, (paramiko.SSHException, OSError, EOFError)):
        return SSHConnectError(f"cannot connect to {hop} over SSH: {exc or type(exc).__name__}")
    return exc
