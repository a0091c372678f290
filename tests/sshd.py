"""A real OpenSSH server on 127.0.0.1 for the launch tests.

Everything lives in one temporary directory: the host key, a user key, the
authorized_keys and known_hosts files, an SSH client config with aliases, and
sshd's config and pid file. Nothing reads or writes ~/.ssh. The server is
ready when it has printed ``Server listening on`` and a paramiko connection
authenticates; it is stopped (with every session process it forked) by
:meth:`SSHServer.stop`.
"""

from __future__ import annotations

import collections
import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")


def unavailable_reason() -> str | None:
    """Why a test sshd cannot run here (None: it can)."""
    if not os.path.isfile(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if os.geteuid() != 0 and not PRIVSEP_DIR.is_dir():
        return f"{PRIVSEP_DIR} is missing and only root can create it"
    return None


def write_key(path: Path) -> str:
    """Write a new ed25519 private key (OpenSSH format, mode 0600); return its public line."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode("ascii")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SSHServer:
    """``sshd -D -e`` on 127.0.0.1:``port`` with a fresh host key, accepting one user key.

    Attributes:
        root: the temporary directory holding every file.
        port: the port sshd listens on.
        user: the login name (the user running the tests).
        user_key: the private key that sshd accepts.
        host_line: the known_hosts line for this server.
        known_hosts: a known_hosts file that trusts this server.
        config: an SSH client config with the aliases ``simbox`` (HostName, Port,
            User, IdentityFile, IdentitiesOnly, UserKnownHostsFile) and
            ``behind-jump`` (the same server reached through ``ProxyJump simbox``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.user = getpass.getuser()
        self.user_key = root / "id_ed25519"
        self.known_hosts = root / "known_hosts"
        self.config = root / "ssh_config"
        self.host_line = ""
        self.process: subprocess.Popen[str] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._listening = threading.Event()
        self._drainer: threading.Thread | None = None

    def output(self) -> str:
        """What sshd logged lately."""
        return "".join(self._output)

    def start(self, timeout: float = 20.0) -> None:
        """Write the keys and configs, start sshd, wait until a client can log in."""
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        host_key = self.root / "ssh_host_ed25519_key"
        host_public = write_key(host_key)
        (self.root / "authorized_keys").write_text(write_key(self.user_key) + "\n")
        self.port = _free_port()
        self.host_line = f"[127.0.0.1]:{self.port} {host_public}"
        self.known_hosts.write_text(self.host_line + "\n")
        sshd_config = self.root / "sshd_config"
        sshd_config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            f"PidFile {self.root / 'sshd.pid'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "AllowTcpForwarding yes\n"
            "MaxStartups 50:30:100\n"
            "LogLevel INFO\n"
            f"SetEnv XDG_CACHE_HOME={self.root / 'cache'}\n"
        )
        self.config.write_text(
            "Host simbox\n"
            "    HostName 127.0.0.1\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {self.user_key}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {self.known_hosts}\n"
            "\n"
            "Host behind-jump\n"
            "    HostName 127.0.0.1\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {self.user_key}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {self.known_hosts}\n"
            "    ProxyJump simbox\n"
        )
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(sshd_config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        try:
            if not self._listening.wait(timeout) or self.process.poll() is not None:
                raise RuntimeError(f"sshd did not start listening:\n{self.output()}")
            self.check_login(timeout)
        except BaseException:
            self.stop()
            raise

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self._output.append(line)
            if "Server listening on" in line:
                self._listening.set()
        self._listening.set()  # exited: start() sees poll() is not None

    def check_login(self, timeout: float) -> None:
        """Log in once with paramiko (raises if that fails)."""
        with paramiko.SSHClient() as client:
            client.load_host_keys(str(self.known_hosts))
            client.connect(
                "127.0.0.1",
                self.port,
                username=self.user,
                key_filename=str(self.user_key),
                allow_agent=False,
                look_for_keys=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )

    def copy_user_key(self, directory: Path) -> Path:
        """A copy of the accepted private key in ``directory`` (for a config of one's own)."""
        copy = directory / self.user_key.name
        shutil.copy2(self.user_key, copy)
        return copy

    def stop(self) -> None:
        """Stop sshd and every session process still in its process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()
