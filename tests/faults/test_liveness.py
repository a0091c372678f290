"""Sessions idle and busy for longer than every grace and heartbeat period stay open and exact."""

from __future__ import annotations

import time

import pytest

from fastenv.errors import SessionLost
from tests.faults.harness import Route, env_flag

T = 20.0
HEARTBEAT_S = 0.2
GRACE_S = 0.3
# Longer than the attach grace and than several heartbeat intervals (the long pass: much longer).
IDLE_S = max(4 * GRACE_S, env_flag("FASTENV_FAULTS_LONG") / 20)


def test_idle_and_busy_past_every_grace_and_heartbeat(make_route, figures: dict) -> None:
    route: Route = make_route("--heartbeat-interval", str(HEARTBEAT_S), "--attach-grace", str(GRACE_S))
    with route.connect(timeout=T, heartbeat_interval=HEARTBEAT_S) as env:
        session = env.session_id
        env.reset()
        steps = 0
        time.sleep(IDLE_S)  # idle: the scenario itself, not a wait for the server
        busy_until = time.monotonic() + IDLE_S
        while time.monotonic() < busy_until:  # busy
            steps += 1
            assert env.step(0)[0][0] == steps
        steps += 1
        assert env.step(-int(3 * HEARTBEAT_S * 1000))[0][0] == steps  # one step longer than the heartbeat timeout
        time.sleep(IDLE_S)
        steps += 1
        assert env.step(0)[0][0] == steps
        assert env.get_state()["total"] == steps
        assert env.session_id == session
    assert route.server is not None and "reclaimed" not in route.server.output(), route.server.output()
    figures.update(route=route.name, idle_s=IDLE_S, busy_steps=steps)


@pytest.mark.parametrize("policy", ["raise", "recreate"])
def test_a_session_ended_while_its_client_was_away_is_session_lost(make_route, route_name: str, policy: str) -> None:
    if route_name.startswith("shm"):
        pytest.skip("a shared-memory session ends only with its client's process, which is still here")
    route: Route = make_route("--heartbeat-interval", str(HEARTBEAT_S))
    with route.connect(timeout=T, on_session_lost=policy) as env:
        env.reset(seed=5)
        env.step(0)
        route.cut_arrivals(1_000_000)  # the client is away: cut off, and every reconnection cut too
        route.cut()
        assert route.server is not None
        assert route.server.wait_for_output("reclaimed", timeout=T), route.server.output()
        route.let_arrivals_through()
        with pytest.raises(SessionLost) as caught:
            env.step(0)
        if policy == "recreate":
            assert caught.value.recreated and caught.value.reset_result[1] == {"seed": 5}
            env.step(0)  # the new session steps
            route.check_route(env)
        else:
            assert not caught.value.recreated
            with pytest.raises(SessionLost):  # and stays lost
                env.step(0)
