"""Seed users move over by changing an import."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fastenv.compat import CompatError, RemoteEnv, RemoteServer
from fastenv.errors import FastEnvError, ServerConfigError
from fastenv.examples import LegacyEnv
from fastenv.server_process import ServerProcess

SEED_SERVER = Path(__file__).parent / "envs" / "seed_style_server.py"


@pytest.fixture
def seed_server():
    server = ServerProcess("", command=[sys.executable, str(SEED_SERVER), "0"])
    server.start()
    yield server
    server.stop()


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def test_seed_client_loop_runs_unchanged(seed_server) -> None:
    assert "(loopback only)" in seed_server.output()
    local = LegacyEnv()
    local.seed(3)
    env = RemoteEnv(*_host_port(seed_server.address))
    assert env.connect() is True
    try:
        obs = env.reset()
        assert np.array_equal(obs, local.reset())
        for _ in range(5):
            action = [0.1, 0.1]
            obs, reward, done, info = env.step(action)
            expected = local.step(action)
            assert np.array_equal(obs, expected[0]) and reward == expected[1] and info == expected[3]
            if done:
                obs = env.reset()
        assert env.get_state() == local.get_state()
        results = env.batch_step([[0.2], [0.3], [-0.1]])
        assert [r[3]["steps"] for r in results] == [6, 7, 8]
    finally:
        env.close()
    env.close()  # idempotent


def test_connect_failure_returns_false(capsys) -> None:
    env = RemoteEnv("127.0.0.1", 9, connect_timeout=0.5)
    assert env.connect() is False
    assert "Failed to connect" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="Not connected"):
        env.step(0)


def test_errors_are_runtime_errors_like_the_seed(seed_server) -> None:
    env = RemoteEnv(*_host_port(seed_server.address))
    assert env.connect()
    try:
        with pytest.raises(RuntimeError, match="Step failed") as caught:
            env.step({"not": "a number"})
        assert isinstance(caught.value, FastEnvError) and isinstance(caught.value, CompatError)
        assert env.connected is False  # like the seed, a failure marks the client disconnected
    finally:
        env.close()


def test_remote_server_defaults_to_loopback_and_refuses_open_binds() -> None:
    assert RemoteServer().host == "127.0.0.1"
    server = RemoteServer(host="0.0.0.0", port=0)
    server.set_environment(LegacyEnv())
    with pytest.raises(ServerConfigError, match="SSH tunnel"):
        server.start(block=False)


def test_remote_server_in_process_background(capsys) -> None:
    server = RemoteServer(port=0)
    server.set_environment(LegacyEnv())
    server.start(block=False)
    try:
        env = RemoteEnv(*_host_port(server.address))
        assert env.connect()
        assert env.reset().shape == (2,)
        env.close()
    finally:
        server.stop()
    assert "fastenv: ready tcp://127.0.0.1:" in capsys.readouterr().out
