"""FastRemoteEnv is a gymnasium.Env: the checker, wrappers, ``make`` and ``make_vec`` take served envs."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from assertions import assert_same
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import (
    FlattenObservation,
    NormalizeObservation,
    RecordEpisodeStatistics,
    RecordVideo,
    TimeLimit,
)

import fastenv
from fastenv.examples import LegacyEnv

T = 30.0


@pytest.fixture(scope="module")
def cartpole() -> str:
    from fastenv.server_process import ServerProcess

    with ServerProcess("CartPole-v1", ["--mode", "per-client"]) as server:
        yield server.address


def test_a_served_gymnasium_env_is_a_gymnasium_env_and_passes_the_checker(cartpole: str) -> None:
    with fastenv.FastRemoteEnv(cartpole, timeout=T) as env:
        assert isinstance(env, gymnasium.Env) and env.unwrapped is env
        assert _checker_warnings(env) == _checker_warnings(gymnasium.make("CartPole-v1").unwrapped)


def _needs_mujoco() -> None:
    """Skip without MuJoCo, without importing it (the example picks the GL backend before it is imported)."""
    if importlib.util.find_spec("mujoco") is None:
        pytest.skip("MuJoCo is not installed (pip install 'fastenv[sim]')")


def _checker_warnings(env: gymnasium.Env) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)  # raises on what it finds wrong; warns on what is doubtful
    return sorted(str(warning.message) for warning in caught)


def test_the_mujoco_task_passes_the_checker_as_the_local_one_does(serve) -> None:
    _needs_mujoco()
    from fastenv.examples.mujoco_stack import make_stack_cube

    kwargs = {"height": 48, "width": 64}
    # its OpenGL context is bound to the thread that built it
    server = serve("fastenv.examples.mujoco_stack:make_stack_cube", "--env-thread", "dedicated", env_kwargs=kwargs)
    local = make_stack_cube(**kwargs)
    try:
        with fastenv.FastRemoteEnv(server.address, timeout=T) as env:
            assert _checker_warnings(env) == _checker_warnings(local)
    finally:
        local.close()


def test_the_wrappers_take_it_and_behave_as_on_the_local_env(cartpole: str) -> None:
    local = RecordEpisodeStatistics(TimeLimit(NormalizeObservation(gymnasium.make("CartPole-v1")), 20))
    with fastenv.FastRemoteEnv(cartpole, timeout=T) as env:
        remote = RecordEpisodeStatistics(TimeLimit(NormalizeObservation(env), 20))
        assert_same(remote.reset(seed=5), local.reset(seed=5))
        episodes = 0
        for _ in range(60):
            got, want = remote.step(0), local.step(0)
            assert_same(got[:4], want[:4])
            if got[2] or got[3]:
                episodes += 1
                for key in ("r", "l"):  # ("t" is wall-clock time)
                    assert_same(got[4]["episode"][key], want[4]["episode"][key])
                assert_same(remote.reset(), local.reset())
        assert episodes > 0
        flat = FlattenObservation(env)
        assert flat.observation_space == FlattenObservation(gymnasium.make("CartPole-v1")).observation_space


def test_make_and_make_vec_by_id(serve, cartpole: str) -> None:
    env = gymnasium.make("fastenv/Remote-v0", address=cartpole, timeout=T, max_episode_steps=7)
    try:
        assert isinstance(env.unwrapped, fastenv.FastRemoteEnv)
        assert env.spec is not None and env.spec.id == "fastenv/Remote-v0"
        assert_same(env.reset(seed=0), gymnasium.make("CartPole-v1").reset(seed=0))
        truncated = [env.step(0)[3] for _ in range(7)]
        assert truncated == [False] * 6 + [True]  # the TimeLimit make added
    finally:
        env.close()
    server = serve("CartPole-v1", "--num-envs", "3", "--mode", "per-client")
    envs = gymnasium.make_vec("fastenv/Remote-v0", num_envs=3, address=server.address, timeout=T)
    try:
        assert isinstance(envs, fastenv.FastVectorEnv) and envs.num_envs == 3
        sync = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * 3)
        assert_same(envs.reset(seed=1)[0], sync.reset(seed=1)[0])
        stats = gymnasium.wrappers.vector.RecordEpisodeStatistics(envs)
        stats.reset(seed=2)
        for _ in range(30):
            stats.step(np.zeros(3, np.int64))
        sync.close()
    finally:
        envs.close()
    with pytest.raises(ValueError, match="host 3 envs"):
        gymnasium.make_vec("fastenv/Remote-v0", num_envs=4, address=server.address, timeout=T)


def test_a_legacy_env_still_returns_its_own_tuples(serve) -> None:
    server = serve("fastenv.examples:LegacyEnv")
    local = LegacyEnv()
    with fastenv.FastRemoteEnv(server.address, timeout=T) as env:
        assert isinstance(env, gymnasium.Env)
        assert_same(env.reset(), local.reset())
        assert_same(env.step(1), local.step(1))  # the 4-tuple, as served


def test_record_video_of_the_mujoco_task(serve, tmp_path: Path) -> None:
    _needs_mujoco()
    server = serve(
        "fastenv.examples.mujoco_stack:make_stack_cube",
        "--env-thread",
        "dedicated",
        env_kwargs={"height": 48, "width": 64, "render_mode": "rgb_array"},
    )
    pytest.importorskip("moviepy")
    env = gymnasium.make("fastenv/Remote-v0", address=server.address, timeout=T, render_mode="rgb_array")
    folder = tmp_path / "videos"  # not there yet: RecordVideo makes it
    video = RecordVideo(env, str(folder), episode_trigger=lambda episode: True, disable_logger=True)
    video.reset(seed=0)
    for _ in range(10):
        video.step(video.action_space.sample())
    video.close()
    videos = list(folder.glob("*.mp4"))
    assert videos and videos[0].stat().st_size > 0
