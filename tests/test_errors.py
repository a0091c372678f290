"""Typed errors, and a server that keeps serving through them."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fastenv
from fastenv import protocol
from fastenv.errors import (
    ConnectionLost,
    FastEnvError,
    FastEnvTimeout,
    ProtocolVersionError,
    RemoteEnvError,
    UnknownMethodError,
)


@pytest.fixture
def faulty(serve, test_env_target, tmp_path):
    return serve(test_env_target("Faulty"), env_kwargs={"marker_dir": str(tmp_path)})


def test_env_exception_reaches_client_with_traceback_and_session_survives(faulty) -> None:
    with fastenv.FastRemoteEnv(faulty.address, timeout=10) as env:
        env.reset()
        with pytest.raises(RemoteEnvError) as caught:
            env.step("boom")
        error = caught.value
        assert isinstance(error, ValueError)  # builtin types are mirrored
        assert error.remote_type == "ValueError"
        assert "exploded on purpose" in error.remote_message
        assert "test_envs.py" in error.remote_traceback and "raise ValueError" in error.remote_traceback
        assert "Remote traceback" in str(error)
        # the same session keeps working
        obs, *_ = env.step(1)
        assert obs[0] == 1.0


def test_non_builtin_remote_exception_keeps_its_name(faulty) -> None:
    with fastenv.FastRemoteEnv(faulty.address, timeout=10) as env:
        with pytest.raises(RemoteEnvError) as caught:
            env.step("custom")
        assert caught.value.remote_type.endswith("_CustomEnvFailure")
        assert type(caught.value) is RemoteEnvError


def test_unsendable_result_is_a_typed_error(faulty) -> None:
    with fastenv.FastRemoteEnv(faulty.address, timeout=10) as env:
        with pytest.raises(fastenv.EncodeError, match="could not send"):
            env.step("unsendable")
        assert env.get_state() == {"steps": 0}


def test_unknown_and_private_methods(faulty) -> None:
    with fastenv.FastRemoteEnv(faulty.address, timeout=10) as env:
        with pytest.raises(UnknownMethodError):
            env.call("no_such_method")
        with pytest.raises(UnknownMethodError):
            env.call("__class__")
        with pytest.raises(UnknownMethodError):
            env.call("_private")
        with pytest.raises(UnknownMethodError, match="not a method"):
            env.call("label")
        with pytest.raises(UnknownMethodError, match="close the client"):
            env.call("close")
        with pytest.raises(AttributeError):
            _ = env.no_such_attribute
        assert env.label == "faulty"
        assert env.slow(0) == "done"  # public methods are callable as attributes


def test_wrong_protocol_version_names_both_versions(faulty, monkeypatch) -> None:
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 99)
    with pytest.raises(ProtocolVersionError) as caught:
        fastenv.FastRemoteEnv(faulty.address, timeout=10)
    assert caught.value.client_version == 99 and caught.value.server_version == 1
    assert "v99" in str(caught.value) and "v1" in str(caught.value)
    monkeypatch.undo()
    with fastenv.FastRemoteEnv(faulty.address, timeout=10) as env:  # server unaffected
        env.reset()


def test_timeout_is_typed_and_late_reply_is_dropped(faulty) -> None:
    with fastenv.FastRemoteEnv(faulty.address, timeout=10) as env:
        with pytest.raises(FastEnvTimeout):
            env.invoke("slow", (1.0,), timeout=0.2)
        # the late reply to the timed-out call must not be taken for this one's
        assert env.get_state() == {"steps": 0}


def test_no_server_gives_timeout_not_hang() -> None:
    started = time.monotonic()
    with pytest.raises(FastEnvTimeout, match="refused|no reply"):
        fastenv.FastRemoteEnv("127.0.0.1:9", connect_timeout=1.0)
    assert time.monotonic() - started < 10


def test_server_killed_mid_call_raises_promptly(faulty, tmp_path: Path) -> None:
    env = fastenv.FastRemoteEnv(faulty.address, timeout=30)
    env.reset()
    marker = tmp_path / "slow-started"

    def kill_when_call_is_running() -> None:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        faulty.kill()

    killer = threading.Thread(target=kill_when_call_is_running)
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises((ConnectionLost, FastEnvTimeout)) as caught:
            env.call("slow", 20)
    finally:
        killer.join(30)
        env.close()
    assert isinstance(caught.value, ConnectionLost), caught.value  # detected, not timed out
    assert time.monotonic() - started < 15


def test_server_killed_between_calls(faulty) -> None:
    env = fastenv.FastRemoteEnv(faulty.address, timeout=3)
    env.reset()
    faulty.kill()
    with pytest.raises(FastEnvError):
        env.step(1)
    env.close()  # closing after the server vanished never raises
    with pytest.raises(fastenv.ClientClosedError):
        env.step(1)


def test_port_in_use_is_a_clear_error(serve) -> None:
    first = serve("fastenv.examples:VectorEnv")
    port = first.address.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "fastenv", "serve", "fastenv.examples:VectorEnv", "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "fastenv: ready" not in result.stdout
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert "held by pid" in result.stderr or "ss -ltnp" in result.stderr


def test_per_client_mode_gives_each_client_its_own_env(serve, test_env_target, tmp_path: Path) -> None:
    server = serve(test_env_target("make_faulty"), "--mode", "per-client", env_kwargs={"marker_dir": str(tmp_path)})
    with fastenv.connect(server.address) as a, fastenv.connect(server.address) as b:
        a.reset()
        b.reset()
        a.step(1)
        a.step(1)
        b.step(1)
        assert a.get_state() == {"steps": 2} and b.get_state() == {"steps": 1}
    # closing a client closes its env on the server
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("closed-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(list(tmp_path.glob("closed-*"))) == 2


def test_shared_mode_drives_one_env(faulty) -> None:
    with fastenv.connect(faulty.address) as a, fastenv.connect(faulty.address) as b:
        a.reset()
        a.step(1)
        b.step(1)
        assert a.get_state() == b.get_state() == {"steps": 2}


def test_env_that_fails_to_build_reports_at_connect(serve, test_env_target) -> None:
    server = serve(test_env_target("BrokenAtInit"), "--mode", "per-client")
    with pytest.raises(RemoteEnvError, match="cannot build this env"):
        fastenv.FastRemoteEnv(server.address, timeout=10)
    with pytest.raises(RemoteEnvError):  # and the server is still there to say so again
        fastenv.FastRemoteEnv(server.address, timeout=10)


def test_unclosed_client_warns() -> None:
    from fastenv.server import EnvServer
    from fastenv.examples import VectorEnv

    with EnvServer(VectorEnv()) as server:
        server.start()
        env = fastenv.FastRemoteEnv(server.address, timeout=10)
        with pytest.warns(ResourceWarning, match="not closed"):
            env.__del__()
