"""Fast checks of fastenv.bench: stats math, options, baselines' correctness, JSON output,
table formats, progress, plots, the round-trip breakdown and the scaling suites.

No timing assertions here: performance lives in ``benchmarks/`` and ``fastenv-bench``.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastenv.cli
from fastenv.bench import (
    breakdown,
    breakdown_paths,
    cli,
    malloc,
    plot,
    progress,
    render,
    runner,
    scaling,
    tables,
    vectors,
)
from fastenv.bench.baselines import BASELINES
from fastenv.bench.floors import FLOORS
from fastenv.bench.gym_async import GymAsync
from fastenv.bench.memcpy import memcpy_reference
from fastenv.bench.results import PayloadResults, ScalingRow
from fastenv.bench.runner import TransportUnavailable
from fastenv.bench.seed_pickle import SeedPickle
from fastenv.bench.stats import Spread, Summary, median_summary, spread, summarize
from fastenv.bench.targets import evaluate, format_targets
from fastenv.bench.timing import RunResult, TransportMismatch, check_result, measure
from fastenv.bench.workloads import (
    PAYLOADS,
    SWEEP_PAYLOADS,
    build,
    get_workload,
    observation_nbytes,
    observations_equal,
    snapshot,
)
from fastenv.errors import MissingDependency, RemoteEnvError
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
    assert set(PAYLOADS) == {"small", "camera", "camera-alloc"}
    env, action = build("small")
    assert action.dtype == np.float32 and action.shape == (4,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,)
    env, action = build("camera")
    assert action.shape == (20,)
    assert env.height == 480 and env.width == 640 and env.proprio_dim == 20
    assert env.reply_arrays and not build("camera-alloc")[0].reply_arrays
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


def test_tcp_raw_floor_detects_a_wrong_observation_and_footnote() -> None:
    env, action = build("camera")
    with FLOORS["tcp-raw"]("camera", timeout=TIMEOUT) as remote:
        assert check_result(remote, (remote.reset(seed=0)[0],), (env.reset(seed=0)[0],))
        assert check_result(remote, remote.step(action), env.step(action))
        env.step(action)
        assert not check_result(remote, remote.step(np.zeros_like(action)), env.step(action))
    rows = [cli.Row("tcp-raw", [_fake_result("tcp-raw", 50.0)])]
    text = cli.format_table(rows)
    assert "tcp-raw = network floor" in text and "no codec" in text and "shm-pingpong-*" not in text


@pytest.mark.parametrize("name", ["tcp-raw", "zmq-pickle", "fastenv-shm", "fastenv-shm-py", "gym-async"])
def test_server_cpu_per_step(name: str) -> None:
    result = runner.run_transport(name, "small", steps=20, warmup=1, timeout=TIMEOUT)
    assert result.summary.server_cpu_us > 0
    assert result.as_dict()["summary"]["server_cpu_us"] == result.summary.server_cpu_us
    local = measure(_LocalClient("small"), "local", "small", steps=5, warmup=0)
    assert math.isnan(local.summary.server_cpu_us)  # no separate server process
    rows = [cli.Row(name, [result]), cli.Row("local", [local])]
    lines = cli.format_table(rows).splitlines()
    assert "server CPU µs/step" in lines[0] and "client CPU µs/step" in lines[0]
    assert next(line for line in lines if line.startswith("local")).split()[-2] == "-"
    assert next(line for line in lines if line.startswith(name)).split()[-2] != "-"
    assert "server CPU = the server process" in "\n".join(lines)


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


def test_fastenv_shm_returns_writable_views_into_the_arena() -> None:
    env, action = build("camera")
    with runner.open_transport("fastenv-shm", "camera", timeout=TIMEOUT) as remote:
        assert remote._env.transport == "shm"
        assert check_result(remote, remote.reset(seed=0), env.reset(seed=0))
        result = remote.step(action)
        assert result[0]["left"].flags.writeable and not result[0]["left"].flags.owndata
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
            "shm-pingpong-futex", "tcp-raw"} <= set(args.transports)
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
    p50 = {"fastenv-shm": 120.0, "gym-async": 400.0, "fastenv-tcp": 500.0, "tcp-raw": 400.0, "zmq-pickle": 1000.0}
    targets = evaluate("camera", p50, {"fastenv-shm": 200.0}, {"cached": 100.0, "fresh": 150.0})
    assert [(t.measured, t.status) for t in targets] == [
        (pytest.approx(1.2), "PASS"), (pytest.approx(0.8), "PASS"), (pytest.approx(10 / 3), "MISS"),
        (pytest.approx(5 / 3), "PASS"), (pytest.approx(1.25), "PASS"), (pytest.approx(2.0), "MISS")]
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


# ---------------------------------------------------------------- sized payloads and sweeps


def test_sized_camera_payloads() -> None:
    workload = get_workload("camera-8x16")
    env = workload.make_env()
    obs, _ = env.reset(seed=0)
    assert obs["left"].shape == (8, 16, 3) and workload.action_dim == 20
    assert observation_nbytes("camera-8x16") == 2 * 8 * 16 * 3 + 20 * 4
    assert observation_nbytes("small") == 16
    assert "camera-8x16" not in PAYLOADS  # built from the name, not listed
    sizes = [observation_nbytes(name) for name in SWEEP_PAYLOADS]
    assert sizes == sorted(sizes) and sizes[-1] == observation_nbytes("camera")
    for bad in ("camera-0x16", "camera-8x", "camera-9000x10", "camera-8x16x2"):
        with pytest.raises(KeyError, match="camera-<H>x<W>"):
            get_workload(bad)


def test_parse_args_sweep_and_payload_names() -> None:
    assert cli.parse_args(["--sweep"]).sweep == list(SWEEP_PAYLOADS)
    assert cli.parse_args(["--sweep", "small,camera-8x8,small"]).sweep == ["small", "camera-8x8"]
    assert cli.parse_args([]).sweep is None
    assert cli.parse_args(["--payload", "camera-24x32"]).payload == "camera-24x32"


def _fake_run_transport(p50_us: float = 100.0) -> Any:
    def fake(name: str, payload: str, steps: int, warmup: int, **kwargs: Any) -> RunResult:
        return _fake_result(name, p50_us)

    return fake


def test_sweep_table_mb_per_s() -> None:
    rows = [cli.Row("fastenv-shm", [_fake_result("fastenv-shm", 100.0)]),
            cli.Row("zmq-pickle", status="unavailable", error="boom")]  # fmt: skip
    sections = [PayloadResults("camera-8x8", 1_000_000, rows), PayloadResults("small", 16, rows)]
    table = tables.sweep_table(sections)
    assert [c.header for c in table.columns] == ["transport", "small", "camera-8x8"]  # ordered by size
    assert table.rows[0] == ["fastenv-shm", "0.16", "10,000"]  # 16 B and 1 MB at 10,000 steps/s
    assert table.rows[1] == ["zmq-pickle", "unavailable", "unavailable"]


def test_main_sweep(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "run_transport", _fake_run_transport())
    path = tmp_path / "sweep.json"
    code = cli.main(["--sweep", "small,camera-8x8", "--transports", "fastenv-tcp,zmq-pickle", "--steps", "5",
                     "--format", "plain", "--no-progress", "--json", str(path)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "payload small (16 B)" in out and "payload camera-8x8 (464 B)" in out
    assert "MB/s by payload" in out
    report = json.loads(path.read_text())
    assert report["schema"] == "fastenv-bench-sweep/1"
    assert report["config"]["payloads"] == ["small", "camera-8x8"]
    assert [p["payload"] for p in report["payloads"]] == ["small", "camera-8x8"]
    assert report["payloads"][1]["observation_nbytes"] == 464
    assert report["payloads"][1]["results"][0]["mb_per_s"] == pytest.approx(464 * 1e4 / 1e6)


# ---------------------------------------------------------------- table formats


def _rows() -> list[cli.Row]:
    return [
        cli.Row("zmq-pickle", [_fake_result("zmq-pickle", 100.0)]),
        cli.Row("fastenv-tcp", [_fake_result("fastenv-tcp", 50.0)]),
        cli.Row("seed-pickle", status="unavailable", error="a | b"),
    ]


def test_format_table_columns_and_mb_per_s() -> None:
    lines = cli.format_table(_rows(), nbytes=16).splitlines()
    assert lines[0].split() == ["transport", "n", "p50", "µs", "p50", "±%", "p90", "µs", "p99", "µs", "max", "µs",
                                "steps/s", "MB/s", "client", "CPU", "µs/step", "server", "CPU", "µs/step", "p50", "/",
                                "ref"]  # fmt: skip
    zmq = next(line for line in lines if line.startswith("zmq-pickle")).split()
    assert zmq[-5:] == ["10,000", "0.16", "1.0", "-", "2.00x"]  # steps/s, MB/s, client / server CPU, ratio
    assert "MB/s" not in cli.format_table(_rows())  # without the observation size


def test_format_table_markdown() -> None:
    lines = cli.format_table(_rows(), "markdown", nbytes=16).splitlines()
    assert lines[0].startswith("| transport | n | p50 µs |") and lines[0].endswith("| p50 / ref |")
    assert lines[1] == "|:---|" + "---:|" * 11
    assert lines[2].startswith("| zmq-pickle | 10 | 100.0 |") and lines[2].endswith("| 2.00x |")
    assert lines[4] == "| seed-pickle | *unavailable: a \\| b* |" + "  |" * 10  # escaped pipe, padded row
    assert all(line.count("|") - line.count("\\|") == 13 for line in lines[:5])
    assert any(line.startswith("- ref = fastenv-tcp (fastest fastenv row);") for line in lines)


def test_format_table_rich() -> None:
    text = cli.format_table(_rows(), "rich", nbytes=16)
    assert "\x1b[" not in text  # no colour codes outside a terminal
    lines = text.splitlines()
    assert lines[0].startswith("╭") and "transport" in lines[1] and "p50 / ref" in lines[1]
    assert any(line.startswith("│ zmq-pickle") and "2.00x" in line for line in lines)
    assert "seed-pickle: unavailable: a | b" in text and "ref = fastenv-tcp" in text
    assert all(line == line.rstrip() for line in lines)


def test_render_rejects_bad_tables() -> None:
    table = render.Table([render.Column("a", "left"), render.Column("b")], [["x", "1"]])
    with pytest.raises(ValueError, match="unknown table format"):
        render.render(table, "html")
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        render.Table([render.Column("a")], [["x", "1"]])


def test_default_format_follows_the_terminal() -> None:
    assert render.default_format(io.StringIO()) == "plain"
    assert render.default_format(_Terminal()) == "rich"


@pytest.mark.parametrize("fmt", ["plain", "markdown", "rich"])
def test_main_formats(
    fmt: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "run_transport", _fake_run_transport())
    assert cli.main(["--transports", "fastenv-shm,zmq-pickle", "--steps", "5", "--format", fmt]) == 0
    out = capsys.readouterr().out
    marker = {"plain": "\ntransport     n  p50 µs", "markdown": "| transport | n |", "rich": "│ transport"}[fmt]
    assert marker in out
    assert ("targets:" in out) == (fmt == "plain") and "fastenv-shm p50" in out
    assert "round-trip breakdown (p50)" in out and "transport = p50 - (encode + env step + decode)" in out


def test_main_defaults_to_plain_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "run_transport", _fake_run_transport())
    assert cli.main(["--transports", "zmq-pickle", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^zmq-pickle +10 +100\.0 ", out, re.MULTILINE) and "╭" not in out and "\x1b[" not in out


# ---------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_mode_follows_the_terminal() -> None:
    assert progress.choose_mode(io.StringIO()) == "lines"
    assert progress.choose_mode(_Terminal()) == "bar"
    assert progress.choose_mode(_Terminal(), disabled=True) == "off"
    with pytest.raises(ValueError):
        progress.Progress(1, "spinner", io.StringIO())


def test_progress_lines_off_and_bar(capsys: pytest.CaptureFixture[str]) -> None:
    lines = io.StringIO()
    with progress.open_progress(2, stream=lines) as report:
        report.start("a")
        report.finish("a", "ok")
        report.finish("b", "unavailable")
    assert lines.getvalue() == "  [1/2] a: ok\n  [2/2] b: unavailable\n"
    quiet = _Terminal()
    with progress.open_progress(2, disabled=True, stream=quiet) as report:
        report.finish("a", "ok")
    assert quiet.getvalue() == ""
    terminal = _Terminal()
    with progress.open_progress(2, stream=terminal) as report:
        assert report.mode == "bar"
        report.start("fastenv-shm small")
        report.finish("fastenv-shm small", "ok")
    assert "fastenv-shm small" in terminal.getvalue() and "1/2" in terminal.getvalue()
    assert capsys.readouterr() == ("", "")  # nothing on the real stdout or stderr


def test_main_progress_on_stderr_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "run_transport", _fake_run_transport())
    assert cli.main(["--transports", "fastenv-tcp,zmq-pickle", "--steps", "5", "--repeat", "2"]) == 0
    out, err = capsys.readouterr()
    assert "  [1/6] fastenv-tcp small [1/2]: ok" in err and "  [4/6] fastenv-tcp small [2/2]: ok" in err
    assert "  [5/6] breakdown tcp small [1/2]: ok" in err and "  [6/6] breakdown tcp small [2/2]: ok" in err
    assert "[1/6]" not in out
    assert cli.main(["--transports", "zmq-pickle", "--steps", "5", "--no-progress"]) == 0
    assert "[1/1]" not in capsys.readouterr().err


def test_main_json_to_stdout_is_clean(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "run_transport", _fake_run_transport())
    assert cli.main(["--transports", "fastenv-tcp,zmq-pickle", "--steps", "5", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # nothing but the document
    assert report["schema"] == cli.SCHEMA and report["observation_nbytes"] == 16
    assert [r["transport"] for r in report["results"]] == ["fastenv-tcp", "zmq-pickle"]
    assert report["results"][0]["mb_per_s"] == pytest.approx(0.16)
    assert "transport" in err and "[2/3] zmq-pickle small: ok" in err  # the table and progress went to stderr


# ---------------------------------------------------------------- round-trip breakdown


def _costs(plane: str = "shm", *, env: float = 10.0, encode: float = 4.0, decode: float = 6.0,
           samples: int = 100, general: int = 0) -> breakdown.InProcessCosts:  # fmt: skip
    return breakdown.InProcessCosts("small", plane, samples, env, encode, decode, encode / 2, encode / 2,
                                    decode / 2, decode / 2, 50.0, general)  # fmt: skip


def test_breakdown_row_parts_and_remainder() -> None:
    row = breakdown.BreakdownRow("fastenv-shm", 40.0, _costs())
    assert row.parts_us() == {"encode": 4.0, "transport": 20.0, "env": 10.0, "decode": 6.0}
    assert list(row.parts_us()) == list(breakdown.PARTS) == ["encode", "transport", "env", "decode"]
    assert row.percent() == {"encode": 10.0, "transport": 50.0, "env": 25.0, "decode": 15.0}
    slow = breakdown.BreakdownRow("fastenv-shm", 15.0, _costs())  # in-process parts exceed the round trip
    assert slow.transport_us == 0.0 and slow.percent()["env"] == pytest.approx(200 / 3)
    missing = breakdown.BreakdownRow("fastenv-tcp", 40.0, error="boom")
    assert all(math.isnan(v) for v in missing.parts_us().values())
    entry = row.as_dict()
    assert entry["plane"] == "shm" and entry["parts"]["transport"] == {"us": 20.0, "percent": 50.0}
    assert entry["in_process"]["method"] == "layout" and entry["error"] is None


def test_breakdown_rows_per_plane() -> None:
    p50 = {"fastenv-shm": 40.0, "fastenv-shm-py": 80.0, "fastenv-tcp": 100.0, "zmq-pickle": 90.0}
    rows = breakdown.breakdown_rows(p50, {"shm": _costs(), "tcp": OSError("no socket")})
    assert [r.transport for r in rows] == ["fastenv-shm", "fastenv-shm-py", "fastenv-tcp"]
    assert rows[1].costs is rows[0].costs and rows[1].transport_us == 60.0  # one measurement for both shm rows
    assert rows[2].costs is None and rows[2].error == "OSError: no socket"
    assert breakdown.breakdown_rows(p50, {}) == []
    assert breakdown.planes_of(["zmq-pickle", "fastenv-tcp", "fastenv-shm", "fastenv-shm-py"]) == ["tcp", "shm"]


def test_median_costs_and_methods() -> None:
    merged = breakdown.median_costs([_costs(env=10.0), _costs(env=30.0), _costs(env=20.0, general=2)])
    assert merged.env_us == 20.0 and merged.samples == 300 and merged.repeats == 3
    assert merged.general_messages == 2 and merged.method == "layout+codec"
    assert _costs().method == "layout" and _costs("tcp").method == "layout"  # both planes use layouts
    assert _costs(samples=1, general=2).method == "codec"  # every timed message went through the codec
    with pytest.raises(ValueError):
        breakdown.median_costs([])
    with pytest.raises(ValueError, match="one payload and plane"):
        breakdown.median_costs([_costs("shm"), _costs("tcp")])


@pytest.mark.parametrize("payload", ["small", "camera-8x8"])
@pytest.mark.parametrize("plane", ["shm", "tcp"])
def test_measure_costs_in_process(plane: str, payload: str) -> None:
    costs = breakdown.measure_costs(payload, plane, samples=20, warmup=2)
    assert (costs.payload, costs.plane, costs.samples, costs.repeats) == (payload, plane, 20, 1)
    assert costs.method == "layout" and costs.general_messages == 0
    assert costs.env_us > 0 and costs.encode_us > 0 and costs.decode_us > 0 and costs.clock_overhead_ns >= 0
    assert costs.request_encode_us > 0 and costs.reply_decode_us > 0


@pytest.mark.parametrize("plane", ["shm", "tcp"])
def test_measure_costs_first_messages_announce_layouts(plane: str) -> None:
    costs = breakdown.measure_costs("small", plane, samples=5, warmup=0)
    assert costs.general_messages == 2 and costs.method == "layout+codec"  # the first request and reply


def test_measure_costs_checks_the_decoded_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(breakdown_paths.TcpPath, "decode_reply", lambda self, seq: (np.zeros(4, np.float32),))
    with pytest.raises(breakdown.BreakdownFailed, match="differs"):
        breakdown.measure_costs("small", "tcp", samples=3, warmup=1)


def test_measure_costs_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        breakdown.measure_costs("small", "shm", samples=0)
    with pytest.raises(KeyError):
        breakdown.measure_costs("small", "udp", samples=1)
    with pytest.raises(KeyError):
        breakdown.measure_costs("huge", "tcp", samples=1)


def test_measure_costs_max_seconds_truncates() -> None:
    ticks = iter(range(0, 10**15, 10**9))  # a fake clock: one second per reading
    costs = breakdown.measure_costs("small", "tcp", samples=100, warmup=0, max_seconds=5,
                                    clock=lambda: next(ticks))  # fmt: skip
    assert 1 <= costs.samples < 100


def test_breakdown_table_formats() -> None:
    rows = [breakdown.BreakdownRow("fastenv-shm", 40.0, _costs()),
            breakdown.BreakdownRow("fastenv-tcp", 100.0, error="OSError: a | b")]  # fmt: skip
    table = tables.breakdown_table(rows)
    headers = [c.header for c in table.columns]
    assert headers == ["row", "p50 µs", "encode µs", "encode %", "transport µs", "transport %", "env step µs",
                       "env step %", "decode µs", "decode %"]  # fmt: skip
    assert table.rows[0] == ["fastenv-shm", "40.0", "4.0", "10%", "20.0", "50%", "10.0", "25%", "6.0", "15%"]
    plain = render.render(table, "plain")
    assert plain.startswith("round-trip breakdown (p50)\n") and "fastenv-tcp  unavailable: OSError: a | b" in plain
    assert "measured in this process on the same request and reply values" in plain and "n = 100" in plain
    assert "fastenv-shm: compiled layout (fastenv.layout) in a shared-memory arena" in plain
    markdown = render.render(table, "markdown").splitlines()
    assert markdown[2].startswith("| row | p50 µs | encode µs | encode % | transport µs |")
    assert markdown[4] == "| fastenv-shm | 40.0 | 4.0 | 10% | 20.0 | 50% | 10.0 | 25% | 6.0 | 15% |"
    rich = render.render(table, "rich")
    assert "│ fastenv-shm" in rich and "fastenv-tcp: unavailable: OSError: a | b" in rich
    fallback = tables.breakdown_table([breakdown.BreakdownRow("fastenv-shm", 40.0, _costs(general=3))])
    assert "layout+codec: timed messages without a fixed layout" in render.render(fallback, "plain")


def test_main_breakdown_json_and_opt_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "run_transport", _fake_run_transport(p50_us=100.0))
    path = tmp_path / "out.json"
    assert cli.main(["--transports", "fastenv-shm,fastenv-tcp,zmq-pickle", "--steps", "5", "--warmup", "1",
                     "--format", "plain", "--no-progress", "--json", str(path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert re.search(r"^fastenv-shm +100\.0 ", out, re.MULTILINE) and "round-trip breakdown (p50)" in out
    report = json.loads(path.read_text())
    assert report["config"]["breakdown"] is True
    entries = report["breakdown"]
    assert [(e["transport"], e["plane"]) for e in entries] == [("fastenv-shm", "shm"), ("fastenv-tcp", "tcp")]
    for entry in entries:
        parts = entry["parts"]
        assert list(parts) == ["encode", "transport", "env", "decode"] and entry["rtt_p50_us"] == 100.0
        measured = sum(parts[p]["us"] for p in ("encode", "env", "decode"))
        assert parts["transport"]["us"] == pytest.approx(max(0.0, 100.0 - measured))
        assert parts["env"]["percent"] == pytest.approx(parts["env"]["us"])  # % of a 100 µs p50
        assert entry["in_process"]["samples"] == 5
    assert cli.main(["--transports", "fastenv-shm", "--steps", "5", "--no-breakdown", "--no-progress",
                     "--json", str(path)]) == 0  # fmt: skip
    assert "breakdown" not in capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["breakdown"] is None and report["config"]["breakdown"] is False


def test_main_breakdown_when_no_fastenv_row_ran(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unavailable(name: str, *args: Any, **kwargs: Any) -> RunResult:
        raise TransportUnavailable("no core")

    monkeypatch.setattr(cli, "run_transport", unavailable)
    assert cli.main(["--transports", "fastenv-shm", "--steps", "5", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["breakdown"] == [] and "breakdown shm small: skipped" in err


# ---------------------------------------------------------------- plots


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_comparison_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    latencies = {"small": {"fastenv-shm": rng.lognormal(3, 0.3, 500), "zmq-pickle": rng.lognormal(5, 0.5, 500),
                           "seed-pickle": np.zeros(0)}}  # fmt: skip
    path = tmp_path / "one.png"
    plot.plot_comparison(latencies, path, nbytes={"small": 16})
    assert path.stat().st_size > 1000 and _png_size(path) == (640, 420)
    latencies["camera"] = {"fastenv-shm": rng.lognormal(6, 0.3, 200)}
    throughput = {"fastenv-shm": {"small": 0.2, "camera": 2000.0}, "zmq-pickle": {"small": 0.05}}
    plot.plot_comparison(latencies, path, nbytes={"small": 16, "camera": 1_843_280}, throughput=throughput,
                         title="sweep")  # fmt: skip
    assert _png_size(path) == (1280, 840)  # two latency panels and the throughput panel, 2 columns
    with pytest.raises(ValueError, match="nothing|no latency"):
        plot.plot_comparison({"small": {}}, path)


def test_plot_scaling_png(tmp_path: Path) -> None:
    path = tmp_path / "scaling.png"
    plot.plot_scaling({"fastenv-shm": {1: 1000.0, 2: 1800.0, 4: 2500.0}, "fastenv-tcp": {1: 400.0, 2: math.nan}},
                      path)  # fmt: skip
    assert path.stat().st_size > 1000 and _png_size(path) == (640, 420)
    with pytest.raises(ValueError):
        plot.plot_scaling({"fastenv-shm": {}}, path)


def _hide_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``import matplotlib...`` fail, as if it were not installed."""
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hide_matplotlib(monkeypatch)
    with pytest.raises(MissingDependency, match=r'pip install "fastenv\[plot\]"') as info:
        plot.require_matplotlib()
    assert isinstance(info.value, ImportError)
    with pytest.raises(MissingDependency):
        plot.plot_scaling({"fastenv-shm": {1: 1.0}}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_main_plot_without_matplotlib_fails_before_measuring(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> RunResult:
        raise AssertionError("measured although the plot cannot be drawn")

    monkeypatch.setattr(cli, "run_transport", must_not_run)
    _hide_matplotlib(monkeypatch)
    assert cli.main(["--transports", "zmq-pickle", "--plot", str(tmp_path / "x.png")]) == 2
    assert 'fastenv[plot]' in capsys.readouterr().err


def test_main_plot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "run_transport", _fake_run_transport())
    path = tmp_path / "bench.png"
    assert cli.main(["--transports", "fastenv-tcp,zmq-pickle", "--steps", "5", "--plot", str(path)]) == 0
    assert _png_size(path) == (640, 420)
    assert f"plot written to {path}" in capsys.readouterr().err


# ---------------------------------------------------------------- scaling


def test_parse_args_scaling() -> None:
    args = cli.parse_args(["--scaling", "clients"])
    assert args.transports == ["fastenv-shm", "fastenv-tcp"] and args.counts == [1, 2, 4]
    args = cli.parse_args(["--scaling", "clients", "--counts", "4,1,2,2", "--transports", "fastenv-shm-py"])
    assert args.counts == [1, 2, 4] and args.transports == ["fastenv-shm-py"]
    args = cli.parse_args(["--scaling", "envs"])
    assert args.transports == ["fastenv-shm", "fastenv-tcp", "fastenv-workers", "fastenv-pool", "gym-async",
                               "gym-sync", "sb3-subproc", "puffer-mp"]  # fmt: skip
    assert args.counts == [1, 2, 4, 8, 16] and args.sweep is None and args.payload == "small"
    args = cli.parse_args(["--scaling", "envs", "--transports", "gym-sync,fastenv-shm-py", "--counts", "3"])
    assert args.transports == ["gym-sync", "fastenv-shm-py"] and args.counts == [3]


@pytest.mark.parametrize(
    "argv",
    [["--scaling", "clients", "--transports", "zmq-pickle"], ["--scaling", "clients", "--sweep", "--plot", "x.png"],
     ["--scaling", "threads"], ["--counts", "0"], ["--counts", "a,b"], ["--sweep", "huge"],
     ["--payload", "camera-0x1"], ["--format", "html"], ["--scaling", "clients", "--transports", "gym-sync"],
     ["--scaling", "envs", "--transports", "zmq-pickle"], ["--transports", "gym-sync"], ["--counts", "1,2"]],
)  # fmt: skip
def test_parse_args_rejects_new_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(argv)
    assert info.value.code == 2
    capsys.readouterr()


def test_scaling_axes() -> None:
    axis = scaling.AXES["clients"]
    assert (axis.name, axis.label) == ("clients", "clients")
    assert axis.server_args(3) == ["--mode", "per-client"]
    assert axis.client_processes(3) == 3 and axis.client_args(3) == [] and axis.env_steps_per_call(3) == 1
    assert axis.transports == runner.FASTENV_TRANSPORTS and axis.per_client and axis.reference is None
    envs = scaling.AXES["envs"]
    assert (envs.name, envs.label, envs.reference) == ("envs", "envs", "gym-sync")
    assert envs.server_args(8) == ["--num-envs", "8", "--mode", "per-client"]
    assert envs.server_args(8, "fastenv-pool") == ["--num-envs", "8", "--mode", "per-client", "--workers", "auto"]
    assert envs.server_transport("fastenv-workers") == "fastenv-shm" and envs.server_transport("sb3-subproc") is None
    assert envs.client_processes(8) == 1 and envs.client_args(8) == ["--num-envs", "8"]
    assert envs.env_steps_per_call(8) == 8 and not envs.per_client
    assert envs.env_steps_per_call(8, "fastenv-pool") == 4 and envs.env_steps_per_call(1, "fastenv-pool") == 1
    assert set(envs.transports) == {*runner.FASTENV_TRANSPORTS, "fastenv-workers", "fastenv-pool", "gym-async",
                                    "gym-sync", "sb3-subproc", "puffer-mp"}  # fmt: skip
    reason = envs.unavailable("sb3-subproc", "small")  # fastenv.examples:VectorEnv is no gymnasium.Env
    assert reason is not None and reason.startswith("sb3-subproc ") and envs.unavailable("gym-sync", "small") is None
    assert scaling.SCALING_TRANSPORTS == envs.transports


def _point(count: int, rate_per_client: float, *, stagger_s: float = 0.0) -> scaling.ScalingPoint:
    point = scaling.ScalingPoint("clients", count, "fastenv-shm", "small", 1)
    for i in range(count):
        rtt = np.full(1000, int(1e9 / rate_per_client), dtype=np.int64)
        point.clients.append(scaling.ClientRun(int(i * stagger_s * 1e9), 1000 / rate_per_client, summarize(rtt)))
    return point


def test_scaling_point_aggregates() -> None:
    point = _point(2, 1000.0)
    assert point.steps == 2000 and point.span_s == pytest.approx(1.0)
    assert point.steps_per_s == pytest.approx(2000.0) and point.per_client_steps_per_s == pytest.approx(1000.0)
    assert point.p50_us == pytest.approx(1000.0)
    staggered = _point(2, 1000.0, stagger_s=1.0)  # one after the other: no parallelism at all
    assert staggered.span_s == pytest.approx(2.0) and staggered.steps_per_s == pytest.approx(1000.0)
    assert set(point.as_dict()) >= {"count", "transport", "steps_per_s", "clients"}


def test_scaling_table_speedup_and_efficiency() -> None:
    rows = [ScalingRow("fastenv-shm", 1, [_point(1, 1000.0)]), ScalingRow("fastenv-shm", 2, [_point(2, 1000.0)]),
            ScalingRow("fastenv-shm", 4, [_point(4, 250.0)]),
            ScalingRow("fastenv-tcp", 1, status="unavailable", error="boom")]  # fmt: skip
    table = tables.scaling_table(rows, axis="clients", cpu_count=2)
    assert [c.header for c in table.columns][:4] == ["transport", "clients", "steps", "steps/s"]
    assert table.rows[0][1:4] == ["1", "1,000", "1,000"] and table.rows[0][-2:] == ["1.00x", "100%"]
    assert table.rows[1][3] == "2,000" and table.rows[1][-2:] == ["2.00x", "100%"]
    assert table.rows[2][3] == "1,000" and table.rows[2][-2:] == ["1.00x", "25%"]
    assert isinstance(table.rows[3], render.Note) and "clients=1 unavailable: boom" in table.rows[3].text
    assert "cpus = 2" in render.render(table, "plain")


def test_run_point_clients_end_to_end() -> None:
    point = scaling.run_point("clients", 2, "fastenv-tcp", "small", steps=20, warmup=2, timeout=TIMEOUT,
                              max_seconds=10.0)  # fmt: skip
    assert len(point.clients) == 2 and point.steps == 40
    assert point.span_s > 0 and point.steps_per_s > 0 and point.p50_us > 0
    starts = [c.start_ns for c in point.clients]
    assert max(starts) - min(starts) < point.span_s * 1e9  # both ran in one window


def test_run_point_rejects_other_transports() -> None:
    with pytest.raises(KeyError, match="runs fastenv-shm, fastenv-shm-py, fastenv-tcp only"):
        scaling.run_point("clients", 1, "zmq-pickle", "small", steps=1, warmup=0)
    with pytest.raises(KeyError, match="not 'gym-sync'"):
        scaling.run_point("clients", 1, "gym-sync", "small", steps=1, warmup=0)
    with pytest.raises(ValueError):
        scaling.run_point("clients", 0, "fastenv-tcp", "small", steps=1, warmup=0)


def test_scaling_client_reports_unavailable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastenv.bench.scaling", "--connect", "tcp://127.0.0.1:1", "--transport",
         "fastenv-tcp", "--payload", "small", "--steps", "2", "--timeout", "1"],
        check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["error"] == "unavailable"


def test_main_scaling_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    code = cli.main(["--scaling", "clients", "--counts", "1,2", "--transports", "fastenv-shm", "--steps", "10",
                     "--warmup", "1", "--timeout", str(TIMEOUT), "--format", "markdown", "--json", str(path),
                     "--plot", str(png)])  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    assert "| transport | clients | steps | steps/s |" in out
    assert "| fastenv-shm | 1 | 10 |" in out and "| fastenv-shm | 2 | 20 |" in out
    assert "[2/2] fastenv-shm clients=2: ok" in err
    report = json.loads(path.read_text())
    assert report["schema"] == "fastenv-bench-scaling/1"
    assert report["config"]["axis"] == "clients" and report["config"]["counts"] == [1, 2]
    assert [(r["transport"], r["count"], r["status"]) for r in report["results"]] == [
        ("fastenv-shm", 1, "ok"), ("fastenv-shm", 2, "ok")]
    assert report["results"][0]["speedup"] == pytest.approx(1.0)
    assert len(report["results"][1]["runs"][0]["clients"]) == 2
    assert _png_size(png) == (640, 420)


def test_main_scaling_reports_unavailable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unavailable(*args: Any, **kwargs: Any) -> scaling.ScalingPoint:
        raise scaling.ScalingFailed("client died\nlast words")

    monkeypatch.setattr(cli, "run_point", unavailable)
    assert cli.main(["--scaling", "clients", "--counts", "1,2", "--transports", "fastenv-tcp"]) == 0
    out = capsys.readouterr().out
    assert "fastenv-tcp  clients=1 unavailable: ScalingFailed: client died ... last words" in out
    assert "fastenv-tcp  clients=2 unavailable:" in out  # each count is tried on its own


# ---------------------------------------------------------------- scaling: envs per server


def test_batch_action_and_reference_env() -> None:
    actions = vectors.batch_action("small", 3)
    assert actions.shape == (3, 4) and actions.dtype == np.float32
    assert np.array_equal(actions[0], get_workload("small").make_action())
    reference = vectors.reference_env("camera-8x8", 2)
    try:
        obs, _ = reference.reset(seed=0)
        env, _ = build("camera-8x8")
        assert np.array_equal(obs["left"][1], env.reset(seed=1)[0]["left"])  # env i is seeded with seed + i
    finally:
        reference.close()


def test_open_vector_client_rejects() -> None:
    with pytest.raises(KeyError, match="gym-sync"), vectors.open_vector_client("zmq-pickle", "small", 2):
        pass
    with pytest.raises(ValueError, match="--num-envs 2"), vectors.open_vector_client("fastenv-tcp", "small", 2):
        pass
    with pytest.raises(ValueError), vectors.open_vector_client("gym-sync", "small", 0):
        pass


class _Corrupting:
    """A vector client that drops env 1's action from call ``corrupt_at`` on."""

    def __init__(self, inner: Any, corrupt_at: int) -> None:
        self.inner, self.corrupt_at, self.calls = inner, corrupt_at, 0

    def reset(self, seed: int | None = None) -> Any:
        return self.inner.reset(seed=seed)

    def step(self, actions: Any) -> Any:
        self.calls += 1
        if self.calls >= self.corrupt_at:
            actions = actions.copy()
            actions[1] = 0.0
        return self.inner.step(actions)

    def comparable(self, got: Any, expected: Any) -> Any:
        return self.inner.comparable(got, expected)


@pytest.mark.parametrize("corrupt_at", [2, 12])  # in the warmup, then in the timed loop
def test_measure_vector_detects_corruption(corrupt_at: int) -> None:
    reference = vectors.reference_env("small", 3)
    try:
        with vectors.open_vector_client("gym-sync", "small", 3) as client:
            assert measure(client, "gym-sync", "small", steps=5, warmup=2, local=reference,
                           action=vectors.batch_action("small", 3)).summary.count == 5  # fmt: skip
            with pytest.raises(TransportMismatch):
                measure(_Corrupting(client, corrupt_at), "gym-sync", "small", steps=10, warmup=3, local=reference,
                        action=vectors.batch_action("small", 3))  # fmt: skip
    finally:
        reference.close()


@pytest.mark.parametrize("transport", ["fastenv-shm", "gym-sync"])
def test_run_point_envs_end_to_end(transport: str) -> None:
    point = scaling.run_point("envs", 3, transport, "camera-8x8", steps=10, warmup=2, timeout=TIMEOUT,
                              max_seconds=10.0)  # fmt: skip
    assert len(point.clients) == 1 and point.steps == 10 and point.env_steps_per_call == 3
    assert point.steps_per_s == pytest.approx(30 / point.span_s) and point.p50_us > 0
    assert point.as_dict()["env_steps"] == 30


def test_scaling_client_vector_reports_unavailable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastenv.bench.scaling", "--connect", "tcp://127.0.0.1:1", "--transport",
         "fastenv-tcp", "--payload", "small", "--num-envs", "2", "--steps", "2", "--timeout", "1"],
        check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["error"] == "unavailable"


def _vector_point(transport: str, count: int, rate: float) -> scaling.ScalingPoint:
    point = scaling.ScalingPoint("envs", count, transport, "small", count)
    calls = 100
    rtt = np.full(calls, int(1e9 * count / rate), dtype=np.int64)  # env steps/s = rate
    point.clients.append(scaling.ClientRun(0, calls * count / rate, summarize(rtt)))
    return point


def test_scaling_table_envs_against_gym_sync() -> None:
    rows = [ScalingRow("fastenv-shm", 1, [_vector_point("fastenv-shm", 1, 1000.0)]),
            ScalingRow("fastenv-shm", 4, [_vector_point("fastenv-shm", 4, 3000.0)]),
            ScalingRow("gym-sync", 1, [_vector_point("gym-sync", 1, 500.0)]),
            ScalingRow("gym-sync", 4, [_vector_point("gym-sync", 4, 1000.0)]),
            ScalingRow("gym-async", 4, status="unavailable", error="no gymnasium")]  # fmt: skip
    table = tables.scaling_table(rows, axis="envs", cpu_count=2)
    assert [c.header for c in table.columns] == ["transport", "envs", "batch steps", "steps/s", "±%",
                                                 "batch step p50 µs", "batch step p99 µs", "speedup", "efficiency",
                                                 "vs gym-sync"]  # fmt: skip
    assert table.rows[1] == ["fastenv-shm", "4", "100", "3,000", "0", "1,333.3", "1,333.3", "3.00x", "75%", "3.00x"]
    assert table.rows[2][-1] == "1.00x" and table.rows[0][-1] == "2.00x"
    assert isinstance(table.rows[4], render.Note) and "envs=4 unavailable: no gymnasium" in table.rows[4].text
    text = render.render(table, "markdown")
    assert "env steps per second" in text and "AsyncVectorEnv(N envs, shared_memory=True)" in text
    without = tables.scaling_table(rows[:2], axis="envs")
    assert "vs gym-sync" not in [c.header for c in without.columns]  # the reference did not run
    report = cli.scaling_report({}, rows, reference="gym-sync")
    ratios = [r["ratio_to_reference"] for r in report["results"]]
    assert ratios[:4] == pytest.approx([2.0, 3.0, 1.0, 1.0]) and ratios[4] is None
    assert report["results"][1]["runs"][0]["env_steps"] == 400


def test_main_scaling_envs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, png = tmp_path / "envs.json", tmp_path / "envs.png"
    code = cli.main(["--scaling", "envs", "--counts", "1,2", "--transports", "fastenv-tcp,gym-sync", "--steps",
                     "5", "--warmup", "1", "--timeout", str(TIMEOUT), "--format", "markdown", "--json", str(path),
                     "--plot", str(png)])  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    assert "| transport | envs | batch steps | steps/s |" in out and "| vs gym-sync |" in out
    assert "| fastenv-tcp | 2 | 5 |" in out and "| gym-sync | 2 | 5 |" in out
    assert "[4/4] gym-sync envs=2: ok" in err
    report = json.loads(path.read_text())
    assert report["config"]["axis"] == "envs" and report["config"]["counts"] == [1, 2]
    assert [(r["transport"], r["count"], r["status"]) for r in report["results"]] == [
        ("fastenv-tcp", 1, "ok"), ("fastenv-tcp", 2, "ok"), ("gym-sync", 1, "ok"), ("gym-sync", 2, "ok")]
    entry = report["results"][1]
    assert entry["runs"][0]["env_steps_per_call"] == 2 and entry["runs"][0]["env_steps"] == 10
    assert entry["reference"] == "gym-sync" and entry["ratio_to_reference"] > 0
    assert report["results"][3]["ratio_to_reference"] == pytest.approx(1.0)
    assert _png_size(png) == (640, 420)


# ---------------------------------------------------------------- fastenv bench


def test_fastenv_bench_alias(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "run_transport", _fake_run_transport())
    assert fastenv.cli.main(["bench", "--transports", "zmq-pickle", "--steps", "5", "--format", "markdown"]) == 0
    assert "| zmq-pickle | 10 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        fastenv.cli.main(["bench", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: fastenv bench")
    fastenv.cli.build_parser().parse_args(["bench"])  # listed among the commands


def test_rich_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # `import rich` now raises ImportError, as when not installed
    assert not render.rich_available()
    assert render.default_format(_Terminal()) == "plain"
    assert progress.choose_mode(_Terminal()) == "lines"
    table = render.Table([render.Column("transport", "left"), render.Column("p50 µs")], [["fastenv-shm", "12.0"]])
    assert "fastenv-shm" in render.render(table, "plain")
    with pytest.raises(MissingDependency, match=r"fastenv\[bench\]"):
        render.render(table, "rich")
