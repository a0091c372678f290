"""Observers receive every transition a driver causes, the same on every route.

An observer (``role="observer"``) subscribes to the server's transition
stream (a third port, proxied by the route; CURVE-authenticated with the
route's client keys where the route uses authentication) and receives each
call that changed the shared env: its number, method, arguments and result.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import pytest

from fastenv.errors import FastEnvTimeout

from assertions import assert_same

from .conftest import T

SERVER_ARGS = ("--mode", "shared")  # the default, said here: observers exist only on a shared env


def test_an_observer_receives_each_transition_in_order_as_the_driver_got_it(connect) -> None:
    observer = connect(role="observer")
    driver = connect()
    calls: list[tuple[str, tuple, dict, Any]] = []

    def drive(method: str, *args: Any, **kwargs: Any) -> None:
        # a copy of what the driver got, as it got it (see test_kept_values.py: on shm a kept
        # reply can be overwritten later, which is not what this test is about)
        calls.append((method, args, kwargs, copy.deepcopy(driver.invoke(method, args, kwargs))))

    drive("reset", seed=3)
    for action in (0, 5, 2):
        drive("step", action)
    drive("echo", {"frame": np.arange(6, dtype=np.uint8).reshape(2, 3), "tag": "any method"})
    drive("set_state", {"steps": 1, "total": 0})
    drive("step", 7)
    driver.get_state()  # reads are not transitions
    driver.total_steps

    seen = [observer.next_transition(timeout=T) for _ in calls]
    first = seen[0].seq
    assert [t.seq for t in seen] == list(range(first, first + len(calls)))  # consecutive, in order
    for transition, (method, args, kwargs, result) in zip(seen, calls):
        assert transition.method == method
        assert_same(transition.args, args)
        assert_same(transition.kwargs, kwargs)
        assert_same(transition.result, result)
        assert transition.session == driver.session_id
    assert observer.skipped == 0
    with pytest.raises(FastEnvTimeout):  # nothing more: the reads were not published
        observer.next_transition(timeout=0.05)


def test_an_observer_that_keeps_up_skips_nothing(connect) -> None:
    observer = connect(role="observer")
    driver = connect()
    driver.reset()
    previous = observer.next_transition(timeout=T)
    for _ in range(20):  # read each transition as it comes
        obs, reward, *_ = driver.step(1)
        transition = observer.next_transition(timeout=T)
        assert transition.seq == previous.seq + 1 and transition.method == "step" and transition.args == (1,)
        assert_same(transition.result[0], obs)
        assert transition.result[1] == reward
        previous = transition
    assert observer.skipped == 0


def test_next_transition_times_out_when_nothing_happens(connect) -> None:
    observer = connect(role="observer")
    reader = connect()
    reader.get_state()  # reads by others change nothing
    assert reader.total_steps == observer.total_steps
    started = time.monotonic()
    with pytest.raises(FastEnvTimeout):
        observer.next_transition(timeout=0.1)
    assert time.monotonic() - started < T
    assert observer.skipped == 0
    reader.step(0)  # and the observer still receives what comes next
    assert observer.next_transition(timeout=T).method == "step"
