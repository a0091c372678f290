"""What a call returned is the caller's: it never changes afterwards, on every route.

Kept values are what replay buffers, trajectories and state histories hold;
on shared memory they are views into reply slots, which must not be written
again while the caller holds them.
"""

from __future__ import annotations

import copy
import warnings

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


# What a caller keeps of an array it was returned, the array itself dropped: every kind of numpy view.
DERIVED = (
    ("slice", lambda a: a[1:]),
    ("strided", lambda a: a[::2]),
    ("reshaped", lambda a: a.reshape(2, -1)),
    ("transposed", lambda a: a.reshape(2, -1).T),
    ("retyped", lambda a: a.view(np.uint8)),
    ("asarray slice", lambda a: np.asarray(a)[:3]),
    ("memoryview", memoryview),
    ("frombuffer", lambda a: np.frombuffer(a, dtype=a.dtype)),
)


def test_views_derived_from_a_dropped_array_stay_as_they_were(env) -> None:
    """A view of a returned array (a slice, a reshape, a memoryview) keeps its values after the array is dropped."""
    env.reset(seed=3)
    kept = []
    for step in range(60):
        name, derive = DERIVED[step % len(DERIVED)]
        obs = env.step(0)[0]
        derived = derive(obs)
        kept.append((name, step, derived, bytes(derived)))
        del obs, derived
    for _ in range(20):
        env.step(0)
    for name, step, derived, snapshot in kept:
        assert bytes(derived) == snapshot, f"the {name} view kept of step {step}'s observation changed"


def _set_strides(array: np.ndarray, strides: tuple[int, ...]) -> None:
    with warnings.catch_warnings():  # deprecated since NumPy 2.4, and still possible
        warnings.simplefilter("ignore", DeprecationWarning)
        array.strides = strides


# In-place changes a caller can make to an array's own metadata.
RESHAPES = (
    ("shape", lambda a: setattr(a, "shape", (2, 2))),
    ("strides", lambda a: _set_strides(a, (0,))),
    ("dtype", lambda a: setattr(a, "dtype", np.int64)),
    ("read-only", lambda a: setattr(a.flags, "writeable", False)),
)


def test_an_array_changed_in_place_and_dropped_does_not_come_back_changed(env) -> None:
    """A returned array whose shape, strides, dtype or flags the caller set, then dropped, is not handed out again."""
    expected = env.reset(seed=3)[0]
    for name, change in RESHAPES:
        for _ in range(6):  # through every reply slot the client uses
            obs = env.step(0)[0]
            change(obs)
            del obs
        obs = env.step(0)[0]
        assert (obs.shape, obs.strides, obs.dtype) == (expected.shape, expected.strides, expected.dtype), name
        assert obs.flags.writeable and obs.flags.c_contiguous, name


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
