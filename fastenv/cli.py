"""The ``fastenv`` command: serve, keygen, demo, doctor, gc, launch, proxy, top, bench (= ``fastenv-bench``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from fastenv.codec import Limits
from fastenv.errors import FastEnvError
from fastenv.launch.cli import register as _add_launch
from fastenv.proxy_cli import register as _add_proxy
from fastenv.recording.cli import register as _add_replay
from fastenv.top import register as _add_top
from fastenv.server import ATTACH_GRACE_S, DEFAULT_MAX_PENDING, DEFAULT_MAX_SESSIONS
from fastenv.server_process import READY_LINE
from fastenv.session.envthread import ENV_THREADS
from fastenv.shm.plane import DEFAULT_SHAPE


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"height\": 84}'")
    return value


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a worker count of at least 1, got {text!r}")
    return value


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve an env",
        description="Serve an env. Prints one line `fastenv: ready <address>` once it accepts connections.",
    )
    serve.add_argument("target", help="module:callable, path/to/file.py:callable, or a Gymnasium id (CartPole-v1)")
    serve.add_argument("--bind", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="TCP port of the control channel (default: 0, a free port)")
    serve.add_argument(
        "--data-port",
        type=int,
        default=0,
        help="TCP port of the data stream for clients without shared memory (default: 0, a free port)",
    )
    serve.add_argument(
        "--mode",
        choices=("shared", "per-client"),
        default="shared",
        help="shared: all clients drive one env (default); per-client: each client gets its own",
    )
    serve.add_argument("--env-kwargs", type=_json_object, default={}, help="JSON object passed to the env factory")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding a non-loopback address without authentication",
    )
    serve.add_argument(
        "--auth",
        metavar="DIR",
        default=None,
        help="authenticate and encrypt with CURVE keys: DIR/server.key_secret, and the clients allowed in as "
        "DIR/authorized_clients/*.key (make them with `fastenv keygen DIR`); no raw TCP data stream then",
    )
    serve.add_argument(
        "--allow-trusted",
        action="store_true",
        help="let authenticated clients ship an env factory (FastRemoteEnv.create); needs --auth",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=1 << 31,
        help="largest frame accepted: clients refuse to send more, a peer that does is dropped (default: 2 GiB)",
    )
    serve.add_argument(
        "--max-array-elements",
        type=int,
        default=Limits.max_array_elements,
        help=f"most elements in one array a client sends (default: {Limits.max_array_elements})",
    )
    serve.add_argument(
        "--max-depth",
        type=int,
        default=Limits.max_depth,
        help=f"deepest container nesting a client may send (default: {Limits.max_depth})",
    )
    serve.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help=f"most sessions at once; more are refused with ServerBusy (default: {DEFAULT_MAX_SESSIONS})",
    )
    serve.add_argument(
        "--max-pending",
        type=int,
        default=DEFAULT_MAX_PENDING,
        help="most requests one client may have waiting on the control connection; more are refused with "
        f"TooManyPending (default: {DEFAULT_MAX_PENDING})",
    )
    serve.add_argument(
        "--attach-grace",
        type=float,
        default=ATTACH_GRACE_S,
        help=f"seconds a client may leave its session's shared-memory offer unanswered (default: {ATTACH_GRACE_S:g})",
    )
    serve.add_argument("--no-shm", action="store_true", help="never offer the shared-memory data plane")
    serve.add_argument(
        "--num-envs",
        type=int,
        default=None,
        help="host N envs from TARGET behind one batched (vector) env; drive it with fastenv.FastVectorEnv",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        nargs="?",
        const="auto",
        default=None,
        metavar="W",
        help="with --num-envs: step the N envs in W worker processes behind this one address (W slices that differ "
        "by at most one env); --workers alone or 'auto': one per usable CPU (default: no workers, the envs step "
        "one after another in the server process)",
    )
    serve.add_argument(
        "--heartbeat-interval",
        type=float,
        default=1.0,
        help="seconds between heartbeats; a vanished client's session is reclaimed within two (default: 1.0)",
    )
    serve.add_argument(
        "--shm-slots",
        type=int,
        default=DEFAULT_SHAPE.slots,
        help="reply slots per shared-memory session: up to SLOTS-1 replies a client holds stay zero-copy, "
        f"later ones are copied (default: {DEFAULT_SHAPE.slots})",
    )
    serve.add_argument(
        "--env-thread",
        choices=ENV_THREADS,
        default="caller",
        help="the thread envs are built and called on: caller (default: the thread that received the call, no hop), "
        "main (this process's main thread: for simulators bound to it, Isaac Sim, OpenGL) or dedicated (one per env)",
    )
    serve.add_argument(
        "--spin-us", type=int, default=None, help="how long a shared-memory worker spins before sleeping (µs)"
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="N",
        help="serve Prometheus metrics on port N of the bind address (0: a free port, printed; "
        'needs pip install "fastenv[metrics]"); `fastenv top HOST:N` shows them live',
    )
    serve.add_argument(
        "--record",
        default=None,
        metavar="PATH",
        help='write every call and result of every session to the MCAP file PATH (needs pip install "fastenv[record]"); '
        "a writer thread keeps up or drops calls (counted), never stalling a step",
    )
    serve.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import dataclasses

    from fastenv.server import EnvServer
    from fastenv.target import resolve_target

    logging.basicConfig(level=args.log_level.upper(), format="fastenv[%(process)d] %(levelname)s %(message)s")
    factory = resolve_target(args.target, args.env_kwargs)
    if args.workers is not None:
        from fastenv.vector.workers import TargetFactory  # workers re-resolve the target in their own processes

        factory = TargetFactory(args.target, args.env_kwargs)
    if args.insecure and args.auth is None:
        print(
            f"fastenv: WARNING: serving on {args.bind} without authentication (--insecure): "
            "anyone who can reach this port can drive the env",
            file=sys.stderr,
            flush=True,
        )
    server = EnvServer(
        factory=factory,
        bind=args.bind,
        port=args.port,
        mode=args.mode,
        insecure=args.insecure,
        max_message_bytes=args.max_message_bytes,
        limits=dataclasses.replace(Limits(), max_array_elements=args.max_array_elements, max_depth=args.max_depth),
        auth=args.auth,
        allow_trusted=args.allow_trusted,
        max_sessions=args.max_sessions,
        max_pending=args.max_pending,
        attach_grace=args.attach_grace,
        shm=not args.no_shm,
        shm_slots=args.shm_slots,
        shm_spin_us=args.spin_us,
        data_port=args.data_port,
        num_envs=args.num_envs,
        workers=args.workers,
        heartbeat_interval=args.heartbeat_interval,
        env_thread=args.env_thread,
        metrics_port=args.metrics_port,
        record=args.record,
    )
    signal.signal(signal.SIGTERM, lambda *_: server.stop(timeout=0))
    try:
        address = server.address  # binds; in shared mode this also builds the env
        _, data_port = server.data_address or ("", 0)
        stream = f"data stream on port {data_port}" if data_port else "no raw data stream"
        if server.metrics_port is not None:
            stream += f", metrics on http://{server.bind_host}:{server.metrics_port}/metrics"
        security = ""
        if args.auth is not None:
            assert server.auth is not None
            security = (
                f"; CURVE authentication on ({len(server.auth.authorized_clients)} authorized client key(s)"
                f"{', trusted mode' if args.allow_trusted else ''})"
            )
        print(
            f"fastenv: serving {args.target} ({args.mode}) on {address}, {stream}{security}",
            file=sys.stderr,
            flush=True,
        )
        print(READY_LINE.format(address=address), flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    print("fastenv: stopped", file=sys.stderr, flush=True)
    return 0


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
