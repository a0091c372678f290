"""`fastenv serve --num-envs N --workers W`: the envs step in W worker processes behind one address.

Checked against gymnasium.vector.SyncVectorEnv seed for seed (W=1, W>1, N not
divisible by W, Dict and nested observations), a killed worker restarted with
the restart reported in the infos, and nothing left behind when the server stops.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import psutil
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from fastenv.cli import build_parser
from fastenv.errors import RemoteEnvError, ServerConfigError, UnknownMethodError
from fastenv.server import EnvServer
from fastenv.vector import FastVectorEnv
from fastenv.vector.workers import (
    RESTARTED_KEY,
    WORKER_PID_ATTR,
    TargetFactory,
    WorkerVectorHost,
    default_workers,
    split_envs,
    usable_cpus,
)

from assertions import against_sync, same

ENVS = Path(__file__).parent / "envs" / "vector_envs.py"
NESTED, DICT, TEXT = (f"{ENVS}:{name}" for name in ("NestedEnv", "DictEnv", "TextEnv"))
TIMEOUT = 30.0


def make(target: str, **kwargs: Any) -> Any:
    return TargetFactory(target, kwargs)() if ":" in target else gymnasium.make(target, **kwargs)


def worker_pids(envs: Any) -> tuple[int, ...]:
    return tuple(envs.get_attr(WORKER_PID_ATTR))


def wait_gone(pids: set[int], timeout: float = 15.0) -> set[int]:
    """Wait (bounded) until none of ``pids`` runs any more; the ones still running."""
    alive = []
    for pid in pids:
        try:
            alive.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=timeout)
    return {process.pid for process in still if process.status() != psutil.STATUS_ZOMBIE}


def shm_left_by(server_pid: int) -> list[str]:
    """Files in /dev/shm of this server (``fastenv-<pid>-...``) or of a vector batch (which should have no name)."""
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return [name for name in names if name.startswith(f"fastenv-{server_pid}-") or "fastenv-vector" in name]


# --------------------------------------------------------------------------- sizing and configuration


def test_slices_differ_by_at_most_one() -> None:
    for num_envs in range(1, 12):
        for workers in range(1, 14):
            slices = split_envs(num_envs, workers)
            assert len(slices) == min(num_envs, workers)
            assert [i for part in slices for i in part] == list(range(num_envs))
            sizes = [len(part) for part in slices]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert 1 <= default_workers(64) == min(64, usable_cpus())
    assert default_workers(1) == 1


def test_cli_and_server_options() -> None:
    parser = build_parser()
    serve = ["serve", "CartPole-v1", "--num-envs", "4"]
    assert parser.parse_args(serve).workers is None
    assert parser.parse_args([*serve, "--workers"]).workers == "auto"
    assert parser.parse_args([*serve, "--workers", "3"]).workers == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args([*serve, "--workers", bad])
    factory = TargetFactory("CartPole-v1")
    with pytest.raises(ServerConfigError, match="num_envs"):
        EnvServer(factory=factory, workers=2)
    with pytest.raises(ServerConfigError):
        EnvServer(factory=factory, num_envs=4, workers=0)


def test_refuses_what_workers_cannot_carry() -> None:
    with pytest.raises(ServerConfigError, match="picklable"):
        WorkerVectorHost(lambda: gymnasium.make("CartPole-v1"), 2, 1)
    with pytest.raises(ServerConfigError, match="Text"):
        WorkerVectorHost(TargetFactory(TEXT), 2, 1, start_timeout=TIMEOUT)


# --------------------------------------------------------------------------- in this process


def test_host_in_process_matches_sync_and_reports_errors() -> None:
    with WorkerVectorHost(TargetFactory(DICT), 5, 2, start_timeout=TIMEOUT, timeout=TIMEOUT) as host:
        sync = SyncVectorEnv([functools.partial(make, DICT)] * 5)
        assert host.workers == 2 and [len(part) for part in host.slices] == [3, 2]
        assert host.single_observation_space == sync.single_observation_space
        assert host.action_space == sync.action_space and host.metadata == sync.metadata
        pids = host.worker_pids
        assert len(set(pids)) == 2 and os.getpid() not in pids
        assert host.get_attr(WORKER_PID_ATTR) == (pids[0],) * 3 + (pids[1],) * 2

        obs, infos = host.reset(seed=4)
        expected_obs, _ = sync.reset(seed=4)
        same(obs, expected_obs)
        assert infos == [{"seeded": True}] * 5
        sync.action_space.seed(4)
        for _ in range(40):
            actions = sync.action_space.sample()
            *arrays, infos = host.step(actions)
            *expected, expected_infos = sync.step(actions)
            for got, want in zip(arrays, expected):
                same(got, want)
            merged: dict = {}
            for index, info in enumerate(infos):
                merged = sync._add_info(merged, info, index)
            same(merged, expected_infos)

        with pytest.raises(KeyError, match="asked to fail"):
            host.call("fail")
        with pytest.raises(UnknownMethodError):
            host.call("_pos")
        with pytest.raises(UnknownMethodError):
            host.call("close")
        with pytest.raises(ValueError, match="shape"):
            host.step(np.zeros((4, 2), np.float32))
        host.set_attr("label", [f"env{i}" for i in range(5)])
        assert host.get_attr("label") == tuple(f"env{i}" for i in range(5))
        host.set_attr("fail_on_step", [False, False, False, True, False])
        with pytest.raises(ValueError, match="asked to fail in step"):
            host.step(sync.action_space.sample())
        host.set_attr("fail_on_step", False)
        assert host.step(sync.action_space.sample())[1].shape == (5,)  # still serving after the errors
        same(host.reset(seed=8)[0], sync.reset(seed=8)[0])
        sync.close()
    assert host.closed
    assert not wait_gone(set(pids))
    host.close()  # idempotent


def test_hung_worker_is_replaced_after_the_timeout() -> None:
    with WorkerVectorHost(TargetFactory(NESTED), 3, 2, start_timeout=TIMEOUT, timeout=0.5) as host:
        host.reset(seed=1)
        pids = host.worker_pids
        host.set_attr("delay", [0.0, 0.0, 60.0])  # env 2, alone in worker 1, hangs
        started = time.monotonic()
        obs, rewards, *_, infos = host.step(host.action_space.sample())
        assert time.monotonic() - started < 20
        assert [info.get(RESTARTED_KEY, False) for info in infos] == [False, False, True]
        assert host.worker_pids[0] == pids[0] and host.worker_pids[1] != pids[1] and host.restarts == 1
        (position, phase, hits), _ = make(NESTED).reset(seed=3)  # env 2 rebuilt and reset with seed 1 + 2
        assert np.array_equal(obs[0][2], position) and obs[1][2] == phase
        assert np.array_equal(obs[2]["hits"][2], hits["hits"]) and rewards[2] == 0.0
        assert host.get_attr("delay") == (0.0, 0.0, 0.0)  # the rebuilt env
    assert not wait_gone({pids[1]})


# --------------------------------------------------------------------------- served


@pytest.mark.parametrize(
    "target, num_envs, workers, steps",
    [
        ("CartPole-v1", 4, "1", 200),
        (NESTED, 5, "2", 120),
        (DICT, 7, "3", 120),
    ],
    ids=["cartpole-W1", "nested-5-over-2", "dict-7-over-3"],
)
def test_workers_match_sync_vector_env(serve, target: str, num_envs: int, workers: str, steps: int) -> None:
    server = serve(target, "--num-envs", str(num_envs), "--workers", workers, "--mode", "per-client")
    with FastVectorEnv(server.address, timeout=TIMEOUT) as envs:
        sync = SyncVectorEnv([functools.partial(make, target)] * num_envs)
        assert envs.num_envs == num_envs
        assert envs.observation_space == sync.observation_space and envs.action_space == sync.action_space
        assert envs.metadata == sync.metadata and envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        pids = worker_pids(envs)
        assert len(set(pids)) == int(workers) and server.pid not in pids
        assert against_sync(envs, sync, steps, seed=11) > 0  # autoresets included
        seeds = [50 + 7 * i for i in range(num_envs)]
        same(envs.reset(seed=seeds), sync.reset(seed=seeds))
        mask = np.arange(num_envs) % 2 == 1
        same(envs.reset(seed=3, options={"reset_mask": mask}), sync.reset(seed=3, options={"reset_mask": mask.copy()}))
        for _ in range(20):
            actions = sync.action_space.sample()
            same(envs.step(actions), sync.step(actions))
        sync.close()


def test_calls_across_workers(serve) -> None:
    server = serve(NESTED, "--num-envs", "5", "--workers", "2", "--mode", "per-client")
    with FastVectorEnv(server.address, timeout=TIMEOUT) as envs:
        assert envs.call("describe", "<", suffix=">") == ("<nested>",) * 5
        envs.set_attr("label", [f"env{i}" for i in range(5)])
        assert envs.call("describe", "") == tuple(f"env{i}" for i in range(5))
        envs.set_attr("horizon", 4)
        assert envs.get_attr("horizon") == (4,) * 5
        with pytest.raises(RemoteEnvError) as caught:
            envs.call("fail")
        assert isinstance(caught.value, ValueError) and "asked to fail" in str(caught.value)
        assert envs.render() == (None,) * 5
        envs.reset(seed=0)
        assert envs.step(envs.action_space.sample())[1].shape == (5,)


@pytest.mark.parametrize("backend", ["native", "python"])
def test_killed_worker_is_restarted(serve, backend: str) -> None:
    extra_env = {"FASTENV_NATIVE": "0"} if backend == "python" else {}
    server = serve(DICT, "--num-envs", "5", "--workers", "2", "--mode", "per-client", extra_env=extra_env)
    with FastVectorEnv(server.address, timeout=TIMEOUT) as envs:
        sync = SyncVectorEnv([functools.partial(make, DICT)] * 5)
        same(envs.reset(seed=21), sync.reset(seed=21))
        sync.action_space.seed(0)
        for _ in range(5):
            actions = sync.action_space.sample()
            same(envs.step(actions), sync.step(actions))
        pids = worker_pids(envs)
        victim = pids[-1]
        lost = np.array([pid == victim for pid in pids])  # the envs of the second worker: 3 and 4
        assert lost.tolist() == [False, False, False, True, True]
        os.kill(victim, signal.SIGKILL)

        actions = sync.action_space.sample()
        expected = sync.step(actions)
        obs, rewards, terminations, truncations, infos = envs.step(actions)
        assert infos[RESTARTED_KEY].tolist() == lost.tolist() and infos[f"_{RESTARTED_KEY}"].tolist() == lost.tolist()
        for index in np.flatnonzero(~lost):  # the other worker's envs kept stepping
            same(
                {key: value[index] for key, value in obs.items()},
                {key: value[index] for key, value in expected[0].items()},
            )
            assert rewards[index] == expected[1][index] and terminations[index] == expected[2][index]
        for index in np.flatnonzero(lost):  # rebuilt and reset with their seed
            fresh, _ = make(DICT).reset(seed=21 + int(index))
            assert sorted(obs) == sorted(fresh)
            assert all(np.array_equal(obs[key][index], fresh[key]) for key in fresh)
            assert rewards[index] == 0.0 and not terminations[index] and not truncations[index]

        new_pids = worker_pids(envs)
        assert new_pids[:3] == pids[:3] and victim not in new_pids and len(set(new_pids)) == 2
        assert RESTARTED_KEY not in envs.step(actions)[4]  # reported once
        for _ in range(10):
            envs.step(sync.action_space.sample())

        os.kill(new_pids[0], signal.SIGKILL)  # a crash during a call raises, and is repaired
        with pytest.raises(RemoteEnvError, match="WorkerCrashed"):
            envs.get_attr("label")
        assert envs.get_attr("label") == ("dict",) * 5
        assert new_pids[0] not in worker_pids(envs)
        sync.close()


@pytest.mark.parametrize("mode", ["shared", "per-client"])
def test_nothing_left_behind_when_the_server_stops(serve, mode: str) -> None:
    server = serve(DICT, "--num-envs", "4", "--workers", "2", "--mode", mode)
    with FastVectorEnv(server.address, timeout=TIMEOUT) as envs:
        envs.reset(seed=0)
        envs.step(envs.action_space.sample())
        pids = set(worker_pids(envs))
        assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
    if mode == "per-client":
        assert not wait_gone(pids)  # the session's envs, and their workers, end with the client
    else:
        assert all(psutil.pid_exists(pid) for pid in pids)  # the shared envs outlive the client
    server.stop()
    assert server.process is not None and server.process.returncode == 0
    assert not wait_gone(pids)
    assert not shm_left_by(server.pid)


def test_workers_leave_when_the_server_is_killed(serve) -> None:
    server = serve(DICT, "--num-envs", "3", "--workers", "2")  # shared mode: the envs outlive the client
    with FastVectorEnv(server.address, timeout=TIMEOUT) as envs:
        pids = set(worker_pids(envs))
    assert all(psutil.pid_exists(pid) for pid in pids)
    started = time.monotonic()
    server.kill()
    assert not wait_gone(pids), "workers outlived their server"
    assert time.monotonic() - started < 10  # they look for their server every WORKER_POLL_S


def test_a_client_does_not_spin_while_workers_take_every_cpu(serve) -> None:
    """Workers on every CPU: the server asks shared-memory clients not to spin (unless the client chose a spin)."""
    cpus = usable_cpus()  # a worker per CPU: with this server and one client, more processes than CPUs
    server = serve(NESTED, "--num-envs", str(max(4, cpus)), "--workers", str(cpus), "--mode", "per-client")
    with FastVectorEnv(server.address, timeout=TIMEOUT) as envs, FastVectorEnv(
        server.address, timeout=TIMEOUT, spin_us=150
    ) as chosen:
        session = envs.remotes[0]._session
        assert session.welcome["shm"]["client_spin_us"] == 0 and session.transport._spin_us == 0
        assert chosen.remotes[0]._session.transport._spin_us == 150
        envs.reset(seed=0)
        assert envs.step(envs.action_space.sample())[1].shape == (max(4, cpus),)
    plain = serve(NESTED, "--num-envs", "4", "--mode", "per-client")
    with FastVectorEnv(plain.address, timeout=TIMEOUT) as envs:
        assert "client_spin_us" not in envs.remotes[0]._session.welcome["shm"]
