"""Connections cut at any moment: every step is applied exactly once and the session stays usable.

The counting env's observation is the total number of steps it applied, so
each reply says whether a step was lost or applied twice.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from tests.faults.harness import Route, env_flag, wait_until

T = 20.0  # bound on every blocking call
CUT_STEPS = 100  # steps of the short pass
LONG_S = env_flag("FASTENV_FAULTS_LONG")


def _step_checked(env: Any, action: int, expected: int) -> None:
    obs, reward, *_ = env.step_wait() if action is None else env.step(action)
    assert obs[0] == expected, f"step {expected} came back as {obs[0]}: a step was lost or applied twice"


def test_random_cuts_apply_every_step_once(make_route, rng: random.Random, figures: dict) -> None:
    route: Route = make_route()
    cuts = steps = 0
    started = time.monotonic()
    with route.connect(timeout=T) as env:
        session = env.session_id
        env.reset()
        while steps < CUT_STEPS or time.monotonic() - started < LONG_S:
            draw = rng.random()
            if draw < 0.15:  # between calls
                route.cut()
                cuts += 1
                _step_checked(env, 0, steps + 1)
            elif draw < 0.35:  # while the step is on its way or running (a slow step, same structure)
                env.step_async(-rng.randint(1, 12))
                time.sleep(rng.uniform(0.0, 0.012))
                route.cut()
                cuts += 1
                _step_checked(env, None, steps + 1)  # type: ignore[arg-type]
            else:
                _step_checked(env, 0, steps + 1)
            steps += 1
        assert env.get_state()["total"] == steps
        assert env.session_id == session  # resumed every time, never recreated
        route.check_route(env)
        if route.name.endswith("-env-thread"):  # each new stream was taken up by the env's thread again
            assert env.call("session_threads") == []
    figures.update(route=route.name, steps=steps, cuts_survived=cuts, seconds=round(time.monotonic() - started, 1))


def test_a_cut_that_loses_a_step_reply_leaves_the_session_usable(make_route) -> None:
    route: Route = make_route()
    with route.connect(timeout=T) as env:
        env.reset()
        _step_checked(env, 0, 1)
        env.step_async(-300)  # the same structure as every other step
        assert wait_until((route.workdir / "slow-started").exists, T)
        route.cut()
        _step_checked(env, None, 2)  # type: ignore[arg-type]  # answered from the server's record
        for expected in range(3, 8):  # later calls of that structure still decode on the new stream
            _step_checked(env, 0, expected)
        assert env.get_state()["total"] == 7


def test_a_reconnection_whose_own_connection_is_cut(make_route, figures: dict) -> None:
    route: Route = make_route()
    with route.connect(timeout=T) as env:
        env.reset()
        expected = 0
        for arrivals in (1, 2, 4):  # the next connections are cut too, as they arrive
            route.cut_arrivals(arrivals)
            route.cut()
            expected += 1
            _step_checked(env, 0, expected)
        assert env.get_state()["total"] == expected
        route.check_route(env)  # still on its route, not fallen back to another
    figures.update(route=route.name, arrivals_cut=route.control.arrivals_cut + (route.data.arrivals_cut if route.data else 0))


def test_a_client_created_while_its_connections_are_cut(make_route) -> None:
    route: Route = make_route()
    route.cut_arrivals(2)
    with route.connect(timeout=T, connect_timeout=T) as env:  # check_route: the data stream too, not a fallback
        env.reset()
        _step_checked(env, 0, 1)


def test_a_handshake_cut_while_pending_is_sent_again(make_route) -> None:
    route: Route = make_route("--mode", "per-client", init_delay=0.4)  # each session builds a slow env
    made: list[Any] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            made.append(route.connect(timeout=T, connect_timeout=T))
        except BaseException as exc:  # reported below
            errors.append(exc)

    creator = threading.Thread(target=create)
    creator.start()
    assert wait_until(lambda: any(route.workdir.glob("init-started-*")), T)
    route.cut()  # the HELLO is being answered: its reply is lost
    creator.join(T + 5)
    assert not errors, errors
    with made[0] as env:
        env.reset()
        _step_checked(env, 0, 1)
