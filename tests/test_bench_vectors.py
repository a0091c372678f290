"""``fastenv-bench --scaling envs`` with the costly and uneven envs, the peers, ``--workers`` and the async pool.

The quick path end to end (tiny settings), ``--quick``'s settings, the cost
payloads, and the pool row's env-by-env check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastenv.bench import cli
from fastenv.bench.cost_env import CostEnv
from fastenv.bench.options import QUICK
from fastenv.bench.vector_pool import PoolReference
from fastenv.bench.vectors import batch_action, reference_env, vector_workload
from fastenv.bench.workloads import get_workload

TIMEOUT = 20.0


def test_quick_settings() -> None:
    args = cli.parse_args(["--scaling", "envs", "--quick"])
    assert args.counts == [8] and args.sweep == ["small", "costly", "uneven"] and not args.breakdown
    assert (args.steps, args.warmup, args.repeat, args.max_seconds) == tuple(QUICK.values())
    args = cli.parse_args(["--scaling", "envs", "--quick", "--payload", "uneven", "--steps", "7", "--counts", "2"])
    assert args.sweep is None and args.payload == "uneven" and args.steps == 7 and args.counts == [2]
    args = cli.parse_args(["--scaling", "clients", "--quick"])
    assert args.counts == [1, 2] and args.sweep is None
    args = cli.parse_args([])
    assert (args.steps, args.warmup, args.max_seconds, args.payload, args.breakdown) == (1000, 10, 15.0, "small", True)


def test_cost_payloads() -> None:
    costly, uneven = get_workload("costly"), get_workload("uneven")
    assert costly.for_envs(4) is costly and uneven.for_envs(4).env_kwargs["levels"] == 4
    envs = [vector_workload("uneven", 4).make_env() for _ in range(4)]
    for seed, env in enumerate(envs):
        env.reset(seed=seed)  # env i of a vector env is reset with seed + i
    assert envs[3].step_s == pytest.approx(10 * envs[0].step_s)  # 10x between the first env and the last
    assert envs[0].action_space.shape == (4,) and not envs[0].step(batch_action("uneven", 4)[0])[3]
    discrete = CostEnv()
    discrete.reset(seed=0)
    assert discrete.action_space.n == 2 and discrete.step(1)[0].shape == (8,)


def test_pool_reference_steps_each_env_as_often_as_returned() -> None:
    actions = batch_action("costly", 3)
    reference = reference_env("costly", 3, "fastenv-pool")
    local = reference_env("costly", 3)
    try:
        assert isinstance(reference, PoolReference) and reference.step(actions) is reference
        obs, _ = reference.reset(seed=0)
        assert np.array_equal(obs, local.reset(seed=0)[0])
        expected = [local.step(actions) for _ in range(2)][-1]
        got = reference.rows(np.array([0, 2]), np.array([2, 0, 2]))
        assert np.array_equal(got[0], expected[0][[0, 2]]) and got[1].tolist() == expected[1][[0, 2]].tolist()
        assert reference.stepped.tolist() == [2, 0, 2]
    finally:
        reference.close()
        local.close()


def test_quick_scaling_envs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "envs.json"
    code = cli.main(["--scaling", "envs", "--quick", "--sweep", "small,uneven", "--counts", "2", "--steps", "5",
                     "--transports", "fastenv-pool,gym-sync,sb3-subproc,puffer-mp", "--timeout", str(TIMEOUT),
                     "--format", "markdown", "--json", str(path), "--no-progress"])  # fmt: skip
    assert code == 0  # every row that ran was checked against its local reference
    out = capsys.readouterr().out
    assert "**payload small**" in out and "**payload uneven**" in out and out.count("| vs gym-sync |") == 2
    assert "| fastenv-pool | 2 | 5 |" in out and "| gym-sync | 2 | 5 |" in out
    assert "sb3-subproc steps gymnasium.Env subclasses only" in out or "needs stable_baselines3" in out
    report = json.loads(path.read_text())
    assert [section["payload"] for section in report["payloads"]] == ["small", "uneven"]
    uneven = {entry["transport"]: entry for entry in report["payloads"][1]["results"]}
    assert uneven["gym-sync"]["ratio_to_reference"] == pytest.approx(1.0)
    assert uneven["fastenv-pool"]["status"] == "ok" and uneven["fastenv-pool"]["runs"][0]["env_steps_per_call"] == 1
    assert uneven["sb3-subproc"]["status"] == "ok" or "not installed" in uneven["sb3-subproc"]["error"]
    assert uneven["puffer-mp"]["status"] == "ok" or "not installed" in uneven["puffer-mp"]["error"]
