"""Where to SSH to: ``[user@]host[:port]`` or a ``Host`` alias, resolved like ``ssh`` does.

The user's ``~/.ssh/config`` (or the file given) decides ``HostName``,
``User``, ``Port``, ``IdentityFile``, ``IdentitiesOnly``, ``ProxyJump``,
``ProxyCommand``, ``UserKnownHostsFile`` and ``StrictHostKeyChecking``; a user
or port written in the host spec wins over the config, as with ``ssh``. The
system-wide ``/etc/ssh/ssh_config`` is not read.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from fastenv.errors import LaunchError

SSH_PORT = 22
_MAX_JUMPS = 8


@dataclass(frozen=True)
class SSHDestination:
    """One SSH host, fully resolved.

    Attributes:
        alias: the host as written (a config alias or a host name).
        hostname: the host to connect to (``HostName``).
        port: its SSH port.
        user: the login name.
        identity_files: private keys to offer (explicit ``identity`` first, then ``IdentityFile``).
        look_for_keys: also try ``~/.ssh/id_*`` (only when no identity file is configured, as ``ssh`` does).
        allow_agent: offer the keys of the SSH agent (``$SSH_AUTH_SOCK``) unless ``IdentitiesOnly yes``.
        known_hosts_files: ``UserKnownHostsFile`` entries (empty: the default ``~/.ssh/known_hosts``).
        accept_new_hosts: ``StrictHostKeyChecking accept-new`` (or ``no``) in the config.
        proxy_command: ``ProxyCommand`` (used only when there is no ``ProxyJump``).
        jumps: the ``ProxyJump`` hosts, in the order the connection goes through them.
    """

    alias: str
    hostname: str
    port: int = SSH_PORT
    user: str = ""
    identity_files: tuple[str, ...] = ()
    look_for_keys: bool = True
    allow_agent: bool = True
    known_hosts_files: tuple[str, ...] = ()
    accept_new_hosts: bool = False
    proxy_command: str | None = None
    jumps: tuple[SSHDestination, ...] = field(default=())

    def __str__(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"

    def hops(self) -> list[SSHDestination]:
        """Every host the connection goes through, this one last."""
        chain: list[SSHDestination] = []
        for jump in self.jumps:
            chain.extend(jump.hops())
        chain.append(self)
        return chain


def parse_host_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[ssh://][user@]host[:port]`` (IPv6 as ``[addr]:port``) -> (user, host, port)."""
    text = spec.strip().removeprefix("ssh://").rstrip("/")
    user, at, rest = text.rpartition("@")
    if not at:
        user, rest = "", text
    port: str | None = None
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise LaunchError(f"invalid SSH host {spec!r}: expected [user@]host[:port]")
        port = tail[1:] or None
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:
        host = rest  # a name, or a bare IPv6 address without a port
    if not host or (port is not None and not port.isdigit()):
        raise LaunchError(f"invalid SSH host {spec!r}: expected [user@]host[:port]")
    return user or None, host, int(port) if port else None


def load_ssh_config(path: str | os.PathLike[str] | None = None) -> paramiko.SSHConfig:
    """The SSH client config at ``path`` (default ``~/.ssh/config``; empty when that does not exist)."""
    if path is None:
        default = Path("~/.ssh/config").expanduser()
        return paramiko.SSHConfig.from_path(str(default)) if default.is_file() else paramiko.SSHConfig()
    file = Path(path).expanduser()
    if not file.is_file():
        raise LaunchError(f"no such SSH config file: {file}")
    try:
        return paramiko.SSHConfig.from_path(str(file))
    except paramiko.ssh_exception.ConfigParseError as exc:
        raise LaunchError(f"cannot parse the SSH config {file}: {exc}") from exc


def resolve_destination(
    spec: str,
    config: paramiko.SSHConfig,
    *,
    identity: str | os.PathLike[str] | None = None,
    _through: tuple[str, ...] = (),
) -> SSHDestination:
    """Resolve a host spec or alias through ``config`` (including its ``ProxyJump`` chain)."""
    user, host, port = parse_host_spec(spec)
    if host in _through or len(_through) > _MAX_JUMPS:
        raise LaunchError(f"ProxyJump loop or chain too long: {' -> '.join((*_through, host))}")
    entry = config.lookup(host)
    identities = [str(Path(identity).expanduser())] if identity is not None else []
    identities += [str(Path(name).expanduser()) for name in entry.get("identityfile", [])]
    jump_value = entry.get("proxyjump", "").strip()
    jumps = ()
    if jump_value and jump_value.lower() != "none":
        jumps = tuple(
            resolve_destination(hop, config, identity=identity, _through=(*_through, host))
            for hop in jump_value.split(",")
            if hop.strip()
        )
    proxy_command = entry.get("proxycommand")
    if proxy_command is not None and proxy_command.strip().lower() == "none":
        proxy_command = None
    return SSHDestination(
        alias=host,
        hostname=entry.get("hostname", host),
        port=port or int(entry.get("port", SSH_PORT)),
        user=user or entry.get("user") or getpass.getuser(),
        identity_files=tuple(dict.fromkeys(identities)),
        look_for_keys=not identities,
        allow_agent=entry.get("identitiesonly", "no").lower() != "yes"
        and entry.get("identityagent", "").lower() != "none",
        known_hosts_files=tuple(str(Path(name).expanduser()) for name in entry.get("userknownhostsfile", "").split()),
        accept_new_hosts=entry.get("stricthostkeychecking", "").lower() in ("accept-new", "no", "off"),
        proxy_command=None if jumps else proxy_command,
        jumps=jumps,
    )
