"""Hundreds of junk, silent, half-open and slow connections while a real client keeps stepping."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import statistics
import threading
import time

from fastenv.control.auth import AuthConfig
from tests.faults.harness import Route, Usage, env_flag, settled_usage
from tests.hostile import hello, raw_dealer, zmtp_ready_dealer

T = 20.0
LONG_S = env_flag("FASTENV_FAULTS_LONG")
PER_KIND = 200 if LONG_S else 50  # connections of each kind, per port
MEASURED_STEPS = 2000 if LONG_S else 300
KINDS = ("junk", "silent", "half-open", "slow")
DRIP_S = 0.05  # a slow connection sends one byte of a greeting this often


def _open(kind: str, host: str, port: int, rng: random.Random) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=T)
    if kind == "junk":
        sock.sendall(rng.choice([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(rng.randint(1, 2048))]))
    elif kind == "half-open":  # the start of a greeting, then the peer closes its sending side
        sock.sendall(zmtp_ready_dealer()[: rng.randint(1, 20)])
        sock.shutdown(socket.SHUT_WR)
    return sock


def _drip(socks: list[socket.socket], stop: threading.Event) -> None:
    greeting = zmtp_ready_dealer()
    sent = 0
    while not stop.wait(DRIP_S):
        for sock in socks:
            try:
                sock.send(greeting[sent % len(greeting) : sent % len(greeting) + 1])
            except OSError:
                pass
        sent += 1


def _latencies(env, count: int, first: int) -> list[float]:
    taken = []
    for expected in range(first, first + count):
        started = time.perf_counter()
        obs, *_ = env.step(0)
        taken.append(time.perf_counter() - started)
        assert obs[0] == expected
    return taken


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def test_junk_storm_while_a_client_steps(make_route, rng: random.Random, figures: dict) -> None:
    route: Route = make_route()
    assert route.server is not None
    pid = route.server.pid
    host, port = "127.0.0.1", route.port
    auth = AuthConfig.for_client(route.keys) if route.keys is not None else None
    with raw_dealer(route.server.address, auth=auth) as probe:
        offer = hello(probe, transport="tcp")
    ports = [port, offer["observe"]["port"]]
    if offer.get("tcp"):
        ports.append(offer["tcp"]["port"])
    with route.connect(timeout=T) as env:
        env.reset()
        _latencies(env, 100, 1)  # warm up
        before = _latencies(env, MEASURED_STEPS, 101)
        baseline = Usage.of(pid)
        stop = threading.Event()
        with contextlib.ExitStack() as held:
            slow: list[socket.socket] = []
            for each in ports:
                for kind in KINDS:
                    for _ in range(PER_KIND):
                        sock = held.enter_context(_open(kind, host, each, rng))
                        if kind == "slow":
                            slow.append(sock)
            dripper = threading.Thread(target=_drip, args=(slow, stop), daemon=True)
            dripper.start()
            held.callback(dripper.join, T)
            held.callback(stop.set)
            during = _latencies(env, MEASURED_STEPS, 101 + MEASURED_STEPS)
            storm = len(ports) * len(KINDS) * PER_KIND
        route.check_route(env)
        assert env.get_state()["total"] == 100 + 2 * MEASURED_STEPS
    ok, after = settled_usage(pid, baseline, Usage(2, 1, 0, 2048), T)
    assert ok, f"the storm's connections left something behind: {after} against {baseline}"
    p99_before, p99_during = _p99(before), _p99(during)
    figures.update(
        route=route.name,
        connections=storm,
        p99_us_before=round(p99_before * 1e6),
        p99_us_during=round(p99_during * 1e6),
        p50_us_before=round(statistics.median(before) * 1e6),
        p50_us_during=round(statistics.median(during) * 1e6),
    )
    # A sanity bound, not a benchmark: a server blocked by any one of them would cost seconds.
    assert p99_during < 10 * p99_before + 0.05, figures
