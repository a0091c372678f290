"""The ``fastenv`` command: serve, keygen, demo, doctor, gc, launch, proxy, top, bench (= ``fastenv-bench``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fastenv.errors import FastEnvError
from fastenv.launch.cli import register as _add_launch
from fastenv.proxy_cli import register as _add_proxy
from fastenv.recording.cli import register as _add_replay
from fastenv.serve_cli import register as _add_serve
from fastenv.top import register as _add_top


def _add_keygen(commands: argparse._SubParsersAction) -> None:
    keygen = commands.add_parser(
        "keygen",
        help="make CURVE key files for `fastenv serve --auth DIR` and FastRemoteEnv(auth=DIR)",
        description=(
            "Write ZeroMQ CURVE key pairs into DIR. Without --name: server.key / server.key_secret, "
            "client.key / client.key_secret, and authorized_clients/client.key (one directory both sides can "
            "use). --name server: the server pair only. --name NAME: a client pair NAME.key / NAME.key_secret, "
            "authorized in DIR/authorized_clients/ when DIR holds the server's secret key. A client on another "
            "machine needs server.key and its own NAME.key_secret; never copy server.key_secret."
        ),
    )
    keygen.add_argument("directory", metavar="DIR", help="where to write the key files (created if missing)")
    keygen.add_argument("--name", default=None, help="make only this key pair (server, or a client's name)")
    keygen.set_defaults(handler=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    from fastenv.control.auth import keygen

    for path in keygen(args.directory, args.name):
        secret = path.name.endswith("_secret")
        print(f"wrote {path}{'  (secret: keep it private)' if secret else ''}")
    return 0


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="serve a built-in example env in a child process and drive it",
        description="Start `fastenv serve` on a built-in example env, drive it, print steps/s and latency.",
    )
    demo.add_argument("--env", choices=("vector", "camera"), default="vector", help="example env (default: vector)")
    demo.add_argument("--steps", type=int, default=3000, help="steps to time (default: 3000)")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from fastenv.demo import run_demo

    print(run_demo(args.env, args.steps))
    return 0


def _add_doctor(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser("doctor", help="report versions and which optional parts are active")
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from fastenv.doctor import report

    for key, value in report().items():
        print(f"{key:>18}: {value}")
    return 0


def _add_gc(commands: argparse._SubParsersAction) -> None:
    gc = commands.add_parser(
        "gc",
        help="remove shared-memory segments left by dead fastenv processes",
        description="Remove /dev/shm/fastenv-<pid>-* segments whose owning process is dead.",
    )
    gc.set_defaults(handler=_gc)


def _gc(args: argparse.Namespace) -> int:
    from fastenv.shm.arena import list_segments, reclaim_stale

    removed = reclaim_stale()
    for name in removed:
        print(f"removed {name}")
    remaining = len(list(list_segments()))
    print(f"fastenv gc: removed {len(removed)} stale segment(s); {remaining} in use by live processes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fastenv`` argument parser."""
    parser = argparse.ArgumentParser(prog="fastenv", description="Serve and drive simulation environments fast.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_keygen(commands)
    _add_demo(commands)
    _add_doctor(commands)
    _add_gc(commands)
    _add_launch(commands)
    _add_proxy(commands)
    _add_top(commands)
    _add_replay(commands)
    commands.add_parser("bench", add_help=False, help="compare transports side by side (fastenv-bench; see --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastenv`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every argument after it is fastenv-bench's
        from fastenv.bench.cli import main as bench_main

        return bench_main(argv[1:], prog="fastenv bench")
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except FastEnvError as exc:
        print(f"fastenv: error: {exc}", file=sys.stderr, flush=True)
        return 2
