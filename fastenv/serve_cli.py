"""``fastenv serve``: its options (shared by every command that serves an env) and the command itself."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from fastenv.codec import Limits
from fastenv.recording.recorder import DEFAULT_MAX_RECORDS
from fastenv.server_process import READY_LINE
from fastenv.session.config import ATTACH_GRACE_S, DEFAULT_MAX_PENDING, DEFAULT_MAX_SESSIONS
from fastenv.session.envthread import ENV_THREADS
from fastenv.shm.plane import DEFAULT_SHAPE


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: ``text`` as a JSON object (``--env-kwargs``)."""
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


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command to the ``fastenv`` parser."""
    serve = commands.add_parser(
        "serve",
        help="serve an env",
        description="Serve an env. Prints one line `fastenv: ready <address>` once it accepts connections.",
    )
    serve.add_argument("target", help="module:callable, path/to/file.py:callable, or a Gymnasium id (CartPole-v1)")
    add_server_options(serve)
    serve.set_defaults(handler=serve_command)


def add_server_options(serve: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``fastenv serve``'s options (all but TARGET) to a parser: commands that serve take them alike."""
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
    serve.add_argument("--env-kwargs", type=json_object, default={}, help="JSON object passed to the env factory")
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
        "--autoreset",
        choices=("next-step", "same-step"),
        default=None,
        help="with --num-envs: how the envs autoreset, declared in metadata['autoreset_mode'] so a plain "
        "FastVectorEnv follows it (same-step: final_obs / final_info in the infos); fixed for every client in "
        "shared mode, each client's default per client (default: next-step, which clients may switch)",
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
    serve.add_argument(
        "--record-queue",
        type=int,
        default=DEFAULT_MAX_RECORDS,
        metavar="N",
        help=f"with --record: calls waiting for the writer before further calls are dropped (default: {DEFAULT_MAX_RECORDS})",
    )
    serve.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")


def serve_command(args: argparse.Namespace) -> int:
    """Serve ``args.target`` with the options :func:`add_server_options` parsed; print the ready line; run until stopped."""
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
        autoreset_mode=args.autoreset,
        heartbeat_interval=args.heartbeat_interval,
        env_thread=args.env_thread,
        metrics_port=args.metrics_port,
        record=args.record,
        record_queue=args.record_queue,
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
