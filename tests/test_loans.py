"""fastenv.reply_array: envs render into the reply slot; nothing they do with it changes a reply.

The end-to-end tests serve ``tests/envs/test_envs.py:Lending`` with a real
``fastenv serve`` and compare every step with the same env run locally (where
``reply_array`` is ``np.empty``). The env counts how many of its arrays were
slot memory, which the client reads back as a remote attribute.
"""

from __future__ import annotations

import numpy as np
import pytest
from assertions import assert_same
from envs.test_envs import Lending

import fastenv
from fastenv import native
from fastenv.examples import CameraEnv
from fastenv.shm import futex


@pytest.fixture(params=["native", "python"], ids=["native", "python-fallback"])
def backend(request, monkeypatch) -> str:
    """The server's (and the client plane's) native part on or off."""
    if request.param == "native" and futex.native_backend is None:
        pytest.skip("fastenv._native is not built")
    try:
        previous = native.select_backend(request.param)
    except native.NativeBackendError as exc:
        pytest.skip(str(exc))
    request.addfinalizer(lambda: native.select_backend(previous))
    monkeypatch.setenv("FASTENV_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def test_reply_array_outside_a_server_is_a_fresh_array() -> None:
    first = fastenv.reply_array((2, 3), np.uint8)
    second = fastenv.reply_array(4)
    assert first.shape == (2, 3) and first.dtype == np.uint8
    assert second.shape == (4,) and second.dtype == np.float64
    for array in (first, second):
        assert array.base is None and array.flags.c_contiguous and array.flags.writeable
    assert not np.shares_memory(first, fastenv.reply_array((2, 3), np.uint8))


def _run(address: str, schedule: tuple[str, ...], steps: int, **connect: str) -> int:
    """Step the served Lending env and a local one side by side; the server's slot hits."""
    local = Lending(schedule)
    with fastenv.FastRemoteEnv(address, **connect) as env:
        assert_same(env.reset(), local.reset())
        for _ in range(steps):
            assert_same(env.step(0), local.step(0))
        return env.slot_hits


@pytest.mark.parametrize("env_thread", ["caller", "dedicated", "main"])
def test_env_renders_into_the_reply_slot(serve, test_env_target, backend: str, env_thread: str) -> None:
    server = serve(test_env_target("Lending"), "--env-thread", env_thread)  # the loan follows the call's hop
    slot_hits = _run(server.address, ("normal",), 40)
    # The first step of each slot learns the places; from then on both frames are slot memory.
    assert slot_hits >= 2 * (40 - 8)


@pytest.mark.parametrize("misuse", [p for p in Lending.PATTERNS if p != "normal"])
def test_misusing_reply_arrays_never_changes_a_reply(serve, test_env_target, backend: str, misuse: str) -> None:
    schedule = ("normal",) * 9 + (misuse,) + ("normal",) * 9 + (misuse, misuse)
    server = serve(test_env_target("Lending"), env_kwargs={"schedule": list(schedule)})
    slot_hits = _run(server.address, schedule, 3 * len(schedule))
    assert slot_hits > 0  # the normal stretches went zero-copy in between


def test_tcp_sessions_get_plain_arrays(serve, test_env_target) -> None:
    server = serve(test_env_target("Lending"), env_kwargs={"schedule": ["normal", "swapped"]})
    assert _run(server.address, ("normal", "swapped"), 20, transport="tcp") == 0


def test_camera_env_is_identical_with_and_without_reply_arrays(serve) -> None:
    kwargs = {"height": 24, "width": 32}
    server = serve("fastenv.examples:CameraEnv", env_kwargs=kwargs)
    local = CameraEnv(reply_arrays=False, **kwargs)
    action = np.linspace(-1, 1, 20, dtype=np.float32)
    with fastenv.FastRemoteEnv(server.address) as env:
        assert env.transport == "shm"
        assert_same(env.reset(seed=5), local.reset(seed=5))
        for _ in range(30):
            assert_same(env.step(action), local.step(action))
