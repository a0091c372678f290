"""``fastenv launch``: start a server on another host over SSH and keep it reachable until Ctrl-C."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from typing import NoReturn

from fastenv.serve_cli import json_object
from fastenv.server_process import READY_LINE


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``launch`` command to the ``fastenv`` parser's subcommands."""
    parser = commands.add_parser(
        "launch",
        help="start `fastenv serve` on another host over SSH and keep it reachable",
        description=(
            "Start `fastenv serve TARGET` on HOST over SSH (your ~/.ssh/config, keys and agent, known_hosts "
            "checked), print `fastenv: ready <address>` with the address a client connects to (the local end of "
            "an SSH tunnel by default), and keep it reachable until Ctrl-C, which stops the server."
        ),
    )
    parser.add_argument("host", help="[user@]host[:port] or a Host alias from the SSH config")
    parser.add_argument("target", help="what `fastenv serve` serves, as seen on the remote host")
    parser.add_argument("--python", default="python", help="remote Python with fastenv installed (default: python)")
    parser.add_argument("--setup", help="remote shell code run first, e.g. 'source venv/bin/activate'")
    parser.add_argument("--cwd", help="remote working directory")
    parser.add_argument("--port", type=int, default=0, help="remote control port (default: a free one)")
    parser.add_argument("--data-port", type=int, default=0, help="remote data-stream port (default: a free one)")
    parser.add_argument("--env-kwargs", type=json_object, default=None, help="JSON object passed to the env factory")
    parser.add_argument(
        "--env", type=_assignment, action="append", default=[], metavar="NAME=VALUE", help="remote environment variable"
    )
    parser.add_argument(
        "--tunnel",
        choices=("auto", "yes", "no"),
        default="auto",
        help="reach the server through the SSH connection (yes), directly (no), or directly only if it answers (auto)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="let the server listen on the remote network interface without authentication (needed for --tunnel no)",
    )
    parser.add_argument("--accept-unknown-host", action="store_true", help="accept and record an unknown host key")
    parser.add_argument("--ssh-config", help="SSH client config file (default: ~/.ssh/config)")
    parser.add_argument("--identity", "-i", help="private key file to offer first")
    parser.add_argument("--known-hosts", help="known_hosts file (default: from the SSH config, or ~/.ssh/known_hosts)")
    parser.add_argument("--cleanup-old", action="store_true", help="first stop servers earlier launches left there")
    parser.add_argument("--state-dir", help="remote directory of pid and log files (default: ~/.cache/fastenv/launch)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds until the server must be ready")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds for each SSH connection")
    parser.add_argument("--serve-args", default="", help="more `fastenv serve` options, e.g. '--mode per-client'")
    parser.set_defaults(handler=_launch)


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _launch(args: argparse.Namespace) -> int:
    from fastenv.launch.launcher import launch

    signal.signal(signal.SIGTERM, _interrupt)
    server = launch(
        args.host,
        args.target,
        python=args.python,
        setup=args.setup,
        cwd=args.cwd,
        port=args.port,
        data_port=args.data_port,
        env=dict(args.env),
        env_kwargs=args.env_kwargs,
        tunnel=args.tunnel,
        insecure=args.insecure,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        accept_unknown_host=args.accept_unknown_host,
        cleanup_old=args.cleanup_old,
        extra_args=shlex.split(args.serve_args),
        ssh_config=args.ssh_config,
        identity=args.identity,
        known_hosts=args.known_hosts,
        state_dir=args.state_dir,
    )
    with server:
        print(
            f"fastenv launch: serving {args.target} on {args.host}, remote pid {server.remote_pid} "
            f"({server.route}); log: {server.log_path} there. Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )
        print(READY_LINE.format(address=server.address), flush=True)
        try:
            code = server.wait()
        except KeyboardInterrupt:
            interrupted = True
        else:
            interrupted = False
            print(
                f"fastenv launch: the server on {args.host} exited (code {code}); its last output:\n{server.logs(20)}",
                file=sys.stderr,
                flush=True,
            )
    print("fastenv: stopped", file=sys.stderr, flush=True)
    return 0 if interrupted else 1
