"""Stable-Baselines3 over served envs: the same rollouts and the same trained weights as local envs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import gymnasium
import torch
from assertions import assert_same
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import fastenv
from fastenv.sb3 import RemoteVecEnv
from fastenv.server_process import ServerProcess

T = 30.0
STEPS = 256


@pytest.fixture(scope="module")
def cartpole() -> Iterator[str]:
    with ServerProcess("CartPole-v1", ["--mode", "per-client"]) as server:
        yield server.address


def _cartpole() -> gymnasium.Env:
    return gymnasium.make("CartPole-v1")


def _weights(model: PPO) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.policy.state_dict().items()}


def _train(venv: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu")
    model.learn(STEPS)
    return _weights(model)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_remote_vec_env_rolls_out_as_subproc_vec_env(cartpole: str) -> None:
    remote = RemoteVecEnv(cartpole, num_envs=3, timeout=T)
    local = SubprocVecEnv([_cartpole] * 3)
    try:
        assert remote.num_envs == 3 and remote.observation_space == local.observation_space
        remote.seed(7)
        local.seed(7)
        assert_same(remote.reset(), local.reset())
        assert_same(remote.reset_infos, local.reset_infos)
        rng = np.random.default_rng(0)
        episodes = 0
        for _ in range(120):
            actions = rng.integers(0, 2, 3)
            got, want = remote.step(actions), local.step(actions)
            assert_same(got, want)  # observations, rewards, dones, infos (terminal_observation included)
            episodes += int(got[2].sum())
        assert episodes > 0  # episodes ended and were reset in the same step
        assert remote.env_is_wrapped(gymnasium.wrappers.TimeLimit) == [True] * 3
        assert remote.env_is_wrapped(Monitor) == local.env_is_wrapped(Monitor) == [False] * 3
        assert remote.get_attr("spec")[0].id == "CartPole-v1"
    finally:
        remote.close()
        local.close()


def test_ppo_trains_the_same_weights_through_fastenv(cartpole: str) -> None:
    local = _train(DummyVecEnv([_cartpole]))
    remote_env = DummyVecEnv([lambda: fastenv.FastRemoteEnv(cartpole, timeout=T)])
    try:
        _same_weights(_train(remote_env), local)
    finally:
        remote_env.close()


def test_ppo_on_remote_vec_env_matches_subproc_vec_env(cartpole: str) -> None:
    local_env = SubprocVecEnv([_cartpole] * 4)
    remote_env = RemoteVecEnv(cartpole, num_envs=4, timeout=T)
    try:
        _same_weights(_train(remote_env), _train(local_env))
    finally:
        remote_env.close()
        local_env.close()
