"""``fastenv proxy``: latency, jitter, a bandwidth cap and cuts, and fastenv's exactly-once steps through them."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fastenv
from fastenv.proxy import FaultProxy, LinkProfile
from fastenv.proxy_cli import READY
from tests.proxy import free_port

COUNTER = f"{Path(__file__).resolve().parent / 'envs' / 'session_envs.py'}:Counter"
T = 30.0


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A TCP server on 127.0.0.1 that echoes what it receives, one thread per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:  # the proxy reset the connection
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[:2]
    stop.set()
    server.close()
    thread.join(5)


def round_trip(address: tuple[str, int], payload: bytes) -> float:
    with socket.create_connection(address, timeout=T) as conn:
        began = time.monotonic()
        conn.sendall(payload)
        received = bytearray()
        while len(received) < len(payload):
            received += conn.recv(65536)
        elapsed = time.monotonic() - began
    assert bytes(received) == payload
    return elapsed


def test_latency_and_jitter_delay_each_direction_and_keep_order(echo_server) -> None:
    profile = LinkProfile(latency=0.03, jitter=0.02, seed=5)
    with FaultProxy(("127.0.0.1", 0), echo_server, profile) as proxy:
        payload = bytes(random.Random(1).randbytes(300_000))  # many chunks, each jittered: order must hold
        assert round_trip(proxy.address, payload) >= 2 * 0.03
        assert proxy.forwarded == {"up": len(payload), "down": len(payload)} and proxy.seed == 5


def test_bandwidth_cap_paces_delivery(echo_server) -> None:
    with FaultProxy(("127.0.0.1", 0), echo_server, LinkProfile(bandwidth=1_000_000)) as proxy:
        assert round_trip(proxy.address, b"x" * 200_000) >= 0.2  # 200 kB at 1 MB/s, at least once


def test_cuts_reset_connections_and_arrivals(echo_server) -> None:
    with FaultProxy(("127.0.0.1", 0), echo_server) as proxy:
        conn = socket.create_connection(proxy.address, timeout=T)
        conn.sendall(b"a")
        assert conn.recv(1) == b"a"
        proxy.cut()
        with pytest.raises(OSError):
            conn.sendall(b"b")
            if not conn.recv(1):
                raise ConnectionResetError("closed")
        conn.close()
        proxy.cut_arrivals(1)
        # The reset may land while connect() is still waiting for its answer (a timed connect polls, then reads
        # SO_ERROR), so it can surface from connect() itself as well as from the first send or receive.
        with pytest.raises(OSError):
            with socket.create_connection(proxy.address, timeout=T) as refused:
                refused.sendall(b"c")
                if not refused.recv(1):
                    raise ConnectionResetError("closed")
        assert round_trip(proxy.address, b"d") >= 0 and proxy.cuts == 1 and proxy.arrivals_cut == 1


def test_steps_are_applied_exactly_once_through_a_cutting_delaying_proxy(serve) -> None:
    """``fastenv proxy`` between a client and a server: scheduled cuts, latency and jitter."""
    port, data_port = free_port(), free_port()
    server = serve(COUNTER, "--port", str(port), "--data-port", str(data_port))
    seed = random.SystemRandom().randrange(2**16)
    print(f"proxy seed {seed}")
    command = [
        sys.executable, "-m", "fastenv", "proxy", f"127.0.0.2:{port}", server.address,
        "--latency-ms", "2", "--jitter-ms", "3", "--cut-every", "0.4", "--cut-for", "0.05", "--seed", str(seed),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proxy:
        try:
            assert proxy.stdout is not None
            ready = proxy.stdout.readline()
            assert ready.startswith(READY) and f"{data_port}->127.0.0.1:{data_port}" in ready, ready
            with fastenv.FastRemoteEnv(f"127.0.0.2:{port}", transport="tcp", timeout=T) as env:
                assert f"port {data_port}" in env.transport_reason
                env.reset()
                first = env.get_state()["total"]
                began = time.monotonic()
                steps = 0
                while time.monotonic() - began < 2.0 or steps < 50:  # several scheduled cuts
                    obs = env.step(0)[0]
                    steps += 1
                    assert obs[0] == first + steps  # each step applied once: never lost, never twice
                assert env.get_state()["total"] == first + steps
        finally:
            proxy.terminate()
            proxy.wait(T)


def test_client_stats_see_the_injected_delay_each_way(serve) -> None:
    """``env.stats``: round trips, and one-way delays corrected for the clock offset (one host here: ~0)."""
    port, data_port = free_port(), free_port()
    serve(COUNTER, "--port", str(port), "--data-port", str(data_port))
    profile = LinkProfile(latency=0.01, seed=3)
    with (
        FaultProxy(("127.0.0.2", port), ("127.0.0.1", port), profile),
        FaultProxy(("127.0.0.2", data_port), ("127.0.0.1", data_port), profile),
        fastenv.FastRemoteEnv(f"127.0.0.2:{port}", transport="tcp", timeout=T) as env,
    ):
        env.reset()
        for _ in range(10):
            env.step(0)
        stats = env.stats
        assert stats.calls == 11 and stats.pings == 8
        assert stats.round_trip_max >= stats.round_trip_p99 >= stats.round_trip_p50 >= 2 * profile.latency
        assert abs(stats.clock_offset) < profile.latency / 2  # one clock: the estimate finds no offset
        assert stats.one_way_up >= profile.latency * 0.9 and stats.one_way_down >= profile.latency * 0.9
