"""Sessions: leases and observers, batched and async calls, state cache, liveness, resume."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastenv
from fastenv.errors import (
    AlreadyPendingError,
    ClientClosedError,
    ConnectionLost,
    ControlDenied,
    FastEnvTimeout,
    LeaseHeld,
    NoPendingCallError,
    SessionLost,
)
from tests.polling import wait_until
from tests.proxy import TcpProxy, free_port

COUNTER = f"{Path(__file__).parent / 'envs' / 'session_envs.py'}:Counter"
T = 20.0  # bound on every blocking call




# ---------------------------------------------------------------- leases and observers


def test_lease_rules_and_observer_sees_every_transition_in_order(serve) -> None:
    server = serve(COUNTER)
    with (
        fastenv.FastRemoteEnv(server.address, role="observer", timeout=T) as observer,
        fastenv.FastRemoteEnv(server.address, role="controller", copy=True, timeout=T) as controller,
        fastenv.FastRemoteEnv(server.address, timeout=T) as bystander,
    ):
        # a second controller is refused at once, or after waiting for the lease
        with pytest.raises(LeaseHeld):
            fastenv.FastRemoteEnv(server.address, role="controller", timeout=T)
        with pytest.raises(LeaseHeld):
            fastenv.FastRemoteEnv(server.address, role="controller", lease_timeout=0.2, timeout=T)
        assert controller.lease_holder == controller.session_id
        # the observer reads each transition as it comes: one that falls behind skips by design
        results = [controller.reset(seed=3)]
        seen = [observer.next_transition(timeout=T)]
        for i in range(50):
            results.append(controller.step(i))
            seen.append(observer.next_transition(timeout=T))
        # nobody else may change the env while the lease is held; reading is fine
        with pytest.raises(LeaseHeld):
            bystander.step(0)
        with pytest.raises(ControlDenied):
            observer.step(0)
        assert bystander.get_state() == {"steps": 50, "total": 50}
        assert observer.total_steps == 50
        assert [t.seq for t in seen] == list(range(1, 52))
        assert [t.method for t in seen] == ["reset"] + ["step"] * 50
        assert seen[0].kwargs == {"seed": 3}
        assert [t.args for t in seen[1:]] == [(i,) for i in range(50)]
        for transition, result in zip(seen, results):
            fastenv_assert_same(transition.result, result)
        assert all(t.session == controller.session_id for t in seen)
        assert observer.skipped == 0
        with pytest.raises(FastEnvTimeout):
            observer.next_transition(timeout=0.05)  # reads are not transitions
        # the lease passes on when released; a waiting controller gets it
        waiting: list[object] = []
        thread = threading.Thread(
            target=lambda: waiting.append(
                fastenv.FastRemoteEnv(server.address, role="controller", lease_timeout=T, timeout=T)
            )
        )
        thread.start()
        time.sleep(0.1)  # let it start waiting; correctness does not depend on this
        assert controller.release_control() is True
        thread.join(T)
        successor = waiting[0]
        assert isinstance(successor, fastenv.FastRemoteEnv)
        with successor:
            successor.step(99)
            with pytest.raises(LeaseHeld):
                controller.step(0)
        # closing the holder frees the lease: the shared client drives again
        bystander.step(1)
        assert observer.next_transition(timeout=T).args == (99,)
        assert observer.next_transition(timeout=T).args == (1,)


def fastenv_assert_same(a: object, b: object) -> None:
    from tests.assertions import assert_same

    assert_same(a, b)


def test_stalled_observer_skips_and_never_blocks_the_controller(serve) -> None:
    server = serve(COUNTER, env_kwargs={"obs_size": 64 * 1024})  # 512 KB observations
    with (
        fastenv.FastRemoteEnv(server.address, role="observer", timeout=T) as observer,
        fastenv.FastRemoteEnv(server.address, role="controller", timeout=T) as controller,
    ):
        controller.reset()
        steps = 3000  # far more than the observer's queues hold: it must skip, not block
        for i in range(steps):
            controller.step(i)
        backlog = list(observer.transitions(timeout=1.0))  # what was queued for it meanwhile
        assert 0 < len(backlog) < steps + 1
        for i in range(5):  # once it reads again, it gets the new ones
            controller.step(i)
        fresh = list(observer.transitions(timeout=1.0))
        seen = backlog + fresh
        assert [t.seq for t in seen] == sorted(t.seq for t in seen)
        assert [t.seq for t in fresh] == list(range(steps + 2, steps + 7))
        assert fresh[-1].result[0][0] == steps + 5
        assert observer.skipped == steps + 6 - len(seen) > 0


def test_observers_need_shared_mode(serve) -> None:
    server = serve(COUNTER, "--mode", "per-client")
    with pytest.raises(fastenv.ProtocolError, match="shared mode"):
        fastenv.FastRemoteEnv(server.address, role="observer", timeout=T)


def test_controller_that_dies_frees_the_lease(serve) -> None:
    server = serve(COUNTER, "--heartbeat-interval", "0.5")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LEASE, server.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(LeaseHeld):
            fastenv.FastRemoteEnv(server.address, role="controller", timeout=T)
        holder.kill()
        holder.wait(T)
        with fastenv.FastRemoteEnv(server.address, role="controller", lease_timeout=T, timeout=T) as successor:
            successor.step(0)
    finally:
        holder.kill()
        holder.wait(T)
        holder.stdout.close()


HOLD_LEASE = """
import sys, time, fastenv
env = fastenv.FastRemoteEnv(sys.argv[1], role="controller", transport="tcp", timeout=20)
env.step(0)
print("holding", flush=True)
time.sleep(600)
"""


# ---------------------------------------------------------------- batched and async calls


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_batch_step_runs_k_steps_in_one_call_and_stops_at_episode_end(serve, transport: str) -> None:
    from envs.session_envs import Counter

    server = serve(COUNTER, env_kwargs={"horizon": 10})
    local = Counter(horizon=10)
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as env:
        fastenv_assert_same(env.reset(seed=1), local.reset(seed=1))
        results = env.batch_step([1, 2, 3, 4])
        assert len(results) == 4
        for result, action in zip(results, [1, 2, 3, 4]):
            fastenv_assert_same(result, local.step(action))
        results = env.batch_step(range(20))  # the episode ends at step 10: six more steps
        assert len(results) == 6 and results[-1][2] is True
        assert env.get_state() == {"steps": 10, "total": 10}
        assert env.batch_step([]) == []


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_step_async_and_misuse(serve, transport: str) -> None:
    server = serve(COUNTER)
    env = fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T)
    with env:
        env.reset()
        with pytest.raises(NoPendingCallError):
            env.step_wait()
        env.step_async(5)
        with pytest.raises(AlreadyPendingError):
            env.step_async(6)
        with pytest.raises(AlreadyPendingError):
            env.step(6)
        obs, reward, *_ = env.step_wait(timeout=T)
        assert obs[0] == 1 and reward == 1.0
        env.step_async("slow:0.3")
        with pytest.raises(FastEnvTimeout):
            env.step_wait(timeout=0.01)
        obs, reward, *_ = env.step_wait(timeout=T)  # still pending after a timeout: wait again
        assert obs[0] == 2 and reward == 2.0
        assert env.get_state() == {"steps": 2, "total": 2}
    with pytest.raises(ClientClosedError):
        env.step_async(1)
    with pytest.raises(ClientClosedError):
        env.step_wait()


def test_pipelined_steps_on_several_servers(serve) -> None:
    servers = [serve(COUNTER) for _ in range(3)]
    envs = [fastenv.FastRemoteEnv(s.address, timeout=T) for s in servers]
    try:
        for env in envs:
            env.reset()
        for round_ in range(1, 20):
            for env in envs:
                env.step_async(round_)  # all three servers step at the same time
            for env in envs:
                assert env.step_wait()[0][0] == round_
    finally:
        for env in envs:
            env.close()


# ---------------------------------------------------------------- state cache


def test_repeated_get_state_is_served_from_the_cache(serve) -> None:
    server = serve(COUNTER)
    with fastenv.FastRemoteEnv(server.address, timeout=T) as env, fastenv.FastRemoteEnv(server.address) as other:
        env.reset()
        env.step(0)
        assert env.get_state() == env.get_state() == other.get_state() == {"steps": 1, "total": 1}
        assert env.state_reads == 1
        other.step(0)  # any change, by any client, invalidates it
        assert env.get_state() == {"steps": 2, "total": 2}
        assert env.state_reads == 2
        env.set_state({"steps": 0})
        assert env.get_state()["steps"] == 0 and env.state_reads == 3


def test_an_env_whose_state_moves_on_its_own_is_asked_every_time(serve) -> None:
    server = serve(COUNTER.replace(":Counter", ":Sensor"))
    with fastenv.FastRemoteEnv(server.address, timeout=T) as env:
        env.reset()
        readings = [env.get_state()["reading"] for _ in range(3)]
        assert readings == [1, 2, 3] and env.state_reads == 3


# ---------------------------------------------------------------- liveness


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_killed_client_session_is_reclaimed_within_two_heartbeats(serve, tmp_path: Path, transport: str) -> None:
    interval = 1.0
    server = serve(COUNTER, "--mode", "per-client", "--heartbeat-interval", str(interval), env_kwargs={"marker_dir": str(tmp_path)})
    client = subprocess.Popen(
        [sys.executable, "-c", STEP_AND_HANG, server.address, transport], stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "stepped"
        assert not list(tmp_path.glob("closed-*"))
        client.kill()
        client.wait(T)
        killed = time.monotonic()
        assert wait_until(lambda: bool(list(tmp_path.glob("closed-*"))), timeout=T)
        assert time.monotonic() - killed < 2 * interval
    finally:
        client.kill()
        client.wait(T)
        client.stdout.close()


STEP_AND_HANG = """
import sys, time, fastenv
env = fastenv.FastRemoteEnv(sys.argv[1], transport=sys.argv[2], timeout=20)
env.reset()
env.step(0)
print("stepped", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_killed_server_raises_then_restarted_server_means_session_lost(serve, transport: str) -> None:
    port, data_port = free_port(), free_port()
    args = ("--port", str(port), "--data-port", str(data_port))
    server = serve(COUNTER, *args)
    env = fastenv.FastRemoteEnv(server.address, transport=transport, timeout=5)
    with env:
        env.reset()
        env.step(0)
        server.kill()
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            env.step(1)
        assert time.monotonic() - started < 5 + 1  # within its timeout
        serve(COUNTER, *args)  # a new server on the same ports knows nothing of the session
        with pytest.raises(SessionLost):
            env.step(2)
        with pytest.raises(SessionLost):  # and stays lost
            env.step(3)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_recreate_on_session_lost(serve, transport: str) -> None:
    port, data_port = free_port(), free_port()
    args = ("--port", str(port), "--data-port", str(data_port))
    server = serve(COUNTER, *args)
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=5, on_session_lost="recreate") as env:
        env.reset(seed=7)
        env.step(0)
        server.kill()
        serve(COUNTER, *args)
        with pytest.raises(SessionLost) as caught:
            env.step(1)
        assert caught.value.recreated
        obs, info = caught.value.reset_result
        assert info == {"seed": 7}  # reset again with the last reset's arguments
        assert env.step(1)[0][0] == 1.0  # the new session works
        assert env.transport == transport


# ---------------------------------------------------------------- reconnection and resume


def test_connection_cut_mid_step_resumes_and_applies_the_step_once(serve, tmp_path: Path) -> None:
    port, data_port = free_port(), free_port()
    server = serve(COUNTER, "--port", str(port), "--data-port", str(data_port), env_kwargs={"marker_dir": str(tmp_path)})
    with (
        TcpProxy(("127.0.0.2", port), ("127.0.0.1", port)) as control,
        TcpProxy(("127.0.0.2", data_port), ("127.0.0.1", data_port)) as data,
        fastenv.FastRemoteEnv(f"127.0.0.2:{port}", transport="tcp", timeout=T) as env,
    ):
        assert f"port {data_port}" in env.transport_reason and "ZeroMQ" not in env.transport_reason
        env.reset()
        env.step(0)

        def cut_during_the_step() -> None:
            assert wait_until(lambda: (tmp_path / "slow-started").exists())
            control.cut()
            data.cut()

        cutter = threading.Thread(target=cut_during_the_step)
        cutter.start()
        obs, reward, *_ = env.step("slow:0.5")
        cutter.join(T)
        assert data.cuts == 1
        assert obs[0] == 2.0 and reward == 2.0  # the reply to the step that was running
        assert env.get_state() == {"steps": 2, "total": 2}  # applied exactly once
        obs, *_ = env.step(0)
        assert obs[0] == 3.0
    assert server.process.poll() is None


def test_connection_cut_between_calls_resumes_transparently(serve) -> None:
    port, data_port = free_port(), free_port()
    serve(COUNTER, "--port", str(port), "--data-port", str(data_port))
    with (
        TcpProxy(("127.0.0.2", port), ("127.0.0.1", port)) as control,
        TcpProxy(("127.0.0.2", data_port), ("127.0.0.1", data_port)) as data,
        fastenv.FastRemoteEnv(f"127.0.0.2:{port}", transport="tcp", timeout=T) as env,
    ):
        env.reset()
        for expected in range(1, 6):
            control.cut()
            data.cut()
            assert env.step(0)[0][0] == expected
        assert env.get_state()["total"] == 5


def test_resume_can_be_turned_off(serve) -> None:
    port, data_port = free_port(), free_port()
    serve(COUNTER, "--port", str(port), "--data-port", str(data_port))
    with (
        TcpProxy(("127.0.0.2", port), ("127.0.0.1", port)),
        TcpProxy(("127.0.0.2", data_port), ("127.0.0.1", data_port)) as data,
        fastenv.FastRemoteEnv(f"127.0.0.2:{port}", transport="tcp", timeout=T, reconnect=False) as env,
    ):
        env.reset()
        data.cut()
        with pytest.raises(ConnectionLost):
            env.step(0)


def test_observer_arrays_are_owned_copies(serve) -> None:
    server = serve(COUNTER)
    with (
        fastenv.FastRemoteEnv(server.address, role="observer", timeout=T) as observer,
        fastenv.FastRemoteEnv(server.address, timeout=T) as env,
    ):
        env.reset()
        for _ in range(3):
            env.step(0)
        firsts = [observer.next_transition(T).result for _ in range(4)]
        assert [r[0][0] for r in firsts[1:]] == [1.0, 2.0, 3.0]
        assert isinstance(firsts[1][0], np.ndarray)
