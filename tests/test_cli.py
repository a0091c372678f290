"""The `fastenv` command as users run it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fastenv
from fastenv.server_process import ServerProcess, ServerStartError


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastenv", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "target, message",
    [
        ("no_such_module_xyz:Env", "cannot import"),
        ("fastenv.examples:NoSuchEnv", "has no attribute"),
        ("NoSuchGymEnv-v9", "registered Gymnasium id"),
        ("/nonexistent/file.py:make", "no such file"),
    ],
)
def test_bad_targets_fail_before_ready(target: str, message: str) -> None:
    result = run_cli("serve", target, "--port", "0")
    assert result.returncode == 2
    assert "fastenv: ready" not in result.stdout
    assert message in result.stderr


def test_bad_env_kwargs_json() -> None:
    result = run_cli("serve", "fastenv.examples:VectorEnv", "--env-kwargs", "{not json")
    assert result.returncode == 2 and "JSON" in result.stderr


def test_ready_line_is_exactly_one_stdout_line(serve) -> None:
    server = serve("fastenv.examples:VectorEnv")
    assert server.address.startswith("tcp://127.0.0.1:")
    server.stop()
    stdout_lines = [line for line in server.output().splitlines() if line.startswith("fastenv: ready")]
    assert stdout_lines == [f"fastenv: ready {server.address}"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly_and_close_the_env(test_env_target, tmp_path: Path, sig: int) -> None:
    server = ServerProcess(test_env_target("Faulty"), env_kwargs={"marker_dir": str(tmp_path)})
    server.start()
    try:
        with fastenv.connect(server.address) as env:
            env.reset()
        server.process.send_signal(sig)
        assert server.process.wait(timeout=20) == 0
    finally:
        server.stop()
    assert list(tmp_path.glob("closed-*")), server.output()
    assert "fastenv: stopped" in server.output()


def test_non_loopback_bind_needs_insecure() -> None:
    result = run_cli("serve", "fastenv.examples:VectorEnv", "--bind", "0.0.0.0")
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0" in result.stderr and "--insecure" in result.stderr


def test_insecure_bind_warns_and_serves(serve) -> None:
    server = serve("fastenv.examples:VectorEnv", "--bind", "0.0.0.0", "--insecure")
    assert server.wait_for_output("without authentication"), server.output()
    port = server.address.rsplit(":", 1)[1]
    with fastenv.connect(f"127.0.0.1:{port}") as env:
        env.reset(seed=0)


def test_server_process_reports_early_exit() -> None:
    with pytest.raises(ServerStartError, match="cannot import"):
        ServerProcess("no_such_module_xyz:Env").start()


def test_doctor_reports_versions_and_backend() -> None:
    result = run_cli("doctor")
    assert result.returncode == 0
    assert f"fastenv: {fastenv.__version__}" in result.stdout
    assert "futex doorbell:" in result.stdout and "pyzmq:" in result.stdout
    assert "layout packer:" in result.stdout and "tcp receive spin:" in result.stdout


def test_demo_runs_and_reports_speed() -> None:
    result = run_cli("demo", "--steps", "300")
    assert result.returncode == 0, result.stderr
    assert "steps/s" in result.stdout and "p50" in result.stdout


def test_data_port_can_be_pinned(serve) -> None:
    from tests.proxy import free_port

    port = free_port()  # below the ephemeral range: no outgoing connection takes it before the server does
    server = serve("fastenv.examples:VectorEnv", "--data-port", str(port))
    assert server.wait_for_output(f"data stream on port {port}"), server.output()
    with fastenv.FastRemoteEnv(server.address, transport="tcp") as env:
        assert f"port {port}" in env.transport_reason
        env.reset(seed=0)
