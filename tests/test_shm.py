"""The shared-memory data plane, with real server and client processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq
from assertions import assert_same

import fastenv
from fastenv import native, protocol
from fastenv.errors import TransportError
from fastenv.examples import CameraEnv
from fastenv.protocol import Kind
from fastenv.shm import futex
from fastenv.shm.arena import SHM_DIR, list_segments, segment_owner

ENVS = Path(__file__).parent / "envs"


@pytest.fixture(autouse=True, params=["native", "python"], ids=["native-doorbell", "python-doorbell"])
def doorbell_backend(request, monkeypatch) -> str:
    """Every test here runs twice: with the C doorbell and with the pure-Python fallback.

    This process switches through :func:`fastenv.native.select_backend` (restored at
    teardown); servers and client subprocesses get the backend through ``FASTENV_NATIVE``.
    """
    if request.param == "native" and futex.native_backend is None:
        pytest.skip("fastenv._native is not built (run `python setup.py build_ext --inplace`)")
    try:
        previous = native.select_backend(request.param)
    except native.NativeBackendError as exc:
        pytest.skip(str(exc))
    request.addfinalizer(lambda: native.select_backend(previous))
    monkeypatch.setenv("FASTENV_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def segments_of(pid: int) -> list[str]:
    return [path.name for path in list_segments() if segment_owner(path.name) == pid]


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll a condition with a deadline (for process deaths, which have no ready signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_same_host_picks_shm_and_says_why(serve, doorbell_backend: str) -> None:
    server = serve("fastenv.examples:VectorEnv")
    with fastenv.FastRemoteEnv(server.address) as env:
        assert env.transport == "shm"
        assert "nonce" in env.transport_reason
        assert f"backend={doorbell_backend}" in repr(env._session.transport._reply_bell)
        env.reset(seed=0)
        env.step(np.zeros(4, np.float32))
    with fastenv.FastRemoteEnv(server.address, transport="tcp") as env:
        assert env.transport == "tcp" and "requested" in env.transport_reason


def _shares_arena(array: np.ndarray, env: fastenv.FastRemoteEnv) -> bool:
    """Whether ``array`` lies in the session's arena (a zero-copy view) rather than in owned memory."""
    arena = env._session.transport.arena
    start = np.frombuffer(arena.buf, np.uint8).ctypes.data
    return start <= array.ctypes.data < start + len(arena.buf)


def test_kept_views_never_change_and_are_writable(serve) -> None:
    server = serve("fastenv.examples:CameraEnv", "--shm-slots", "3", env_kwargs={"height": 16, "width": 16})
    action = np.zeros(20, np.float32)
    local = CameraEnv(height=16, width=16)
    with fastenv.FastRemoteEnv(server.address) as env:
        assert_same(env.reset(seed=0), local.reset(seed=0))
        for _ in range(3):  # let the layout settle so steps take the fast path
            env.step(action)
            local.step(action)
        kept, expected = [], []
        for _ in range(6):  # more than the 2 slots a 3-slot arena lends: later ones are copies
            kept.append(env.step(action)[0])
            expected.append(local.step(action)[0])
        assert [_shares_arena(obs["left"], env) for obs in kept] == [True, True, False, False, False, False]
        frame = kept[0]["left"]
        assert frame.flags.writeable
        frame[0, 0, 0] = 7  # the caller's to change, like the local env's
        expected[0]["left"][0, 0, 0] = 7
        for _ in range(10):
            env.step(action)
        for obs, want in zip(kept, expected):
            assert_same(obs, want)  # still what each call returned
        kept.clear()  # the held slots are free again: replies are zero-copy views once more
        later = env.step(action)[0]
        assert _shares_arena(later["left"], env)


_VIEWS_AFTER_CLOSE = """
import gc, sys, numpy as np, fastenv
with fastenv.FastRemoteEnv(sys.argv[1], transport="shm") as env:
    env.reset(seed=0)
    for _ in range(20):  # every later reply is a layout reply: views prepared once per slot
        obs = env.step(np.zeros(20, np.float32))[0]
    left, proprio = obs["left"], obs["proprio"]
    del obs
gc.collect()  # nothing else refers to the arena any more
print(int(left.astype(np.int64).sum()), float(proprio.sum()))
"""


def test_views_outlive_close_without_a_segfault(serve) -> None:
    """A view kept past close() keeps its memory mapped (a crash here is a subprocess exit, not ours)."""
    kwargs = {"height": 16, "width": 16}
    server = serve("fastenv.examples:CameraEnv", env_kwargs=kwargs)
    child = subprocess.run(
        [sys.executable, "-c", _VIEWS_AFTER_CLOSE, server.address],
        capture_output=True, text=True, timeout=60, env={**os.environ}, check=False,
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    local = CameraEnv(**kwargs)
    local.reset(seed=0)
    for _ in range(20):
        obs = local.step(np.zeros(20, np.float32))[0]
    assert child.stdout.split() == [str(int(obs["left"].astype(np.int64).sum())), str(float(obs["proprio"].sum()))]


def test_copy_true_gives_owned_arrays_forever(serve) -> None:
    server = serve("fastenv.examples:CameraEnv", env_kwargs={"height": 16, "width": 16})
    with fastenv.FastRemoteEnv(server.address, copy=True) as env:
        assert env.transport == "shm"
        env.reset(seed=0)
        kept = [env.step(np.zeros(20, np.float32))[0] for _ in range(10)]
        snapshots = [obs["left"].copy() for obs in kept]
        for _ in range(10):
            env.step(np.zeros(20, np.float32))
        for obs, snapshot in zip(kept, snapshots):
            assert obs["left"].flags.writeable and np.array_equal(obs["left"], snapshot)


def test_arena_grows_for_large_observations_and_actions(serve, test_env_target) -> None:
    server = serve(test_env_target("Growing"))
    with fastenv.FastRemoteEnv(server.address, timeout=30) as env:
        assert env.transport == "shm"
        for n in (10, 100_000, 10, 3_000_000, 3_000_000, 50):  # 12 MB observations force remaps
            obs, _, _, _, info = env.step(n)
            assert info == {"n": n} and obs.dtype == np.uint32 and obs.shape == (n,)
            assert obs[-1] == n - 1 and obs[n // 2] == n // 2
        big = np.random.default_rng(0).integers(0, 255, 5_000_000, dtype=np.uint8)  # 5 MB action
        echoed, total, *_ = env.step(big)
        assert total == float(big.sum()) and np.array_equal(echoed, big)
        echoed, total, *_ = env.step(big[:1000].copy())
        assert np.array_equal(echoed, big[:1000])


def test_shm_required_but_server_offers_none(serve) -> None:
    server = serve("fastenv.examples:VectorEnv", "--no-shm")
    with pytest.raises(TransportError, match="transport='shm' was requested"):
        fastenv.FastRemoteEnv(server.address, transport="shm")
    with fastenv.FastRemoteEnv(server.address) as env:
        assert env.transport == "tcp" and "offers no shared memory" in env.transport_reason


def test_probe_fails_when_server_uses_another_shm_directory(serve, tmp_path: Path) -> None:
    # The server writes its segments where this client cannot see them: as with another host.
    server = serve("fastenv.examples:VectorEnv", extra_env={"FASTENV_SHM_DIR": str(tmp_path)})
    with fastenv.FastRemoteEnv(server.address) as env:
        assert env.transport == "tcp" and "probe failed" in env.transport_reason
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,)
    with pytest.raises(TransportError, match="probe failed"):
        fastenv.FastRemoteEnv(server.address, transport="shm")
    assert not list(tmp_path.iterdir())  # offered segments were removed after the refusal


def test_a_client_process_on_this_backend_gives_identical_results(serve, doorbell_backend: str) -> None:
    server = serve("fastenv.examples:VectorEnv")
    result = subprocess.run(
        [sys.executable, str(ENVS / "shm_client_check.py"), server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OK", "shm", doorbell_backend]


CLIENT_LOOP = """
import sys, numpy as np, fastenv
env = fastenv.FastRemoteEnv(sys.argv[1], transport="shm")
env.reset(seed=0)
print("stepping", flush=True)
while True:
    env.step(np.zeros(4, np.float32))
"""


def test_kill_9_of_client_then_server_leaves_no_segments(serve) -> None:
    server = serve("fastenv.examples:VectorEnv")
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT_LOOP, server.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout.readline().strip() == "stepping"
        assert segments_of(server.pid) == []  # names are unlinked as soon as the client maps them
        client.kill()
        client.wait(timeout=10)
    finally:
        client.stdout.close()
    with fastenv.FastRemoteEnv(server.address) as env:  # the server keeps serving
        env.reset(seed=0)
        server_pid = server.pid
        server.kill()
    assert wait_until(lambda: not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == "zombie")
    assert segments_of(server_pid) == []


def test_segments_of_a_dead_server_are_reclaimed(serve) -> None:
    server = serve("fastenv.examples:VectorEnv")
    # A client that says HELLO but dies before attaching leaves an offered segment behind...
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(server.address)
    sock.send_multipart(protocol.pack(Kind.HELLO, 1, {"fastenv": "test", "transport": "auto"}))
    welcome = protocol.unpack(sock.recv_multipart()).body()
    sock.close()
    offered = welcome["shm"]["name"]
    assert (SHM_DIR / offered).exists()
    server.kill()  # ...and so does a server killed at that moment
    assert (SHM_DIR / offered).exists()
    result = subprocess.run([sys.executable, "-m", "fastenv", "gc"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and f"removed {offered}" in result.stdout
    assert not (SHM_DIR / offered).exists()


def test_next_server_start_reclaims_stale_segments(serve, tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"fastenv-{dead.stdout.strip()}-deadbeef"
    stale.write_bytes(b"\0" * 4096)
    serve("fastenv.examples:VectorEnv", extra_env={"FASTENV_SHM_DIR": str(tmp_path)})
    assert not stale.exists()


def test_client_memory_stays_flat(serve) -> None:
    server = serve("fastenv.examples:CameraEnv")  # 1.8 MB per step
    process = psutil.Process()
    with fastenv.FastRemoteEnv(server.address) as env:
        env.reset(seed=0)
        action = np.zeros(20, np.float32)
        for _ in range(200):
            env.step(action)
        before = process.memory_info().rss
        for _ in range(2000):
            env.step(action)
        growth = process.memory_info().rss - before
    assert growth < 8 * 1024 * 1024, f"client RSS grew by {growth / 1e6:.1f} MB over 2000 camera steps"


def test_client_reads_a_reply_only_after_the_doorbell() -> None:
    """A slot whose header already matches (a torn or slow write) is not read before the ring."""
    import threading

    from fastenv import codec
    from fastenv.shm.arena import ENVELOPE, REPLY_BELL, REQUEST_BELL, RESULT, Arena
    from fastenv.shm.client import ShmClientPlane
    from fastenv.shm.doorbell import Doorbell
    from fastenv.shm.plane import DEFAULT_SHAPE, WAIT_SLICE_S

    server_arena = Arena.create(DEFAULT_SHAPE)
    client = ShmClientPlane(Arena.attach(server_arena.name), alive=lambda: None)
    server_arena.unlink()
    reply = (np.arange(20_000, dtype=np.float64), 1.5, False, False, {})  # fits a default slot

    def slow_server() -> None:
        Doorbell(server_arena.buf, REQUEST_BELL).wait(0, 10)
        seq = ENVELOPE.unpack_from(server_arena.buf, server_arena.request_offset())[4]  # the client picks it
        slot = server_arena.shape.slot_offset(seq % server_arena.shape.slots)
        skeleton, buffers = codec.encode(reply)
        # The matching header lands first; the body only after several wait slices.
        ENVELOPE.pack_into(server_arena.buf, slot, RESULT, 0, len(buffers), len(skeleton), seq)
        time.sleep(4 * WAIT_SLICE_S)
        server_arena.write_envelope(slot, server_arena.shape.slot_capacity, RESULT, seq, skeleton, buffers)
        Doorbell(server_arena.buf, REPLY_BELL).ring()

    thread = threading.Thread(target=slow_server)
    thread.start()
    try:
        ok, value = client.call(("step", (0,), {}), 10, "step()")
    finally:
        thread.join(10)
        client.close()
        server_arena.close()
    assert ok
    assert np.array_equal(value[0], reply[0]) and value[1:] == reply[1:]
