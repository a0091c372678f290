"""Stable-Baselines3 over served envs: the same rollouts and the same trained weights as local envs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import gymnasium
from assertions import assert_same
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv

from fastenv.sb3 import RemoteVecEnv
from fastenv.server_process import ServerProcess

T = 30.0


@pytest.fixture(scope="module")
def cartpole() -> Iterator[str]:
    with ServerProcess("CartPole-v1", ["--mode", "per-client"]) as server:
        yield server.address


def _cartpole() -> gymnasium.Env:
    return gymnasium.make("CartPole-v1")


def _train(kind: str, address: str, tmp_path: Path) -> dict[str, np.ndarray]:
    """The policy weights after training in ``tests/sb3_train.py`` (a process of its own, see there)."""
    out = tmp_path / f"{kind}.npz"
    script = Path(__file__).parent / "sb3_train.py"
    subprocess.run([sys.executable, str(script), kind, address, str(out)], check=True, timeout=300)
    with np.load(out) as weights:
        return dict(weights)


def _same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


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


def test_ppo_trains_the_same_weights_through_fastenv(cartpole: str, tmp_path: Path) -> None:
    _same_weights(_train("remote", cartpole, tmp_path), _train("local", cartpole, tmp_path))


def test_ppo_on_remote_vec_env_matches_subproc_vec_env(cartpole: str, tmp_path: Path) -> None:
    _same_weights(_train("remote-vec", cartpole, tmp_path), _train("subproc", cartpole, tmp_path))
