"""``--env-thread``: a simulator bound to one thread is built and called on it, whoever calls."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from polling import wait_until

import fastenv

TARGET = str(Path(__file__).parent / "envs" / "thread_envs.py") + ":ThreadBound"
COUNTER = str(Path(__file__).parent / "envs" / "session_envs.py") + ":Counter"
T = 20.0


def _drive(address: str, transport: str, errors: list[BaseException]) -> None:
    try:
        with fastenv.FastRemoteEnv(address, transport=transport, timeout=T) as env:
            env.reset(seed=0)
            for _ in range(30):
                env.step(np.zeros(1))
                env.get_state()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
@pytest.mark.parametrize("mode", ["shared", "per-client"])
@pytest.mark.parametrize("env_thread", ["main", "dedicated"])
def test_every_call_runs_on_the_env_thread_with_several_clients(
    serve, tmp_path: Path, env_thread: str, mode: str, transport: str
) -> None:
    kwargs = {"main": env_thread == "main", "marker_dir": str(tmp_path)}
    server = serve(TARGET, "--env-thread", env_thread, "--mode", mode, env_kwargs=kwargs)
    errors: list[BaseException] = []
    clients = [threading.Thread(target=_drive, args=(server.address, transport, errors)) for _ in range(3)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(60)
    assert not errors, errors
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as env:
        assert env.reset()[1]["thread"] == ("MainThread" if env_thread == "main" else "fastenv-env")
    if mode == "per-client":  # each client's env was closed on its own thread too
        assert wait_until(lambda: len(list(tmp_path.glob("closed-*"))) == 4, timeout=T)
        assert not list(tmp_path.glob("closed-foreign-*"))
    server.stop()
    if mode == "shared":
        assert [path.name.split("-")[1] for path in tmp_path.glob("closed-*")] == ["ok"]


@pytest.mark.parametrize("transport", ["shm", "tcp"])
@pytest.mark.parametrize("env_thread", ["main", "dedicated"])
def test_the_env_thread_serves_its_first_session_itself(serve, env_thread: str, transport: str) -> None:
    """No thread of its own for the first session on an env thread; a second session hops; a later first is hosted."""
    server = serve(COUNTER, "--env-thread", env_thread, "--mode", "shared")
    worker = f"fastenv-{transport}-worker"
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as first:
        first.reset()
        assert first.call("session_threads") == []
        with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as second:
            second.reset()
            for _ in range(20):  # interleaved: the second session's calls poke the hosted wait
                first.step(0)
                second.step(0)
            assert second.call("session_threads") == [worker]
            assert first.get_state()["total"] == 40  # one env, shared
        assert first.step(0)[0][0] == 41.0
    assert wait_until(lambda: _threads(server.address, transport) == [], timeout=T)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_a_server_stops_while_its_main_thread_hosts_a_session(serve, transport: str) -> None:
    """SIGTERM reaches a main thread that waits for a hosted session's requests: a clean exit, not a kill."""
    server = serve(COUNTER, "--env-thread", "main", "--mode", "shared")
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as env:
        env.reset()
        env.step(0)
        assert env.call("session_threads") == []  # hosted
        assert server.stop(timeout=T) == 0


def _threads(address: str, transport: str) -> list[str]:
    with fastenv.FastRemoteEnv(address, transport=transport, timeout=T) as env:
        return env.call("session_threads")


def test_without_an_env_thread_the_env_is_called_from_foreign_threads(serve, tmp_path: Path) -> None:
    server = serve(TARGET, "--mode", "shared", env_kwargs={"marker_dir": str(tmp_path)})
    with fastenv.FastRemoteEnv(server.address, timeout=T) as env:
        with pytest.raises(fastenv.RemoteEnvError, match="foreign thread"):
            env.reset()


def test_server_settings_are_checked() -> None:
    with pytest.raises(fastenv.ServerConfigError, match="env_thread"):
        fastenv.EnvServer(factory=dict, env_thread="gpu")
    with fastenv.EnvServer(factory=dict, env_thread="main") as server:
        with pytest.raises(fastenv.ServerConfigError, match="serve_forever"):
            server.start()  # the main thread serves the env: the loop cannot go to a thread of its own
        failed: list[BaseException] = []

        def serve_elsewhere() -> None:
            try:
                server.serve_forever()
            except fastenv.ServerConfigError as exc:
                failed.append(exc)

        thread = threading.Thread(target=serve_elsewhere)
        thread.start()
        thread.join(T)
        assert failed and "thread that made the EnvServer" in str(failed[0])


def test_the_hop_to_the_env_thread_returns_and_raises_what_the_call_did() -> None:
    from fastenv.session.envthread import EnvThread, EnvThreadStopped

    runner = EnvThread().start()
    try:
        assert runner.run(threading.current_thread) is not threading.current_thread()
        assert runner.run(lambda: runner.run(lambda: 7)) == 7  # a call from within a call runs at once
        with pytest.raises(KeyError, match="inside"):
            runner.run(lambda: {}["inside"])
    finally:
        runner.stop()
    with pytest.raises(EnvThreadStopped):
        runner.run(lambda: 1)


def test_native_ring_wait_rings_then_waits() -> None:
    import mmap

    from fastenv import native
    from fastenv.shm.doorbell import Doorbell

    compiled = native.BACKEND.native
    if compiled is None:
        pytest.skip("the native backend is not in use")
    page = mmap.mmap(-1, mmap.PAGESIZE)
    ring, answer = Doorbell(page, 0), Doorbell(page, 64)
    assert compiled.ring_wait(page, 0, 64, 0, 0.01) is False  # rang, then nobody answered in time
    assert ring.value() == 1
    answering = threading.Thread(target=lambda: (ring.wait(1, T), answer.ring()))
    answering.start()
    assert compiled.ring_wait(page, 0, 64, 0, T) is True  # the answer came while it waited
    answering.join(T)
    with pytest.raises(ValueError):
        compiled.ring_wait(page, 0, mmap.PAGESIZE - 4, 0, 0.01)
