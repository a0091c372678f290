"""Deadlines on every route: a controller that stops stepping gets its fallback applied, each period.

Shared mode: the controller holds the lease; a bystander client reads what
happened (attribute reads and ``get_state`` are allowed while another client
holds the lease). ``test_deadline_per_client.py`` runs the same tests on a
per-client server. Periods are short (50 ms); timings are checked loosely
(a loaded CI machine), counts and order strictly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import fastenv
from fastenv.errors import ControlDenied

SERVER_ARGS = ("--mode", "shared")
PERIOD = 0.05
T = 20.0


def per_client(route: Any) -> bool:
    return "per-client" in route.server_args


def controller(connect: Any, route: Any) -> fastenv.FastRemoteEnv:
    return connect() if per_client(route) else connect(role="controller")


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``predicate`` (a server round trip each time) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_late_step_gets_the_fallback_each_period_until_the_controller_is_back(connect, route) -> None:
    env = controller(connect, route)
    env.reset()
    env.set_deadline(PERIOD, fastenv.Fallback.method("safe_stop"), tolerance=PERIOD / 2)
    assert env.deadline_report.armed is False  # armed by the first step
    env.step(0)
    last_step = time.time()
    wait_for(lambda: env.deadline_report.missed >= 4, what="four misses")
    report = env.deadline_report
    assert report.period == PERIOD and report.fallback == "method" and report.armed
    assert report.recent[0] >= last_step + PERIOD  # never before the period ran out
    gaps = [later - earlier for earlier, later in zip(report.recent, report.recent[1:])]
    assert all(gap > PERIOD / 2 for gap in gaps), gaps  # once per period, not a burst
    assert env.safe_stops >= 4
    # back in control: stepping within the period applies no fallback
    missed = env.deadline_report.missed
    for _ in range(10):
        env.step(0)
        time.sleep(PERIOD / 5)
    assert env.deadline_report.missed <= missed + 1  # one may have fired while we read the report
    env.clear_deadline()
    assert env.deadline_report.period == 0.0


def test_repeat_steps_the_last_action_and_observers_see_fallbacks(connect, route) -> None:
    env = controller(connect, route)
    env.reset()
    env.set_deadline(PERIOD)  # Fallback.repeat() by default
    observer = None if per_client(route) else connect(role="observer")
    env.step(7)
    total = env.get_state()["total"]
    wait_for(lambda: env.get_state()["total"] >= total + 3, what="three repeated steps")
    assert env.deadline_report.missed >= 3 and env.deadline_report.fallback == "repeat"
    if observer is not None:
        transition = observer.next_transition(timeout=T)
        while not transition.fallback:
            transition = observer.next_transition(timeout=T)
        assert transition.method == "step" and transition.args == (7,)


def test_only_a_controller_sets_a_deadline(connect, route) -> None:
    if per_client(route):
        pytest.skip("every client of a per-client server controls its own env")
    bystander = connect()
    with pytest.raises(ControlDenied, match="lease"):
        bystander.set_deadline(PERIOD)
    with pytest.raises(ValueError):
        fastenv.Fallback.method("_private")


def test_a_cut_connection_gets_the_fallback_and_the_client_resumes_control(connect, route) -> None:
    env = controller(connect, route)
    env.reset()
    env.set_deadline(PERIOD, fastenv.Fallback.method("safe_stop"))
    stops = env.safe_stops
    env.step(0)
    server = route.server
    assert server is not None
    route.cut_arrivals(10**6)  # the client cannot come back yet
    route.cut()
    try:
        assert server.wait_for_output(f"session {env.session_id} missed its deadline", timeout=T), server.output()
    finally:
        route.let_arrivals_through()
    env.step(0)  # reconnects and resumes the session: in control again
    assert server.wait_for_output(f"session {env.session_id} is back in control", timeout=T), server.output()
    assert env.deadline_report.missed >= 1 and env.safe_stops >= stops + 1


_CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import fastenv
    address, options = sys.argv[1], json.loads(sys.argv[2])
    env = fastenv.FastRemoteEnv(address, timeout=20, **options)
    env.reset()
    env.set_deadline(0.05, fastenv.Fallback.method("safe_stop"))
    env.step(0)
    print("stepping", env.session_id, flush=True)
    while True:
        env.step(0)
        time.sleep(0.01)
    """
)


@pytest.mark.parametrize("fate", ["paused", "killed"])
def test_a_paused_or_killed_controller_process_gets_the_fallback(route, fate: str) -> None:
    options = route.client_options()
    if not per_client(route):
        options.update(role="controller", lease_timeout=T)  # the last test's controller may still be closing
    env_vars = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
    server = route.server
    assert server is not None
    with subprocess.Popen(
        [sys.executable, "-c", _CLIENT, route.address, json.dumps(options)],
        stdout=subprocess.PIPE, text=True, env=env_vars,
    ) as child:
        _check_fallbacks(route, server, child, fate)


def _fallback_logged(server: Any, session_id: str, timeout: float) -> bool:
    """Whether the server applied ``session_id``'s fallback (a missed deadline, or its session ending)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.output().splitlines():
            if f"session {session_id} missed its deadline" in line or f"session {session_id} ends: applying" in line:
                return True
        server.wait_for_output(f"session {session_id} ", timeout=0.05)
    return False


def _check_fallbacks(route: Any, server: Any, child: subprocess.Popen, fate: str) -> None:
    watcher = None
    try:
        assert child.stdout is not None
        word, session_id = child.stdout.readline().split()
        assert word == "stepping"
        if not per_client(route):  # a bystander sees the fallbacks applied to the shared env
            watcher = fastenv.FastRemoteEnv(route.address, timeout=T, **route.client_options())
            first = watcher.safe_stops
        os.kill(child.pid, signal.SIGSTOP if fate == "paused" else signal.SIGKILL)
        # a killed client's session may end first (on shared memory, at once): its fallback applies as it ends
        assert _fallback_logged(server, session_id, T), server.output()
        if watcher is not None:
            wait_for(lambda: watcher.safe_stops >= first + 1, what="the fallback applied to the shared env")
        if fate == "paused":
            if watcher is not None:
                wait_for(lambda: watcher.safe_stops >= first + 3, what="a fallback every period")
            os.kill(child.pid, signal.SIGCONT)
            assert server.wait_for_output(f"session {session_id} is back in control", timeout=T), server.output()
    finally:
        if watcher is not None:
            watcher.close()
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
        child.wait(T)
