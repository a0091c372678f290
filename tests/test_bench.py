"""Fast checks of fastenv.bench: stats math, options, baselines' correctness, JSON output.

No timing assertions here: performance lives in ``benchmarks/`` and ``fastenv-bench``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from fastenv.bench import cli, malloc, runner
from fastenv.bench.baselines import BASELINES, GymAsync, SeedPickle
from fastenv.bench.floors import FLOORS, memcpy_reference
from fastenv.bench.runner import (
    RunResult,
    TransportMismatch,
    TransportUnavailable,
    check_result,
    measure,
)
from fastenv.bench.stats import Spread, Summary, median_summary, spread, summarize
from fastenv.bench.targets import evaluate, format_targets
from fastenv.bench.workloads import (
    PAYLOADS,
    build,
    get_workload,
    observations_equal,
    snapshot,
)
from fastenv.errors import RemoteEnvError
from fastenv.shm import futex

TIMEOUT = 20.0


# ---------------------------------------------------------------- stats


def test_summarize_percentiles_mean_and_rate() -> None:
    rtt = np.arange(1, 101, dtype=np.int64) * 1000  # 1..100 µs
    summary = summarize(rtt, cpu_ns=np.full(100, 2500))
    assert summary.count == 100
    assert summary.p50_us == pytest.approx(50.5)
    assert summary.p90_us == pytest.approx(90.1)
    assert summary.p99_us == pytest.approx(99.01)
    assert summary.max_us == 100.0
    assert summary.mean_us == pytest.approx(50.5)
    assert summary.steps_per_s == pytest.approx(1e6 / 50.5)
    assert summary.cpu_us == pytest.approx(2.5)


def test_summarize_single_sample_and_no_cpu() -> None:
    summary = summarize([2_000_000])
    assert summary.p50_us == summary.p99_us == summary.max_us == 2000.0
    assert summary.steps_per_s == pytest.approx(500.0)
    assert math.isnan(summary.cpu_us)


def test_summarize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="CPU samples"):
        summarize([1, 2, 3], cpu_ns=[1, 2])


def test_spread_and_median_summary() -> None:
    assert spread([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0)
    assert spread([3.0, 1.0, 2.0]).relative == pytest.approx(1.0)
    assert spread([5.0]).relative == 0.0
    assert spread([math.nan, 4.0]) == Spread(4.0, 4.0, 4.0)
    assert math.isnan(spread([]).median)
    runs = [summarize(np.full(10, n * 1000)) for n in (10, 30, 20)]
    medians = median_summary(runs)
    assert set(medians) == set(Summary.__dataclass_fields__)
    assert medians["p50_us"] == Spread(20.0, 10.0, 30.0)
    assert medians["steps_per_s"].median == pytest.approx(1e6 / 20)
    with pytest.raises(ValueError):
        median_summary([])


# ---------------------------------------------------------------- workloads


def test_workloads_build_env_and_action() -> None:
    assert set(PAYLOADS) == {"small", "camera"}
    env, action = build("small")
    assert action.dtype == np.float32 and action.shape == (4,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,)
    env, action = build("camera")
    assert action.shape == (20,)
    assert env.height == 480 and env.width == 640 and env.proprio_dim == 20
    with pytest.raises(KeyError, match="small"):
        get_workload("nope")


def test_workloads_never_truncate_during_a_run() -> None:
    for name in PAYLOADS:
        env, action = build(name)
        env.reset(seed=0)
        assert not any(env.step(action)[3] for _ in range(1200))  # VectorEnv's default is 1000


def test_snapshot_copies_read_only_views() -> None:
    view = np.arange(4, dtype=np.float32)
    view.flags.writeable = False
    copied = snapshot(({"a": view}, 1.0, [view]))
    assert observations_equal(copied, ({"a": view}, 1.0, [view]))
    assert copied[0]["a"].flags.writeable and not np.shares_memory(copied[0]["a"], view)


def test_observations_equal() -> None:
    a = {"x": np.zeros(3, np.float32), "y": (1, [2.0])}
    assert observations_equal(a, {"x": np.zeros(3, np.float32), "y": (1, [2.0])})
    assert not observations_equal(a, {"x": np.zeros(3, np.float64), "y": (1, [2.0])})
    assert not observations_equal(a, {"x": np.ones(3, np.float32), "y": (1, [2.0])})
    assert not observations_equal(a, {"x": np.zeros(3, np.float32), "y": [1, [2.0]]})
    assert not observations_equal(np.zeros(2), [0.0, 0.0])
    assert not observations_equal(1, 1.0)


# ---------------------------------------------------------------- baselines


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_small_matches_local_env(name: str) -> None:
    env, action = build("small")
    with BASELINES[name]("small", timeout=TIMEOUT) as remote:
        obs, info = remote.reset(seed=0)
        expected_obs, expected_info = env.reset(seed=0)
        assert observations_equal(obs, expected_obs) and info == expected_info
        for _ in range(5):
            assert observations_equal(remote.step(action), env.step(action))
        process = remote._process
    assert remote._process is None
    assert process is not None and process.returncode == 0  # exited by itself, not killed


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_camera_matches_local_env(name: str) -> None:
    env, action = build("camera")
    with BASELINES[name]("camera", timeout=TIMEOUT) as remote:
        assert observations_equal(remote.reset(seed=0)[0], env.reset(seed=0)[0])
        result = remote.step(action)
        assert observations_equal(result, env.step(action))
        assert result[0]["left"].shape == (480, 640, 3) and result[0]["left"].dtype == np.uint8


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_env_error_is_typed_and_server_keeps_serving(name: str) -> None:
    env, action = build("small")
    with BASELINES[name]("small", timeout=TIMEOUT) as remote:
        remote.reset(seed=0)
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError) as info:
            remote.step("not a number")
        assert isinstance(info.value, ValueError)
        assert observations_equal(remote.step(action), env.step(action))


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("name", list(FLOORS))
def test_floor_returns_the_observation(name: str, payload: str) -> None:
    env, action = build(payload)
    with FLOORS[name](payload, timeout=TIMEOUT) as remote:
        got = remote.reset(seed=0)
        assert check_result(remote, (got[0],), (env.reset(seed=0)[0],))
        for _ in range(4):
            result = remote.step(action)
            assert check_result(remote, result, env.step(action))
        arrays = [result[0]] if isinstance(result[0], np.ndarray) else list(result[0].values())
        assert not any(a.flags.writeable for a in arrays)  # views into the shared segment
        del got, result, arrays
        process = remote._process
    assert process is not None and process.returncode == 0


def test_floor_detects_a_wrong_observation() -> None:
    env, action = build("small")
    with FLOORS["shm-pingpong-futex"]("small", timeout=TIMEOUT) as remote:
        remote.reset(seed=0)
        env.reset(seed=1)
        assert not check_result(remote, remote.step(action), env.step(action))


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_gym_async_returns_the_observation(payload: str) -> None:
    env, action = build(payload)
    with GymAsync(payload, timeout=TIMEOUT) as remote:
        assert check_result(remote, remote.reset(seed=0), env.reset(seed=0))
        for _ in range(3):
            result = remote.step(action)
            assert check_result(remote, result, env.step(action))
        assert np.asarray(result[1]).shape == (1,)  # Gymnasium's batched reward
        env.step(action)
        assert not check_result(remote, remote.step(np.zeros_like(action)), env.step(action))
    remote.close()


def test_memcpy_reference() -> None:
    reference = memcpy_reference("camera", copies=5, warmup=1)
    assert reference.nbytes == 2 * 480 * 640 * 3 + 20 * 4
    assert reference.cached.count == reference.fresh.count == 5
    assert reference.cached.p50_us > 0 and reference.fresh.p50_us > 0
    assert set(reference.as_dict()) == {"payload", "nbytes", "cached", "fresh_source"}
    with pytest.raises(ValueError):
        memcpy_reference("small", copies=0)


def test_malloc_modes() -> None:
    assert malloc.environment("default") == {}
    assert set(malloc.environment("steady")) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
    assert malloc.apply({}) is True
    with pytest.raises(ValueError):
        malloc.environment("fast")


def test_baseline_close_twice_and_unknown_payload() -> None:
    remote = SeedPickle("small", timeout=TIMEOUT)
    remote.close()
    remote.close()
    with pytest.raises(KeyError):
        SeedPickle("huge", timeout=TIMEOUT)


# ---------------------------------------------------------------- runner


class _LocalClient:
    """The env itself in-process; from call ``corrupt_at`` on, it drops the action (sends zeros)."""

    def __init__(self, payload: str, corrupt_at: int | None = None) -> None:
        self.env, _ = build(payload)
        self.corrupt_at = corrupt_at
        self.calls = 0

    def reset(self, seed: int | None = None) -> Any:
        return self.env.reset(seed=seed)

    def step(self, action: Any) -> Any:
        self.calls += 1
        if self.corrupt_at is not None and self.calls >= self.corrupt_at:
            action = np.zeros_like(action)
        return self.env.step(action)


def test_measure_times_and_verifies() -> None:
    result = measure(_LocalClient("small"), "local", "small", steps=50, warmup=3)
    assert result.rtt_ns.shape == result.cpu_ns.shape == (50,)
    assert (result.rtt_ns > 0).all()
    assert result.summary.count == 50 and not result.truncated
    assert result.verified_steps == 5
    assert set(result.as_dict()) >= {"transport", "payload", "steps_timed", "summary"}


@pytest.mark.parametrize("corrupt_at", [2, 30])  # in the warmup, then in the timed loop
def test_measure_detects_corruption(corrupt_at: int) -> None:
    with pytest.raises(TransportMismatch):
        measure(_LocalClient("small", corrupt_at=corrupt_at), "local", "small", steps=50, warmup=3)


def test_measure_max_seconds_truncates() -> None:
    ticks = iter(range(0, 10**12, 10**9))  # a fake clock: one second per reading
    result = measure(
        _LocalClient("small"), "local", "small", steps=100, warmup=0, max_seconds=5, clock=lambda: next(ticks)
    )
    assert result.truncated and 1 <= result.rtt_ns.size < 100


def test_run_transport_baseline_end_to_end() -> None:
    result = runner.run_transport("zmq-pickle", "small", steps=20, warmup=2, timeout=TIMEOUT)
    assert result.summary.count == 20 and result.transport == "zmq-pickle"


@pytest.mark.parametrize("name", runner.TRANSPORTS)
def test_every_transport_smoke(name: str) -> None:
    result = runner.run_transport(name, "small", steps=5, warmup=1, timeout=TIMEOUT, max_seconds=5.0,
                                  server_env=malloc.environment("steady"))
    assert result.transport == name and 1 <= result.summary.count <= 5
    assert result.verified_steps == 3


def test_fastenv_shm_returns_read_only_views() -> None:
    env, action = build("camera")
    with runner.open_transport("fastenv-shm", "camera", timeout=TIMEOUT) as remote:
        assert remote._env.transport == "shm"
        assert check_result(remote, remote.reset(seed=0), env.reset(seed=0))
        result = remote.step(action)
        assert not result[0]["left"].flags.writeable
        assert check_result(remote, result, env.step(action))
        del result


@pytest.mark.skipif(futex.BACKEND == "python", reason="this process already runs the pure-Python doorbell")
def test_fastenv_shm_py_needs_its_subprocess() -> None:
    with pytest.raises(TransportUnavailable, match="FASTENV_NATIVE=0"), runner.open_transport(
        "fastenv-shm-py", "small", timeout=TIMEOUT
    ):
        pass


def test_client_subprocess_reports_unavailable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastenv.bench.runner", "--connect", "tcp://127.0.0.1:1", "--transport",
         "fastenv-tcp", "--payload", "small", "--steps", "2", "--timeout", "1"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["error"] == "unavailable"


def test_unknown_transport() -> None:
    with pytest.raises(KeyError, match="seed-pickle"):
        runner.run_transport("carrier-pigeon", "small", steps=1, warmup=0)


# ---------------------------------------------------------------- cli


def test_parse_args_defaults_and_lists() -> None:
    args = cli.parse_args([])
    assert args.transports == list(runner.TRANSPORTS)
    assert (args.payload, args.repeat, args.json, args.malloc) == ("small", 1, None, "steady")
    assert {"fastenv-shm", "fastenv-shm-py", "fastenv-tcp", "gym-async", "mp-pipe", "shm-pingpong-spin",
            "shm-pingpong-futex"} <= set(args.transports)
    args = cli.parse_args(["--transports", "zmq-pickle, seed-pickle,zmq-pickle", "--payload", "camera",
                           "--steps", "7", "--warmup", "0", "--repeat", "3", "--json", "x.json"])
    assert args.transports == ["zmq-pickle", "seed-pickle"]
    assert (args.payload, args.steps, args.warmup, args.repeat, args.json) == ("camera", 7, 0, 3, "x.json")


@pytest.mark.parametrize(
    "argv",
    [["--transports", "nope"], ["--transports", ","], ["--payload", "huge"], ["--steps", "0"],
     ["--warmup", "-1"], ["--repeat", "x"], ["--max-seconds", "0"], ["--malloc", "fast"]],
)
def test_parse_args_rejects(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(argv)
    assert info.value.code == 2
    capsys.readouterr()


def _fake_result(transport: str, p50_us: float) -> RunResult:
    rtt = np.full(10, int(p50_us * 1000), dtype=np.int64)
    cpu = np.full(10, 1000, dtype=np.int64)
    return RunResult(transport, "small", 10, 0, rtt, cpu, 0.1, 2, summarize(rtt, cpu))


def test_format_table_ratio_to_fastest_fastenv_row() -> None:
    rows = [
        cli.Row("zmq-pickle", [_fake_result("zmq-pickle", 100.0)]),
        cli.Row("fastenv-tcp", [_fake_result("fastenv-tcp", 50.0), _fake_result("fastenv-tcp", 60.0)]),
        cli.Row("seed-pickle", status="unavailable", error="boom"),
    ]
    table = cli.format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["transport", "n", "p50"]
    zmq_line = next(line for line in lines if line.startswith("zmq-pickle"))
    assert zmq_line.endswith("1.82x")  # 100 / median(50, 60)
    assert next(line for line in lines if line.startswith("fastenv-tcp")).endswith("1.00x")
    assert "unavailable: boom" in table and "ref = fastenv-tcp" in table


def test_format_table_without_fastenv_row_uses_fastest() -> None:
    rows = [cli.Row("zmq-pickle", [_fake_result("zmq-pickle", 100.0)]),
            cli.Row("seed-pickle", [_fake_result("seed-pickle", 400.0)])]
    table = cli.format_table(rows)
    assert "ref = zmq-pickle" in table and "4.00x" in table


def test_targets_small_pass_miss_and_na() -> None:
    targets = evaluate("small", {"fastenv-shm": 8.0, "gym-async": 100.0, "fastenv-tcp": 70.0, "zmq-pickle": 100.0},
                       {"fastenv-shm": 50.0})
    assert [t.status for t in targets] == ["PASS", "PASS", "MISS", "MISS"]
    assert targets[1].measured == pytest.approx(12.5) and targets[2].measured == pytest.approx(6.25)
    assert all(t.status == "n/a" for t in evaluate("small", {}, {}))
    text = format_targets(targets)
    assert text.startswith("targets:") and "[PASS] fastenv-shm p50 ≤ 10 µs: 8.0 µs" in text
    assert "[MISS] fastenv-tcp p50 / zmq-pickle p50 ≤ 0.6x: 0.70x" in text


def test_targets_camera_use_memcpy() -> None:
    targets = evaluate("camera", {"fastenv-shm": 120.0, "gym-async": 400.0}, {"fastenv-shm": 200.0},
                       {"cached": 100.0, "fresh": 150.0})
    assert [(t.measured, t.status) for t in targets] == [
        (pytest.approx(1.2), "PASS"), (pytest.approx(0.8), "PASS"), (pytest.approx(10 / 3), "MISS"),
        (pytest.approx(5 / 3), "PASS")]
    assert evaluate("camera", {"fastenv-shm": 1.0}, {})[0].status == "n/a"  # no memcpy reference
    assert targets[0].as_dict()["comparison"] == "<=" and targets[2].as_dict()["comparison"] == ">="


def test_main_writes_json(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out.json"
    code = cli.main(["--transports", "seed-pickle-nodelay,zmq-pickle", "--steps", "20", "--warmup", "2",
                     "--repeat", "2", "--timeout", str(TIMEOUT), "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "seed-pickle-nodelay" in out and "p50 µs" in out
    report = json.loads(path.read_text())
    assert report["schema"] == cli.SCHEMA
    assert {"cpu_count", "python", "numpy", "pyzmq"} <= set(report["machine"])
    assert report["config"]["repeat"] == 2 and report["config"]["payload"] == "small"
    assert report["config"]["malloc"] == "steady"
    assert report["memcpy"]["nbytes"] == 16 and report["memcpy"]["cached"]["count"] == 20
    assert [t["status"] for t in report["targets"]] == ["n/a", "n/a", "n/a", "n/a"]  # no fastenv row ran
    assert "targets:" in out and "memcpy (small observation, 16 B" in out
    assert report["reference"] in ("seed-pickle-nodelay", "zmq-pickle")
    assert [r["transport"] for r in report["results"]] == ["seed-pickle-nodelay", "zmq-pickle"]
    for entry in report["results"]:
        assert entry["status"] == "ok" and entry["error"] is None
        assert len(entry["runs"]) == 2
        assert entry["runs"][0]["steps_timed"] == 20
        assert set(entry["median"]["p50_us"]) == {"median", "low", "high", "relative"}
        assert entry["p50_ratio_to_reference"] >= 1.0


def test_main_reports_unavailable_transport(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unavailable(name: str, *args: Any, **kwargs: Any) -> RunResult:
        raise TransportUnavailable("no core yet\nlast line")

    monkeypatch.setattr(cli, "run_transport", unavailable)
    assert cli.main(["--transports", "fastenv-tcp", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "fastenv-tcp  unavailable: TransportUnavailable: no core yet ... last line" in out


def test_main_fails_on_mismatch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def mismatch(name: str, *args: Any, **kwargs: Any) -> RunResult:
        raise TransportMismatch("differs")

    monkeypatch.setattr(cli, "run_transport", mismatch)
    assert cli.main(["--transports", "zmq-pickle", "--steps", "5"]) == 1
    assert "mismatch" in capsys.readouterr().out


def test_module_is_runnable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastenv.bench.cli", "--transports", "zmq-pickle", "--steps", "5",
         "--warmup", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "zmq-pickle" in done.stdout
