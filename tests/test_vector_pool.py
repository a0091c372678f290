"""The async pool (``FastVectorEnv(..., batch_size=k)``: ``async_reset`` / ``send`` / ``recv``) and same-step autoreset.

Checked against gymnasium.vector.SyncVectorEnv env by env (both autoreset
modes, Dict and nested spaces, with and without ``--workers``, N not
divisible by W), the bookkeeping of send / recv and its typed errors, envs
that keep stepping while a batch is returned, and a worker killed mid-batch.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from fastenv.errors import (
    AlreadyPendingError,
    EnvInFlightError,
    NoPendingCallError,
    PoolNotReadyError,
    PoolUsageError,
)
from fastenv.vector import FastVectorEnv, VectorHost, batch
from fastenv.vector.workers import RESTARTED_KEY, WORKER_PID_ATTR, TargetFactory

from assertions import same

ENVS = Path(__file__).parent / "envs" / "vector_envs.py"
NESTED, DICT = (f"{ENVS}:{name}" for name in ("NestedEnv", "DictEnv"))
TIMEOUT = 30.0
MODES = {"next": AutoresetMode.NEXT_STEP, "same": AutoresetMode.SAME_STEP}


def make(target: str, **kwargs: Any) -> Any:
    return TargetFactory(target, kwargs)() if ":" in target else gymnasium.make(target, **kwargs)


def row_info(infos: dict[str, Any], row: int) -> dict[str, Any]:
    """Row ``row``'s info out of a Gymnasium vector info (the keys whose mask marks it)."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_") or not infos[f"_{key}"][row]:
            continue
        out[key] = row_info(value, row) if isinstance(value, dict) else value[row]
    return out


def row_of(space: Any, result: tuple, row: int) -> tuple:
    """``(obs, reward, terminated, truncated, info)`` of one row of a batched step result."""
    obs, rewards, terminations, truncations, infos = result[:5]
    return (
        batch.take(space, obs, np.array([row])),
        rewards[row],
        terminations[row],
        truncations[row],
        row_info(infos, row),
    )


def action_samplers(space: Any, num_envs: int, seed: int) -> list[Any]:
    """One seeded copy of ``space`` per env: env ``i``'s actions depend only on how often it was stepped."""
    samplers = []
    for index in range(num_envs):
        sampler = copy.deepcopy(space)
        sampler.seed(seed + index)
        samplers.append(sampler)
    return samplers


def stack(space: Any, rows: list[Any]) -> Any:
    return gymnasium.vector.utils.concatenate(space, rows, gymnasium.vector.utils.create_empty_array(space, len(rows)))


def sync_trajectories(target: str, num_envs: int, mode: AutoresetMode, seed: int, steps: int) -> list[list[tuple]]:
    """Each env's ``(obs, reward, terminated, truncated, info)`` rows under SyncVectorEnv, from its reset on."""
    sync = SyncVectorEnv([functools.partial(make, target)] * num_envs, autoreset_mode=mode)
    samplers = action_samplers(sync.single_action_space, num_envs, 1000)
    obs, infos = sync.reset(seed=seed)
    zeros = (np.zeros(num_envs), np.zeros(num_envs, bool), np.zeros(num_envs, bool))
    trajectories = [[row_of(sync.single_observation_space, (obs, *zeros, infos), i)] for i in range(num_envs)]
    for _ in range(steps):
        actions = stack(sync.single_action_space, [sampler.sample() for sampler in samplers])
        result = sync.step(actions)
        for index in range(num_envs):
            trajectories[index].append(row_of(sync.single_observation_space, result, index))
    sync.close()
    return trajectories


# --------------------------------------------------------------------------- against SyncVectorEnv


@pytest.mark.parametrize(
    "target, num_envs, workers, batch_size, mode",
    [
        ("CartPole-v1", 4, None, 2, "next"),
        ("CartPole-v1", 4, None, 3, "same"),
        (DICT, 7, "3", 3, "next"),
        (DICT, 7, "3", 4, "same"),
        (NESTED, 5, "2", 2, "same"),
        (NESTED, 5, "2", 5, "next"),
    ],
    ids=[
        "cartpole-k2",
        "cartpole-k3-same",
        "dict-7-over-3-k3",
        "dict-7-over-3-k4-same",
        "nested-5-over-2-same",
        "nested-k5",
    ],
)
def test_pool_matches_sync_env_by_env(
    serve, target: str, num_envs: int, workers: str | None, batch_size: int, mode: str
) -> None:
    args = ["--num-envs", str(num_envs), "--mode", "per-client"] + (["--workers", workers] if workers else [])
    server = serve(target, *args)
    rounds = 40
    expected = sync_trajectories(target, num_envs, MODES[mode], seed=5, steps=rounds * batch_size // num_envs + 20)
    with FastVectorEnv(server.address, batch_size=batch_size, autoreset_mode=mode + "_step", timeout=TIMEOUT) as envs:
        assert envs.metadata["autoreset_mode"] is MODES[mode] and envs.batch_size == batch_size
        space = envs.single_observation_space
        samplers = action_samplers(envs.single_action_space, num_envs, 1000)
        seen = [0] * num_envs
        ended = 0
        envs.async_reset(seed=5)
        for _ in range(rounds):
            result = envs.recv()
            ids = result[5]
            assert len(ids) == batch_size and list(ids) == sorted(set(ids.tolist()))
            for row, index in enumerate(ids.tolist()):
                got = row_of(space, result, row)
                same(got, expected[index][seen[index]])
                seen[index] += 1
                ended += int(got[2] or got[3])
            envs.send(stack(envs.single_action_space, [samplers[i].sample() for i in ids.tolist()]), ids)
        assert ended > 0  # autoresets included
        while True:  # drain: what is still in flight comes back too
            try:
                result = envs.recv()
            except PoolNotReadyError:
                if num_envs % batch_size == 0:
                    break
                result = envs.recv(batch_size=num_envs % batch_size)
            for row, index in enumerate(result[5].tolist()):
                same(row_of(space, result, row), expected[index][seen[index]])
                seen[index] += 1
            if len(result[5]) < batch_size:
                break
        assert sum(seen) == num_envs + rounds * batch_size
        envs.step(stack(envs.single_action_space, [sampler.sample() for sampler in samplers]))  # nothing in flight


@pytest.mark.parametrize("workers", [None, "2"], ids=["in-server", "workers"])
def test_full_batch_is_a_sync_step(serve, workers: str | None) -> None:
    args = ["--num-envs", "5", "--mode", "per-client"] + (["--workers", workers] if workers else [])
    server = serve(DICT, *args)
    with FastVectorEnv(server.address, batch_size=5, timeout=TIMEOUT) as envs:
        sync = SyncVectorEnv([functools.partial(make, DICT)] * 5)
        expected_obs, _ = sync.reset(seed=9)
        envs.async_reset(seed=9)
        obs, rewards, *_, ids = envs.recv()
        same(obs, expected_obs)
        assert ids.tolist() == list(range(5)) and not rewards.any()
        sync.action_space.seed(9)
        for _ in range(30):
            actions = sync.action_space.sample()
            envs.send(actions, np.arange(5))
            *result, ids = envs.recv()
            same(tuple(result), sync.step(actions))
            assert ids.tolist() == list(range(5))
        sync.close()


# --------------------------------------------------------------------------- same-step autoreset


@pytest.mark.parametrize(
    "target, num_envs, workers",
    [("CartPole-v1", 3, None), (DICT, 5, "2"), (NESTED, 4, "3")],
    ids=["cartpole", "dict-5-over-2", "nested-4-over-3"],
)
def test_same_step_autoreset_matches_sync(serve, target: str, num_envs: int, workers: str | None) -> None:
    args = ["--num-envs", str(num_envs), "--mode", "per-client"] + (["--workers", workers] if workers else [])
    server = serve(target, *args)
    with FastVectorEnv(server.address, autoreset_mode=AutoresetMode.SAME_STEP, timeout=TIMEOUT) as envs:
        sync = SyncVectorEnv([functools.partial(make, target)] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        assert envs.metadata == sync.metadata and envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        same(envs.reset(seed=3), sync.reset(seed=3))
        sync.action_space.seed(3)
        finals = 0
        for _ in range(60):
            actions = sync.action_space.sample()
            expected = sync.step(actions)
            same(envs.step(actions), expected)
            finals += int("final_obs" in expected[4])
        assert finals > 0
        sync.close()
    with FastVectorEnv(server.address, timeout=TIMEOUT) as envs:  # a new session starts next-step again
        assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP


def test_same_step_autoreset_in_process() -> None:
    with VectorHost([make(NESTED) for _ in range(3)]) as host:
        sync = SyncVectorEnv([functools.partial(make, NESTED)] * 3, autoreset_mode=AutoresetMode.SAME_STEP)
        assert host.set_autoreset_mode("same-step") == AutoresetMode.SAME_STEP.value
        assert host.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        same(host.reset(seed=1)[0], sync.reset(seed=1)[0])
        sync.action_space.seed(1)
        for _ in range(30):
            actions = sync.action_space.sample()
            *arrays, infos = host.step(actions)
            *expected, expected_infos = sync.step(actions)
            same(tuple(arrays), tuple(expected))
            merged: dict = {}
            for index, info in enumerate(infos):
                merged = sync._add_info(merged, info, index)
            same(merged, expected_infos)
        with pytest.raises(ValueError, match="supports: .next-step., .same-step."):
            host.set_autoreset_mode("disabled")
        sync.close()


# --------------------------------------------------------------------------- bookkeeping


def test_send_recv_bookkeeping_and_misuse(serve) -> None:
    server = serve(
        NESTED, "--num-envs", "5", "--workers", "2", "--mode", "per-client", "--env-kwargs", '{"horizon": 1000}'
    )
    with FastVectorEnv(server.address, batch_size=2, timeout=TIMEOUT) as envs:
        space = envs.single_action_space

        def actions(count: int) -> Any:
            return {"push": np.zeros((count, 2), np.float32), "mode": np.zeros(count, np.int64)}

        with pytest.raises(PoolNotReadyError) as caught:
            envs.recv()
        assert isinstance(caught.value, NoPendingCallError)
        envs.async_reset(seed=0)
        with pytest.raises(EnvInFlightError):
            envs.send(actions(1), [3])
        with pytest.raises(AlreadyPendingError):
            envs.step(space.sample())
        with pytest.raises(AlreadyPendingError):
            envs.reset()
        with pytest.raises(AlreadyPendingError):
            envs.get_attr("label")
        with pytest.raises(AlreadyPendingError):
            envs.async_reset()

        obs, rewards, terminations, truncations, infos, ids = envs.recv()
        assert ids.tolist() == [0, 1] and infos["seeded"].tolist() == [True, True]
        kept = copy.deepcopy(obs)
        for bad in ([5], [-1], [0, 0], [[0, 1]], ["a"], []):
            with pytest.raises(PoolUsageError):
                envs.send(actions(max(len(bad), 1)), bad)
        with pytest.raises(PoolUsageError, match="3 actions for 2 env ids"):
            envs.send(actions(3), ids)
        envs.send(actions(2))  # default: the ids the last recv returned
        with pytest.raises(PoolUsageError, match="needs env_ids"):
            envs.send(actions(2))  # nothing returned since
        for _ in range(20):
            *_, ids = envs.recv()
            envs.send(actions(len(ids)), ids)
        same(obs, kept)  # what recv returned never changed
        assert len(envs.recv()[5]) == 2 and len(envs.recv()[5]) == 2
        with pytest.raises(PoolNotReadyError, match="only 1"):
            envs.recv()
        assert len(envs.recv(batch_size=1)[5]) == 1
        with pytest.raises(PoolUsageError):
            envs.recv(batch_size=0)
        envs.step(envs.action_space.sample())  # nothing in flight: the Gymnasium API again
        with pytest.raises(PoolUsageError):
            FastVectorEnv([server.address, server.address], batch_size=2, timeout=TIMEOUT)
    with FastVectorEnv(server.address, timeout=TIMEOUT) as plain:
        with pytest.raises(PoolUsageError, match="batch_size"):
            plain.send(np.zeros(1), [0])


def test_every_env_steps_once_per_send(serve) -> None:
    server = serve(
        NESTED, "--num-envs", "5", "--workers", "2", "--mode", "per-client", "--env-kwargs", '{"horizon": 1000}'
    )
    with FastVectorEnv(server.address, batch_size=2, timeout=TIMEOUT) as envs:
        envs.async_reset(seed=0)
        sent = np.zeros(5, int)
        for round_ in range(50):
            obs, *_, ids = envs.recv()
            stepped = sent[ids] > 0  # position[2] is the env's own step count once it stepped
            assert np.array_equal(obs[0][stepped, 2], sent[ids][stepped]), round_
            if round_ < 49:
                envs.send({"push": np.zeros((2, 2), np.float32), "mode": np.zeros(2, np.int64)}, ids)
                sent[ids] += 1
        for batch_size in (2, 1):  # the 3 envs still in flight
            obs, *_, ids = envs.recv(batch_size=batch_size)
            stepped = sent[ids] > 0
            assert np.array_equal(obs[0][stepped, 2], sent[ids][stepped])
        assert sent.sum() == 49 * 2


def test_recv_returns_the_first_done_while_others_step(serve) -> None:
    server = serve(
        NESTED, "--num-envs", "4", "--workers", "2", "--mode", "per-client", "--env-kwargs", '{"horizon": 1000}'
    )
    with FastVectorEnv(server.address, batch_size=2, timeout=TIMEOUT) as envs:
        envs.set_attr("delay", [0.0, 0.0, 0.5, 0.5])  # worker 1's envs are slow
        envs.async_reset(seed=0)
        fast = {"push": np.zeros((2, 2), np.float32), "mode": np.zeros(2, np.int64)}
        assert envs.recv()[5].tolist() == [0, 1]
        assert envs.recv()[5].tolist() == [2, 3]
        envs.send(fast, [2, 3])  # worker 1 now busy for about a second
        for expected_count in range(1, 4):
            envs.send(fast, [0, 1])
            obs, *_, ids = envs.recv()
            assert ids.tolist() == [0, 1]  # the fast envs came back while 2 and 3 were stepping
            assert obs[0][:, 2].tolist() == [expected_count] * 2
        obs, *_, ids = envs.recv()
        assert ids.tolist() == [2, 3] and obs[0][:, 2].tolist() == [1, 1]


@pytest.mark.parametrize("backend", ["native", "python"])
def test_worker_killed_mid_batch(serve, backend: str) -> None:
    extra_env = {"FASTENV_NATIVE": "0"} if backend == "python" else {}
    server = serve(NESTED, "--num-envs", "5", "--workers", "2", "--mode", "per-client", extra_env=extra_env)
    with FastVectorEnv(server.address, batch_size=3, timeout=TIMEOUT) as envs:
        pids = envs.get_attr(WORKER_PID_ATTR)
        assert pids[0] == pids[2] != pids[3] == pids[4]  # 5 envs over 2 workers: 3 + 2
        envs.set_attr("delay", [0.0, 0.0, 0.0, 30.0, 30.0])  # worker 1 will hang in its step
        envs.async_reset(seed=40)
        sampler = envs.single_action_space
        for _ in range(2):  # the reset envs: [0, 1, 2] then (after sending those) [3, 4] and one more
            *_, ids = envs.recv()
            envs.send(stack(sampler, [sampler.sample() for _ in ids]), ids)
        os.kill(pids[3], signal.SIGKILL)  # envs 3 and 4 are in flight in that worker
        restarted = {}
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:  # the fast envs keep coming back; the dead worker is found meanwhile
            obs, rewards, terminations, truncations, infos, ids = envs.recv()
            marks = infos.get(RESTARTED_KEY, np.zeros(len(ids), bool))
            for row, index in enumerate(ids.tolist()):
                if marks[row]:
                    restarted[index] = (obs[0][row], rewards[row], terminations[row], truncations[row])
            envs.send(stack(sampler, [sampler.sample() for _ in ids]), ids)
            if len(restarted) == 2:
                break
        assert sorted(restarted) == [3, 4]
        for index, (position, reward, terminated, truncated) in restarted.items():
            (fresh, _, _), _ = make(NESTED).reset(seed=40 + index)  # rebuilt and reset with its seed
            assert np.array_equal(position, fresh) and reward == 0.0 and not terminated and not truncated
        for _ in range(10):  # the rebuilt envs step (their delay is the default 0 again)
            *_, ids = envs.recv()
            envs.send(stack(sampler, [sampler.sample() for _ in ids]), ids)
        envs.recv()
        envs.recv(batch_size=2)
        new_pids = envs.get_attr(WORKER_PID_ATTR)
        assert new_pids[:3] == pids[:3] and new_pids[3] == new_pids[4] != pids[3]
