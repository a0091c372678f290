"""``launch()``: start ``fastenv serve`` on another host over SSH; ``launch_and_connect()``."""

from __future__ import annotations

import contextlib
import inspect
import os
import secrets
import socket
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from fastenv.client import FastRemoteEnv
from fastenv.control.address import is_loopback
from fastenv.errors import LaunchError, LaunchTimeout
from fastenv.launch.command import CWD_FAILED, remote_command, serve_arguments
from fastenv.launch.connection import SSHConnection, open_connection
from fastenv.launch.destination import load_ssh_config, resolve_destination
from fastenv.launch.events import EXITED, FAILED, READY, STARTED
from fastenv.launch.forward import PortForwarder
from fastenv.launch.handle import LaunchedServer, RemoteOutput

TUNNEL_MODES = {"auto": "auto", "yes": "yes", "no": "no", True: "yes", False: "no"}
PROBE_TIMEOUT = 2.0  # at most this long for the direct-reachability probe of tunnel="auto"
TAIL_LINES = 30  # lines of remote output in a LaunchError
# Local addresses the tunnel may listen on. The client reaches the data stream at
# the control address's host and the port the server announces, so the tunnel
# listens on that port number; when it is taken on 127.0.0.1 (the server runs on
# this very machine, or another program holds it) Linux has the rest of 127/8.
_LOCAL_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3") if sys.platform.startswith("linux") else ("127.0.0.1",)


def launch(
    ssh_host: str,
    target: str,
    *,
    python: str = "python",
    setup: str | None = None,
    cwd: str | None = None,
    port: int = 0,
    data_port: int = 0,
    env: Mapping[str, str] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    tunnel: bool | str = "auto",
    insecure: bool = False,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
    accept_unknown_host: bool = False,
    cleanup_old: bool = False,
    extra_args: Sequence[str] = (),
    ssh_config: str | os.PathLike[str] | None = None,
    identity: str | os.PathLike[str] | None = None,
    known_hosts: str | os.PathLike[str] | None = None,
    state_dir: str | None = None,
    grace: float = 10.0,
) -> LaunchedServer:
    """Start ``fastenv serve TARGET`` on ``ssh_host`` and return once it is ready.

    Example::

        with launch("gpu-box", "sim.py:make_env", setup="source ~/venv/bin/activate") as server:
            with FastRemoteEnv(server.address) as env:
                obs, info = env.reset(seed=0)

    Args:
        ssh_host: ``[user@]host[:port]`` or a ``Host`` alias of the SSH config.
        target: what ``fastenv serve`` serves (``module:callable``, ``file.py:callable``
            or a Gymnasium id), resolved on the remote host (relative paths from ``cwd``).
        python: the remote interpreter (after ``setup``); fastenv must be installed for it.
        setup: shell code run first, e.g. ``"source venv/bin/activate"`` or
            ``"source ~/miniconda3/etc/profile.d/conda.sh && conda activate sim"``.
        cwd: remote working directory.
        port: remote control port (0: a free one). When tunnelled the local end
            uses the same number if it is free here.
        data_port: remote TCP data-stream port (0: a free one).
        env: environment variables for ``setup`` and the server.
        env_kwargs: keyword arguments of the env factory (``--env-kwargs``).
        tunnel: ``True``: reach the server through the SSH connection (it binds
            127.0.0.1 remotely). ``False``: connect to it directly; on a host
            other than this machine it must then bind a network interface, which
            needs ``insecure=True``. ``"auto"`` (default): direct when the server's
            port answers a short probe from here, else tunnelled; on another host
            without ``insecure`` that means tunnelled.
        insecure: let the server bind the interface the SSH connection came in on,
            without authentication (anyone who can reach the port can drive the env).
        timeout: seconds from starting the remote command until the server is ready.
        connect_timeout: seconds for each SSH hop (TCP connect, banner, authentication, channels).
        accept_unknown_host: accept and record the key of a host missing from known_hosts.
        cleanup_old: first stop the servers earlier launches left on that host
            (found through the pid files the remote agent writes, checked by pid,
            start time and command line; nothing is matched by process name).
        extra_args: more ``fastenv serve`` options (``["--mode", "per-client"]``).
        ssh_config: SSH client config file (default ``~/.ssh/config``).
        identity: a private key file to offer first (like ``ssh -i``).
        known_hosts: the known_hosts file to check and record in (default: the
            config's ``UserKnownHostsFile`` or ``~/.ssh/known_hosts``).
        state_dir: remote directory of the pid and log files
            (default ``$XDG_CACHE_HOME/fastenv/launch``, i.e. ``~/.cache/fastenv/launch``).
        grace: seconds between SIGTERM and SIGKILL when the server is ended
            because the SSH connection dropped, or by ``cleanup_old``.

    Raises:
        HostKeyError: the host is unknown (and not accepted) or its key changed.
        SSHConnectError: the SSH connection or authentication failed.
        LaunchTimeout: a hop did not answer within ``connect_timeout``, or the
            server was not ready within ``timeout``.
        LaunchError: the server could not start; the message ends with the
            remote output (missing module, bad target, port in use, python or
            fastenv missing on the remote host...).
    """
    mode = TUNNEL_MODES.get(tunnel if isinstance(tunnel, bool) else str(tunnel).lower())
    if mode is None:
        raise ValueError(f"tunnel must be True, False or 'auto', not {tunnel!r}")
    destination = resolve_destination(ssh_host, load_ssh_config(ssh_config), identity=identity)
    with contextlib.ExitStack() as on_failure:
        connection = open_connection(
            destination,
            known_hosts=known_hosts,
            accept_unknown_host=accept_unknown_host,
            connect_timeout=connect_timeout,
        )
        on_failure.callback(connection.close)  # closing it makes the remote agent end the server
        peer = connection.direct_peer
        bind, plan = _plan_route(mode, peer, insecure, tunnel)
        command = remote_command(
            python=python,
            launch_id=time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4),
            serve_args=serve_arguments(
                target,
                port=port,
                data_port=data_port,
                bind=bind,
                env_kwargs=env_kwargs,
                insecure=insecure,
                extra_args=extra_args,
            ),
            grace=grace,
            setup=setup,
            cwd=cwd,
            env=env,
            state_dir=state_dir,
            cleanup_old=cleanup_old,
            bind_ssh_interface=bind is None,
        )
        channel = connection.run(command, connect_timeout)
        output = RemoteOutput(channel)
        on_failure.callback(output.join, 5.0)
        on_failure.callback(channel.close)  # runs first: ends the reader, and the agent sees EOF
        output.wait_for(lambda: READY in output.events or output.finished, timeout)
        if READY not in output.events:
            raise _start_failure(output, ssh_host, python, cwd, timeout)
        ready = output.events[READY]
        remote_host, remote_port = str(ready["host"]), int(ready["port"])
        direct_host = peer or destination.hostname
        forwarder = None
        if plan == "probe":
            if _reachable(direct_host, remote_port, min(connect_timeout, PROBE_TIMEOUT)):
                plan, route = "direct", f"auto: {direct_host}:{remote_port} answers from here"
            else:
                plan, route = "tunnel", f"auto: {direct_host}:{remote_port} does not answer from here"
        else:
            route = _ROUTES[plan]
        if plan.startswith("tunnel"):
            forwarder, address, note = _open_tunnel(connection, remote_host, remote_port, int(ready["data_port"]), port)
            on_failure.callback(forwarder.close)
            route += note
        else:
            address = _endpoint(direct_host, remote_port)
        server = LaunchedServer(
            host=ssh_host,
            connection=connection,
            channel=channel,
            output=output,
            address=address,
            tunnelled=forwarder is not None,
            route=route,
            forwarder=forwarder,
        )
        on_failure.pop_all()
    return server


_ROUTES = {
    "tunnel": "tunnel=True: the server binds 127.0.0.1 and is reached through the SSH connection",
    "tunnel-safe": "auto: the server binds 127.0.0.1 on another host (insecure=False), "
    "so it is reached through the SSH connection",
    "direct": "tunnel=False: the client connects to the server directly",
}


def _plan_route(mode: str, peer: str | None, insecure: bool, tunnel: object) -> tuple[str | None, str]:
    """(remote bind address, or None for the interface SSH came in on; "tunnel" / "direct" / "probe")."""
    if mode == "yes":
        return "127.0.0.1", "tunnel"
    if peer is not None and is_loopback(peer):  # the "remote" host is this machine
        return "127.0.0.1", "direct" if mode == "no" else "probe"
    if mode == "no" and not insecure:
        raise LaunchError(
            f"tunnel={tunnel!r} on another host means the server must listen on a network interface without "
            "authentication: pass insecure=True (--insecure) if anyone who can reach that port may drive the env, "
            "or keep the default tunnel='auto' to go through the SSH connection"
        )
    if mode == "no":
        return None, "direct"
    return (None, "probe") if insecure else ("127.0.0.1", "tunnel-safe")


def _open_tunnel(
    connection: SSHConnection, remote_host: str, remote_port: int, data_port: int, wanted_port: int
) -> tuple[PortForwarder, str, str]:
    """Forward a local control port and the data port; return (forwarder, client address, route note).

    The client opens its data stream to the host of the address it connected to
    and the port the server announced, so the data forward listens on that very
    port number, on the first local loopback address where it is free.
    """
    forwarder = PortForwarder(connection.transport)
    try:
        for host in _LOCAL_HOSTS:
            if data_port:
                try:
                    forwarder.add((host, data_port), (remote_host, data_port))
                except OSError:
                    continue
            local_port = _add_control(forwarder, host, wanted_port, (remote_host, remote_port))
            forwarder.start()
            note = f"; data stream forwarded on {host}:{data_port}" if data_port else ""
            return forwarder, _endpoint(host, local_port), note
        local_port = _add_control(forwarder, "127.0.0.1", wanted_port, (remote_host, remote_port))
        forwarder.start()
        note = (
            f"; port {data_port} is taken on every local address tried ({', '.join(_LOCAL_HOSTS)}), so the data "
            "stream is not forwarded and calls travel on the control connection"
        )
        return forwarder, _endpoint("127.0.0.1", local_port), note
    except BaseException:
        forwarder.close()
        raise


def _add_control(forwarder: PortForwarder, host: str, wanted: int, remote: tuple[str, int]) -> int:
    """Forward the control port, on the same port number as the remote one when asked for and free."""
    if wanted:
        with contextlib.suppress(OSError):
            return forwarder.add((host, wanted), remote)[1]
    return forwarder.add((host, 0), remote)[1]


def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _endpoint(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _start_failure(output: RemoteOutput, host: str, python: str, cwd: str | None, timeout: float) -> LaunchError:
    """The typed error for a server that did not become ready, ending with the remote output."""
    if not output.finished:
        tail = output.tail(TAIL_LINES)
        pid = output.events.get(STARTED, {}).get("pid")
        return LaunchTimeout(
            f"the server on {host}{f' (remote pid {pid})' if pid else ''} did not print its ready line within "
            f"{timeout:g}s; it is being stopped" + _format_tail(tail),
            output=tail,
        )
    status = output.exit_status(5.0)
    tail = output.tail(TAIL_LINES)
    failed, exited = output.events.get(FAILED), output.events.get(EXITED)
    if failed is not None:
        message = f"the launch agent on {host} failed: {failed.get('message')}"
    elif exited is not None:
        message = f"the server on {host} exited with code {exited.get('code')} before it was ready"
    elif status == 127:
        message = (
            f"{python!r} was not found on {host} (exit status 127): pass python='/path/to/python', "
            "or a setup command that puts it on PATH"
        )
    elif status == CWD_FAILED:
        message = f"cannot change to the directory {cwd!r} on {host}"
    elif "No module named" in tail and "fastenv" in tail:
        message = (
            f"fastenv is not installed for {python!r} on {host}, or too old to be launched: "
            "install the same fastenv version there"
        )
    else:
        message = f"the launch command failed on {host} (exit status {status})"
    return LaunchError(message + _format_tail(tail), output=tail, exit_status=status)


def _format_tail(tail: str) -> str:
    if not tail.strip():
        return "\n(the remote side printed nothing)"
    return f"\n--- remote output (last {TAIL_LINES} lines at most) ---\n{tail}"


_LAUNCH_ONLY = frozenset(inspect.signature(launch).parameters) - {"ssh_host", "target", "timeout", "connect_timeout"}


def launch_and_connect(
    ssh_host: str, target: str, *, start_timeout: float = 60.0, connect_timeout: float = 10.0, **kwargs: Any
) -> FastRemoteEnv:
    """Launch a server with :func:`launch` and connect a :class:`~fastenv.FastRemoteEnv` to it.

    Keyword arguments of :func:`launch` go to it (its ``timeout`` is called
    ``start_timeout`` here); the rest (``timeout``, ``transport``, ``copy``,
    ``compression``...) go to :class:`~fastenv.FastRemoteEnv`; ``connect_timeout``
    bounds both the SSH connection and the handshake. Closing the env (``close()``
    or leaving a ``with`` block) also stops the server; the handle is
    ``env.launched`` (a :class:`~fastenv.launch.LaunchedServer`).

    Example::

        with launch_and_connect("gpu-box", "sim.py:make_env", cwd="~/sim", transport="tcp") as env:
            obs, info = env.reset(seed=0)
    """
    launch_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in _LAUNCH_ONLY}
    server = launch(ssh_host, target, timeout=start_timeout, connect_timeout=connect_timeout, **launch_kwargs)
    try:
        env = FastRemoteEnv(server.address, connect_timeout=connect_timeout, **kwargs)
    except BaseException:
        server.stop()
        raise
    attach_server(env, server)
    return env


def attach_server(env: FastRemoteEnv, server: LaunchedServer) -> None:
    """Make ``env.close()`` also stop ``server``; ``env.launched`` is the handle."""
    env_ref = weakref.ref(env)
    client_close = type(env).close

    def close(timeout: float = 2.0) -> None:
        """Close the connection, then stop the launched server (idempotent)."""
        client = env_ref()
        try:
            if client is not None:
                client_close(client, timeout)
        finally:
            server.stop()

    env.launched = server  # type: ignore[attr-defined]
    env.close = close  # type: ignore[method-assign]
