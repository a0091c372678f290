"""``fastenv proxy LISTEN TARGET``: a fastenv server behind a network with faults (see :mod:`fastenv.proxy`)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any

from fastenv.control.address import normalize_address, split_endpoint
from fastenv.proxy import FaultProxy, LinkProfile

READY = "fastenv proxy: ready"


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``proxy`` command to the ``fastenv`` parser."""
    proxy = commands.add_parser(
        "proxy",
        help="put a network with latency, jitter, a bandwidth cap and cuts between clients and a server",
        description=(
            "Forward LISTEN (host:port) to the fastenv server at TARGET, and the server's data-stream and "
            "observer ports on the same numbers of LISTEN's host (asked from the server's handshake), "
            "injecting faults in each direction. Clients connect to LISTEN. LISTEN's host must differ "
            "from TARGET's when the ports are the same (127.0.0.2 works on one machine)."
        ),
    )
    proxy.add_argument("listen", metavar="LISTEN", help="host:port clients connect to")
    proxy.add_argument("target", metavar="TARGET", help="host:port of the fastenv server")
    proxy.add_argument("--latency-ms", type=float, default=0.0, help="one-way delay added each direction")
    proxy.add_argument("--jitter-ms", type=float, default=0.0, help="up to this much more delay per chunk")
    proxy.add_argument("--bandwidth-mbit", type=float, default=None, help="cap each direction (megabits/s)")
    proxy.add_argument("--cut-every", type=float, default=None, metavar="S", help="reset every connection each S s")
    proxy.add_argument("--cut-for", type=float, default=0.0, metavar="S", help="then refuse connections for S s")
    proxy.add_argument("--seed", type=int, default=None, help="seed of the jitter (printed when not given)")
    proxy.add_argument("--port", type=int, action="append", default=[], help="forward this port too (repeatable)")
    proxy.add_argument("--no-probe", action="store_true", help="do not ask the server for its other ports")
    proxy.add_argument("--auth", default=None, metavar="DIR", help="client keys, to ask a server with --auth")
    proxy.set_defaults(handler=run)


def _split(address: str) -> tuple[str, int]:
    return split_endpoint(normalize_address(address))


def server_ports(target: str, auth: str | None) -> list[int]:
    """The data-stream and observer ports the server at ``target`` announces in its handshake."""
    from fastenv.client import FastRemoteEnv

    options: dict[str, Any] = {"transport": "tcp", "connect_timeout": 10.0, "timeout": 10.0}
    if auth is not None:
        options["auth"] = auth
    with FastRemoteEnv(target, **options) as probe:
        welcome = probe._session.welcome
    ports = []
    for offer in (welcome.get("tcp"), welcome.get("observe")):
        if isinstance(offer, dict) and isinstance(offer.get("port"), int):
            ports.append(offer["port"])
    return ports


def run(args: argparse.Namespace) -> int:
    """Serve the proxies until SIGINT or SIGTERM."""
    listen_host, listen_port = _split(args.listen)
    target_host, target_port = _split(args.target)
    profile = LinkProfile(
        latency=args.latency_ms / 1000,
        jitter=args.jitter_ms / 1000,
        bandwidth=None if args.bandwidth_mbit is None else args.bandwidth_mbit * 1e6 / 8,
        cut_every=args.cut_every,
        cut_for=args.cut_for,
        seed=args.seed,
    )
    if profile.seed is None:
        profile = LinkProfile(**{**profile.__dict__, "seed": FaultProxy.new_seed()})
    extra = list(args.port) if args.no_probe else [*args.port, *server_ports(args.target, args.auth)]
    pairs = [((listen_host, listen_port), (target_host, target_port))]
    pairs += [((listen_host, port), (target_host, port)) for port in dict.fromkeys(extra)]
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        for listen, target in pairs:
            stack.enter_context(FaultProxy(listen, target, profile))
        forwarded = ", ".join(f"{listen[1]}->{target[0]}:{target[1]}" for listen, target in pairs)
        print(f"{READY} {listen_host} ({forwarded}), seed {profile.seed}", flush=True)
        stop.wait()
    print("fastenv proxy: stopped", file=sys.stderr, flush=True)
    return 0
