"""kill -9 of clients (the server gives back all they held) and of the server (typed errors in time)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import Any

import pytest

import fastenv
from fastenv.errors import ConnectionLost, FastEnvError, SessionLost
from tests.faults.harness import COUNTER, Route, Usage, client_process, env_flag, settled_usage, wait_until

T = 20.0
HEARTBEAT_S = 0.25
LONG_S = env_flag("FASTENV_FAULTS_LONG")
KILLED_PER_MODE = 6 if LONG_S else 2  # clients killed mid-step, idle and mid-handshake, per storm
STORMS = 3 if LONG_S else 1
# What a storm may leave behind once its sessions are reclaimed: no mapping of a segment, and
# no more shared memory than one arena's worth of slack for unrelated processes on the machine.
SLACK = Usage(fds=2, threads=1, segment_mappings=0, shmem_kib=2048)
SETTLE_S = 15.0  # reclaiming takes two heartbeat intervals; this bounds a slow CI machine


def _envs_open(route: Route) -> int:
    """Envs the per-client server made and has not closed yet (the counting env leaves markers)."""
    return len(list(route.workdir.glob("opened-*"))) - len(list(route.workdir.glob("closed-*")))


def _one_clean_session(route: Route) -> None:
    with route.connect(timeout=T) as env:
        env.reset()
        env.step(0)


def test_killed_clients_leave_the_server_as_it_was(make_route, rng: random.Random, figures: dict) -> None:
    # per-client: every session has an env of its own, and the env is closed when the session ends
    route: Route = make_route("--heartbeat-interval", str(HEARTBEAT_S), "--mode", "per-client")
    assert route.server is not None
    pid = route.server.pid
    _one_clean_session(route)  # lazily made threads and pools belong to the baseline
    ok, baseline = settled_usage(pid, Usage.of(pid), Usage(0, 0, 0, 1 << 30), 0.5)
    worst_settle = 0.0
    after: Usage = baseline
    for _ in range(STORMS):
        with contextlib.ExitStack() as clients:
            modes = ["stepping", "idle", "handshakes"] * KILLED_PER_MODE
            processes = [clients.enter_context(client_process(route, mode)) for mode in modes]
            assert Usage.of(pid).segment_mappings > 0 or not route.uses_shm
            for process in rng.sample(processes, len(processes)):
                time.sleep(rng.uniform(0.0, 0.05))  # mid-step, mid-handshake: wherever it is
                process.kill()
        killed = time.monotonic()
        assert wait_until(lambda: _envs_open(route) == 0, SETTLE_S), f"{_envs_open(route)} sessions were not ended"
        ok, after = settled_usage(pid, baseline, SLACK, SETTLE_S)
        assert ok, f"the server did not give back what killed clients held: {after} against {baseline}\n{route.server.output()}"
        worst_settle = max(worst_settle, time.monotonic() - killed)
        _one_clean_session(route)  # and it still serves
    figures.update(
        route=route.name,
        clients_killed=STORMS * len(modes),
        baseline=baseline.__dict__,
        after=after.__dict__,
        worst_seconds_to_baseline=round(worst_settle, 2),
    )


def test_killed_server_under_load_gives_typed_errors_in_time(make_route, figures: dict) -> None:
    timeout = 3.0
    route: Route = make_route()
    assert route.server is not None
    clients = [route.connect(timeout=timeout, on_session_lost="recreate") for _ in range(3)]
    killed_at: list[float] = []
    outcomes: list[tuple[type[BaseException], float]] = []
    stop = threading.Event()

    def drive(env: Any) -> None:
        env.reset()
        while not stop.is_set():
            try:
                env.step(0)
            except BaseException as exc:  # recorded and checked below
                outcomes.append((type(exc), time.monotonic()))
                return

    with contextlib.ExitStack() as stack:
        for env in clients:
            stack.callback(env.close)
        drivers = [threading.Thread(target=drive, args=(env,)) for env in clients]
        for driver in drivers:
            driver.start()
        time.sleep(0.3)  # under load: every driver is stepping
        route.server.kill()
        killed_at.append(time.monotonic())
        for driver in drivers:
            driver.join(timeout + T)
        stop.set()
        assert len(outcomes) == len(clients), outcomes
        worst = max(when - killed_at[0] for _, when in outcomes)
        for kind, _ in outcomes:
            assert issubclass(kind, FastEnvError), kind
        assert worst <= timeout + 0.5, f"a call took {worst:.2f}s to fail after the kill (timeout {timeout}s)"

        route.start_server()  # a new server on the same ports: each client recreates its session
        recreated = 0
        for env in clients:
            try:
                env.step(0)
            except SessionLost as lost:
                assert lost.recreated
                recreated += 1
            env.step(0)  # and steps again
            route.check_route(env)
    figures.update(
        route=route.name,
        errors=sorted({kind.__name__ for kind, _ in outcomes}),
        worst_seconds_to_typed_error=round(worst, 3),
        sessions_recreated=recreated,
    )
    assert recreated == len(clients)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_calls_to_a_server_that_is_gone_fail_at_once(serve, transport: str) -> None:
    server = serve(COUNTER)
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as env:
        env.reset()
        server.kill()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(ConnectionLost):
                env.step(0)
            # its port refuses connections, so no server listens: no waiting for the call's timeout
            assert time.monotonic() - started < T / 10


def test_killed_shm_clients_unmap_their_arenas_at_once(tmp_path) -> None:
    # Few connections close here, so no storm-driven garbage collection hides a mapping kept alive.
    with Route("shm", tmp_path, ("--heartbeat-interval", str(HEARTBEAT_S), "--mode", "per-client")) as route:
        server = route.start_server()
        with contextlib.ExitStack() as clients:
            for _ in range(3):
                clients.enter_context(client_process(route, "stepping"))
            assert Usage.of(server.pid).segment_mappings >= 3
        assert wait_until(lambda: _envs_open(route) == 0, SETTLE_S), f"{_envs_open(route)} sessions were not ended"
        assert wait_until(lambda: Usage.of(server.pid).segment_mappings == 0, SETTLE_S), Usage.of(server.pid)
