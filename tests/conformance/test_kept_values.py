"""What a call returned is the caller's: it never changes afterwards, on every route.

Kept values are what replay buffers, trajectories and state histories hold;
on shared memory they are views into reply slots, which must not be written
again while the caller holds them.
"""

from __future__ import annotations

import copy

import numpy as np
from assertions import assert_same

STEPS = 1000


def _arrays(value: object) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (tuple, list)):
        return [array for item in value for array in _arrays(item)]
    if isinstance(value, dict):
        return [array for item in value.values() for array in _arrays(item)]
    return []


def test_every_value_returned_stays_as_it_was(env) -> None:
    kept: list[object] = []
    snapshots: list[object] = []

    def keep(value: object) -> None:
        kept.append(value)
        snapshots.append(copy.deepcopy(value))

    keep(env.reset(seed=3))
    for _ in range(STEPS):
        keep(env.step(0))
        keep(env.get_state())
    keep(env.call("echo", {"frame": np.arange(6, dtype=np.uint8).reshape(2, 3), "tag": "any method"}))
    keep(env.batch_step([0, 0, 0]))
    keep(env.reset(seed=4))
    for _ in range(20):  # and more calls after all of that
        env.step(0)
    for value, snapshot in zip(kept, snapshots):
        assert_same(value, snapshot)


def test_a_kept_observation_is_not_overwritten_by_a_later_reply_of_another_shape(env) -> None:
    obs = env.reset(seed=3)[0]
    kept = obs.copy()
    for _ in range(3):
        env.step(0)
    echoed = {"frame": np.arange(6, dtype=np.uint8).reshape(2, 3), "tag": "any method"}
    assert np.array_equal(env.call("echo", echoed)["frame"], echoed["frame"])
    assert obs.tobytes() == kept.tobytes(), f"the kept observation changed: {obs.tobytes().hex()}"


def test_returned_arrays_are_writable_like_the_local_envs(env) -> None:
    obs, _ = env.reset(seed=3)
    step = env.step(0)
    for array in _arrays(obs) + _arrays(step):
        assert array.flags.writeable
    obs[0] = 42.0  # the caller's own: changing it changes nothing else
    again = env.step(0)[0]
    assert obs[0] == 42.0 and again[0] != 42.0


def test_kept_transitions_of_an_observer_stay_as_they_were(connect) -> None:
    observer = connect(role="observer")
    driver = connect()
    kept, snapshots = [], []

    def step_and_keep(call: str, *args: object) -> None:
        driver.invoke(call, args, {"seed": 1} if call == "reset" else {})
        transition = observer.next_transition(timeout=30.0)  # keeping up: a slow observer would skip
        kept.append(transition)
        snapshots.append(copy.deepcopy(transition.result))

    step_and_keep("reset")
    for _ in range(50):
        step_and_keep("step", 0)
    for _ in range(50):  # more transitions arrive (and are read) after those were returned
        driver.step(0)
        observer.next_transition(timeout=30.0)
    assert observer.skipped == 0
    for transition, snapshot in zip(kept, snapshots):
        assert_same(transition.result, snapshot)
