"""Reconnection with exactly-once calls, the same on every route.

The counting env's observation is the total number of steps it applied, so
each reply says whether a step was lost or applied twice. The route's proxies
cut its connections (:meth:`~tests.routes.Route.cut`), also as they arrive
(:meth:`~tests.routes.Route.cut_arrivals`). On the shared-memory routes only
the control connection can be cut: calls travel in the arena, so a cut there
loses no call, and the same test checks that the call is answered once and
the control connection comes back. The fault suite (``tests/faults``) runs
long random schedules of the same; these are the short deterministic cases.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import fastenv
from tests.polling import wait_until
from tests.routes import Route

from .conftest import T

HEARTBEAT_S = 0.2
# a short heartbeat: a session whose client went away is reclaimed within a second
SERVER_ARGS = ("--heartbeat-interval", str(HEARTBEAT_S))


@pytest.fixture(autouse=True)
def arrivals_let_through(route: Route) -> Iterator[None]:
    """No test leaves the proxies cutting new connections for the next one."""
    yield
    route.let_arrivals_through()


def _total(env: fastenv.FastRemoteEnv) -> int:
    return int(env.get_state()["total"])


def _control_connection_back(env: fastenv.FastRemoteEnv) -> bool:
    """Whether a PING is answered within a bounded wait (a ping is a probe: a drop while it is pending raises)."""

    def answered() -> bool:
        try:
            env.ping(timeout=1.0)
        except (fastenv.ConnectionLost, fastenv.FastEnvTimeout):
            return False
        return True

    return wait_until(answered, T, interval=0.05)


def _assert_resumed(route: Route, session: str) -> None:
    """Where calls travel on a connection, the server took the session up again (the call was re-sent on it)."""
    if not route.uses_shm:
        assert route.server is not None
        assert route.server.wait_for_output(f"session {session} resumed", timeout=T), route.server.output()


def test_a_step_running_when_its_connection_is_cut_is_answered_once(route: Route, env) -> None:
    marker = route.workdir / "slow-started"
    marker.unlink(missing_ok=True)
    env.reset()
    total, session = _total(env), env.session_id
    env.step_async(-300)  # a slow step (0.3 s), the same structure as a plain one
    assert wait_until(marker.exists, T), "the slow step did not start"
    route.cut()  # while it runs: its reply cannot come back on this connection
    assert env.step_wait(timeout=T)[0][0] == total + 1  # answered from the server's record, not run again
    assert _total(env) == total + 1
    assert _control_connection_back(env)  # (on shm: the only connection that was cut)
    assert env.step(0)[0][0] == total + 2
    assert env.session_id == session
    route.check_route(env)
    _assert_resumed(route, session)


def test_step_async_then_a_cut_then_step_wait_gives_the_one_result(route: Route, env) -> None:
    env.reset()
    total, session = _total(env), env.session_id
    for number in range(1, 4):
        env.step_async(0)
        route.cut()  # right after it was sent: on its way, running, or answered
        obs, reward, *_ = env.step_wait(timeout=T)
        assert obs[0] == total + number, f"step {number}: a step was lost or applied twice"
    assert _total(env) == total + 3
    assert env.session_id == session
    route.check_route(env)


def test_a_step_after_a_cut_whose_reconnections_are_cut_too_is_applied_once(route: Route, env) -> None:
    env.reset()
    total, session = _total(env), env.session_id
    route.cut_arrivals(2)  # the next two connections on each port are cut as they arrive
    route.cut()
    assert env.step(0)[0][0] == total + 1  # sent on a dead connection: re-sent once the session is resumed
    assert _control_connection_back(env)
    assert _total(env) == total + 1
    assert env.session_id == session
    route.check_route(env)  # still on its route, not fallen back to another
    _assert_resumed(route, session)


def test_a_call_after_the_server_ended_the_session_is_session_lost(route: Route, env) -> None:
    if route.uses_shm:
        pytest.skip("a shared-memory session ends only when its client's process exits, and this one is running")
    env.reset()
    env.step(0)
    route.cut_arrivals(1_000_000)  # the client is away: cut off, and every reconnection cut too
    route.cut()
    assert route.server is not None
    assert route.server.wait_for_output(f"session {env.session_id} reclaimed", timeout=T), route.server.output()
    route.let_arrivals_through()
    with pytest.raises(fastenv.SessionLost) as caught:
        env.step(0)
    assert not caught.value.recreated
    with pytest.raises(fastenv.SessionLost):  # and stays lost
        env.step(0)


def test_a_call_after_the_server_restarted_is_session_lost(route: Route, connect) -> None:
    env = connect()
    recreating = connect(on_session_lost="recreate")
    env.reset()
    recreating.reset(seed=5)
    assert route.server is not None
    route.server.stop(timeout=T)
    route.start_server()  # the same ports, a new server: it knows nothing of these sessions
    with pytest.raises(fastenv.SessionLost) as caught:
        env.step(0)
    assert not caught.value.recreated
    with pytest.raises(fastenv.SessionLost):  # and stays lost
        env.step(0)
    with pytest.raises(fastenv.SessionLost) as caught:
        recreating.step(0)
    assert caught.value.recreated and caught.value.reset_result[1] == {"seed": 5}
    assert recreating.step(0)[0][0] == 1  # the new server's env, reset, stepped once
    route.check_route(recreating)
