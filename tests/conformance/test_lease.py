"""The control lease of a shared env, the same on every route.

A controller (``role="controller"``) holds the lease: other clients may read
the env but get :class:`~fastenv.LeaseHeld` when they try to change it, until
the lease is released or its holder closes. Observers never change the env.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import fastenv

from .conftest import T

SERVER_ARGS = ("--mode", "shared")  # the default, said here: leases and observers exist only on a shared env


def _total(env: fastenv.FastRemoteEnv) -> int:
    return int(env.get_state()["total"])


def test_a_controller_holds_the_lease_and_others_may_only_read(connect) -> None:
    controller = connect(role="controller")
    other = connect()
    assert controller.lease_holder == controller.session_id
    assert other.lease_holder == controller.session_id
    total = _total(controller)
    for change in (lambda: other.step(0), lambda: other.reset(), lambda: other.call("echo", 1)):
        with pytest.raises(fastenv.LeaseHeld) as caught:
            change()
        assert isinstance(caught.value, fastenv.ControlDenied)
    with pytest.raises(fastenv.LeaseHeld):  # a second controller is refused at once (no lease_timeout)
        connect(role="controller")
    # reading is fine, and nothing the refused calls asked for was applied
    assert other.get_state()["total"] == total
    assert other.total_steps == total  # an attribute read
    assert controller.step(0)[0][0] == total + 1  # the holder drives
    assert other.get_state()["total"] == total + 1
    assert other.lease_holder == controller.session_id  # refusals leave the lease where it was


def test_release_control_frees_the_lease(connect) -> None:
    controller = connect(role="controller")
    other = connect()
    total = _total(other)
    assert controller.release_control() is True
    assert other.lease_holder is None
    assert other.step(0)[0][0] == total + 1
    assert controller.release_control() is False  # it no longer holds it
    assert other.release_control() is False  # nor did the other client
    assert controller.step(0)[0][0] == total + 2  # a shared client again


def test_closing_the_controller_frees_the_lease(connect) -> None:
    controller = connect(role="controller")
    other = connect()
    total = _total(other)
    with pytest.raises(fastenv.LeaseHeld):
        other.step(0)
    controller.close()  # the server ends the session before it answers the close
    assert other.lease_holder is None
    assert other.step(0)[0][0] == total + 1


def _in_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``work()`` in a thread, once it is about to start; the list gets what it returned or raised."""
    outcome: list[Any] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            outcome.append(work())
        except BaseException as exc:  # reported by the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(T)
    return thread, outcome


def test_acquire_control_waits_for_a_lease_released_meanwhile(connect) -> None:
    controller = connect(role="controller")
    waiter = connect()
    with pytest.raises(fastenv.LeaseHeld):  # without waiting: refused
        waiter.acquire_control(0)
    acquirer, outcome = _in_thread(lambda: waiter.acquire_control(T))
    try:
        assert not outcome, outcome  # it cannot have the lease yet: still waiting
        assert controller.release_control() is True  # released while the waiter waits
    finally:
        acquirer.join(T + 5)
    assert outcome == [None]
    assert waiter.lease_holder == waiter.session_id
    with pytest.raises(fastenv.LeaseHeld):  # the lease moved: the former controller is refused now
        controller.step(0)
    with pytest.raises(fastenv.LeaseHeld):  # a wait that runs out raises
        controller.acquire_control(0.05)


def test_a_controller_with_a_lease_timeout_waits_for_the_holder_to_close(connect) -> None:
    first = connect(role="controller")
    taker, outcome = _in_thread(lambda: connect(role="controller", lease_timeout=T))
    try:
        assert not outcome, outcome
        first.close()  # the lease is freed while the new controller waits
    finally:
        taker.join(T + 5)
    assert len(outcome) == 1 and isinstance(outcome[0], fastenv.FastRemoteEnv), outcome
    assert outcome[0].lease_holder == outcome[0].session_id


def test_an_observer_may_read_but_never_change_the_env(connect) -> None:
    observer = connect(role="observer")
    total = _total(observer)
    for change in (lambda: observer.step(0), lambda: observer.reset(), lambda: observer.acquire_control()):
        with pytest.raises(fastenv.ControlDenied) as caught:
            change()
        assert not isinstance(caught.value, fastenv.LeaseHeld)  # nobody holds the lease: it is the role
    assert observer.lease_holder is None
    assert observer.total_steps == total
    assert observer.get_state()["total"] == total
