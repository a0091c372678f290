"""What a call returns and how it fails, the same on every route.

The counting env (``tests/envs/session_envs.py``) serves every test here:
``echo`` returns its argument, ``explode`` raises, observations count steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fastenv.errors import FastEnvTimeout, ProtocolError, RemoteEnvError, UnknownMethodError

from assertions import assert_same
from test_codec import AWKWARD_ARRAYS, SCALARS


@pytest.mark.parametrize("name", sorted(AWKWARD_ARRAYS))
def test_awkward_arrays_round_trip(env, name: str) -> None:
    array = AWKWARD_ARRAYS[name]
    for _ in range(3):  # the first call defines the layout, the later ones use it
        out = env.call("echo", array)
        assert out.dtype == array.dtype and out.shape == array.shape
        assert np.array_equal(out, array, equal_nan=array.dtype.kind in "fc")


def test_scalars_and_containers_keep_their_types(env) -> None:
    for value in SCALARS:
        assert_same(env.call("echo", value), value)
    nested = {"obs": [np.zeros((2, 2), np.float32), (np.int64(5), {"deep": [None, b"x"]})], 7: "int key"}
    for _ in range(2):
        assert_same(env.call("echo", nested), nested)
    big = np.arange(1 << 20, dtype=np.float32)  # 4 MiB: beyond a default slot and a TCP chunk
    assert np.array_equal(env.call("echo", big), big)


def test_an_env_error_carries_its_type_and_traceback_and_the_session_goes_on(env) -> None:
    env.reset()
    with pytest.raises(RemoteEnvError) as caught:
        env.call("explode", "boom")
    error = caught.value
    assert isinstance(error, ValueError)  # a builtin type is mirrored: `except ValueError` works
    assert error.remote_type == "ValueError" and error.remote_message == "boom"
    assert "in explode" in error.remote_traceback
    total = env.get_state()["total"]
    assert env.step(0)[0][0] == total + 1


@pytest.mark.parametrize("name", ["no_such_method", "close"])
def test_unknown_and_reserved_methods(env, name: str) -> None:
    with pytest.raises(UnknownMethodError):
        env.call(name)
    assert env.call("echo", 1) == 1


def test_keyword_names_must_be_strings(env) -> None:
    with pytest.raises(ProtocolError, match="keyword argument names must be strings"):
        env.invoke("echo", (1,), {1: 2})
    assert env.call("echo", 2) == 2


def test_arguments_that_are_not_a_sequence_fail_before_sending(env) -> None:
    with pytest.raises(TypeError):
        env.invoke("echo", 5, {})  # type: ignore[arg-type]
    assert env.call("echo", 3) == 3


def test_step_async_and_batch_step(env) -> None:
    env.reset()
    total = env.get_state()["total"]  # the served env is shared by the module's tests
    env.step_async(0)
    assert env.step_wait()[0][0] == total + 1
    results = env.batch_step([0, 0, 0])
    assert [obs[0] for obs, *_ in results] == [total + 2, total + 3, total + 4]
    assert env.get_state()["total"] == total + 4


def test_a_timed_out_call_is_typed_and_the_session_goes_on(env) -> None:
    env.reset()
    total = env.get_state()["total"]
    with pytest.raises(FastEnvTimeout):
        env.invoke("step", (-400,), timeout=0.05)
    obs: Any = env.step(0)[0]  # the slow step still ran once; this one follows it
    assert obs[0] == total + 2
    assert env.get_state()["total"] == total + 2


def test_a_step_wait_that_times_out_can_wait_again(env) -> None:
    env.reset()
    total = env.get_state()["total"]
    env.step_async(-300)
    with pytest.raises(FastEnvTimeout):
        env.step_wait(timeout=0.05)
    assert env.step_wait()[0][0] == total + 1  # still pending: the same reply, once
    assert env.step(0)[0][0] == total + 2
