"""``fastenv serve --metrics-port``: Prometheus metrics scraped over HTTP match what the clients did."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastenv
from fastenv.errors import RemoteEnvError
from fastenv.metrics import SAMPLE_EVERY
from fastenv.top import scrape
from tests.proxy import free_port

pytest.importorskip("prometheus_client")

COUNTER = f"{Path(__file__).resolve().parent / 'envs' / 'session_envs.py'}:Counter"
T = 20.0


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == want for k, want in labels.items()))


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_metrics_count_sessions_calls_errors_and_time(serve, transport: str) -> None:
    metrics_port = free_port()
    server = serve(COUNTER, "--metrics-port", str(metrics_port), "--log-level", "INFO")
    address = f"127.0.0.1:{metrics_port}"
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as env:
        for _ in range(3):
            env.reset()
        steps = SAMPLE_EVERY + 4
        for _ in range(steps):
            env.step(0)
        with pytest.raises(RemoteEnvError):
            env.call("explode", "boom")
        samples = scrape(address)
        assert value(samples, "fastenv_sessions", transport=transport, role="shared") == 1
        assert value(samples, "fastenv_calls_total", method="step") == steps
        assert value(samples, "fastenv_calls_total", method="reset") == 3
        assert value(samples, "fastenv_errors_total", kind="remote") == 1
        # one call of a method in SAMPLE_EVERY is timed: the steps' SAMPLE_EVERY-th, and no reset yet
        assert value(samples, "fastenv_env_seconds_count", method="step") == steps // SAMPLE_EVERY == 1
        assert value(samples, "fastenv_env_seconds_count", method="reset") == 0
        assert value(samples, "fastenv_overhead_seconds_count", method="step", transport=transport) == 1
        assert value(samples, "fastenv_env_seconds_sum", method="step") > 0
        top = subprocess.run(
            [sys.executable, "-m", "fastenv", "top", address, "--once"], capture_output=True, text=True, timeout=T
        )
        assert top.returncode == 0, top.stderr
        assert "step" in top.stdout and f"1 {transport}/shared" in top.stdout, top.stdout
    assert value(scrape(address), "fastenv_sessions") == 0


def test_metrics_count_deadline_misses(serve) -> None:
    metrics_port = free_port()
    server = serve(COUNTER, "--metrics-port", str(metrics_port))
    with fastenv.FastRemoteEnv(server.address, role="controller", timeout=T) as env:
        env.set_deadline(0.02, fastenv.Fallback.method("safe_stop"))
        env.step(0)
        give_up = time.monotonic() + T
        while env.deadline_report.missed < 2 and time.monotonic() < give_up:
            time.sleep(0.01)
        missed = env.deadline_report.missed
        env.clear_deadline()
    assert missed >= 2
    assert value(scrape(f"127.0.0.1:{metrics_port}"), "fastenv_deadline_misses_total") >= missed
