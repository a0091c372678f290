"""Remote equals local: same seeds and actions give identical trajectories, types included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest

import fastenv
from fastenv.examples import CameraEnv, LegacyEnv, StructuredEnv, VectorEnv

from assertions import assert_same

CASES: dict[str, tuple[str, Callable[[], Any], dict]] = {
    "CartPole-v1": ("CartPole-v1", lambda: gymnasium.make("CartPole-v1"), {}),
    "Pendulum-v1": ("Pendulum-v1", lambda: gymnasium.make("Pendulum-v1"), {}),
    "structured": ("fastenv.examples:StructuredEnv", StructuredEnv, {}),
    "vector": ("fastenv.examples:VectorEnv", VectorEnv, {}),
    "camera": ("fastenv.examples:CameraEnv", lambda: CameraEnv(height=24, width=32), {"height": 24, "width": 32}),
}


def _actions(env: Any, count: int) -> list[Any]:
    space = env.action_space
    space.seed(123)
    return [space.sample() for _ in range(count)]


@pytest.mark.parametrize("transport", ["auto", "tcp"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_trajectories_match_local(serve, case: str, transport: str) -> None:
    target, make_local, env_kwargs = CASES[case]
    local = make_local()
    server = serve(target, env_kwargs=env_kwargs)
    with fastenv.FastRemoteEnv(server.address, timeout=30, transport=transport) as remote:
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space
        assert remote.render_mode == local.render_mode
        for seed in (0, 7):
            assert_same(remote.reset(seed=seed), local.reset(seed=seed))
            for action in _actions(local, 60):
                expected = local.step(action)
                assert_same(remote.step(action), expected)
                if expected[2] or expected[3]:
                    break
    local.close()


def test_gymnasium_attributes_are_readable(serve) -> None:
    server = serve("CartPole-v1")
    local = gymnasium.make("CartPole-v1")
    with fastenv.FastRemoteEnv(server.address, timeout=30) as remote:
        assert remote.spec.id == "CartPole-v1"
        assert remote.spec.max_episode_steps == local.spec.max_episode_steps
        assert remote.metadata == local.metadata
        assert remote.unwrapped is remote
        assert remote.env_info["class"].endswith("CartPoleEnv")
        # data attributes of the unwrapped env are fetched on access, through the wrappers
        assert remote.gravity == local.unwrapped.gravity
        assert remote.x_threshold == local.unwrapped.x_threshold


def test_legacy_four_tuple_env(serve) -> None:
    local = LegacyEnv()
    local.seed(5)
    server = serve("fastenv.examples:LegacyEnv")
    with fastenv.FastRemoteEnv(server.address, timeout=30) as remote:
        assert remote.call("seed", 5) == [5]
        assert_same(remote.reset(), local.reset())
        for action in np.linspace(-1, 1, 30):
            expected = local.step(action)
            got = remote.step(action)
            assert len(got) == 4
            assert_same(got, expected)
        assert_same(remote.get_state(), local.get_state())


def test_state_and_options_pass_through(serve) -> None:
    server = serve("fastenv.examples:StructuredEnv")
    local = StructuredEnv()
    with fastenv.FastRemoteEnv(server.address, timeout=30) as remote:
        options = {"note": "hi", "weights": np.arange(3.0)}
        assert_same(remote.reset(seed=1, options=options), local.reset(seed=1, options=options))
        remote.step(0)
        local.step(0)
        state = remote.get_state()
        assert_same(state, local.get_state())
        after = [remote.step(1) for _ in range(3)]
        remote.set_state(state)
        assert_same([remote.step(1) for _ in range(3)], after)


@pytest.mark.parametrize("options", [{"transport": "tcp"}, {"transport": "shm", "copy": True}])
def test_owned_arrays_are_writable_and_independent(serve, options) -> None:
    server = serve("fastenv.examples:CameraEnv", env_kwargs={"height": 8, "width": 8})
    with fastenv.FastRemoteEnv(server.address, timeout=30, **options) as remote:
        obs, _ = remote.reset(seed=0)
        first = obs["left"].copy()
        obs["left"][:] = 0  # like a local env's fresh array, it can be written
        remote.step(np.zeros(20, np.float32))
        assert obs["left"].sum() == 0 and first.sum() > 0


def test_env_hash_identifies_the_env(serve) -> None:
    a = serve("fastenv.examples:VectorEnv")
    b = serve("fastenv.examples:VectorEnv")
    c = serve("fastenv.examples:VectorEnv", env_kwargs={"obs_dim": 6})
    with (
        fastenv.connect(a.address) as env_a,
        fastenv.connect(b.address) as env_b,
        fastenv.connect(c.address) as env_c,
    ):
        assert env_a.env_hash == env_b.env_hash != env_c.env_hash
