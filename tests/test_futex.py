"""Tests for fastenv.shm.futex (native and pure-Python backends) and Doorbell."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import pytest

from fastenv import native
from fastenv.errors import FastEnvError, FastEnvTimeout
from fastenv.shm import futex
from fastenv.shm.doorbell import Doorbell

_layout = native.part(native.LAYOUT_MODULE).module  # the fast path's take(), whichever backend is selected

REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 10.0  # generous bound for every blocking call in these tests

BACKENDS = [
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            futex.native_backend is None,
            reason=(
                "fastenv._native is not built (run `python setup.py build_ext --inplace`): "
                f"{futex._native_error}"
            ),
        ),
    ),
    "python",
]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def be(backend_name: str) -> Any:
    return futex.get_backend(backend_name)


@pytest.fixture
def make_shm() -> Iterator[Callable[[int], SharedMemory]]:
    """Factory of SharedMemory segments; every one is closed and unlinked at teardown."""
    made: list[SharedMemory] = []

    def factory(size: int = 4096) -> SharedMemory:
        shm = SharedMemory(create=True, size=size)
        made.append(shm)
        return shm

    yield factory
    for shm in made:
        shm.close()
        shm.unlink()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------
# word operations


def test_load_store_add_compare_exchange(be: Any) -> None:
    buf = bytearray(64)
    assert be.load(buf, 8) == 0
    assert be.store(buf, 8, 123) is None
    assert be.load(buf, 8) == 123
    assert struct.unpack_from("=I", buf, 8)[0] == 123
    assert be.load(buf, 4) == 0 and be.load(buf, 12) == 0  # neighbours untouched
    assert be.add(buf, 8, 10) == 123
    assert be.load(buf, 8) == 133
    assert be.compare_exchange(buf, 8, 1, 2) is False
    assert be.load(buf, 8) == 133
    assert be.compare_exchange(buf, 8, 133, 7) is True
    assert be.load(buf, 8) == 7
    be.store(buf, 60, 2**32 - 1)
    assert be.load(buf, 60) == 2**32 - 1


def test_add_wraps_modulo_2_32(be: Any) -> None:
    buf = bytearray(8)
    be.store(buf, 0, 2**32 - 1)
    assert be.add(buf, 0, 1) == 2**32 - 1
    assert be.load(buf, 0) == 0
    assert be.add(buf, 0, -1) == 0
    assert be.load(buf, 0) == 2**32 - 1
    assert be.add(buf, 0, 2**32 + 5) == 2**32 - 1
    assert be.load(buf, 0) == 4


@pytest.mark.parametrize("value", [-1, 2**32, 2**80])
def test_out_of_range_values_rejected(be: Any, value: int) -> None:
    buf = bytearray(8)
    with pytest.raises(ValueError):
        be.store(buf, 0, value)
    with pytest.raises(ValueError):
        be.compare_exchange(buf, 0, value, 1)
    with pytest.raises(ValueError):
        be.compare_exchange(buf, 0, 0, value)
    with pytest.raises(ValueError):
        be.wait(buf, 0, value, 0)
    assert be.load(buf, 0) == 0


def test_non_integer_arguments_rejected(be: Any) -> None:
    buf = bytearray(8)
    with pytest.raises(TypeError):
        be.store(buf, 0, 1.5)
    with pytest.raises(TypeError):
        be.load(buf, 0.0)


@pytest.mark.parametrize("offset", [-4, 2, 6, 61, 62, 64, 68, 2**40, 2**70])
def test_bad_offsets_rejected_by_every_function(be: Any, offset: int) -> None:
    buf = bytearray(64)
    calls = [
        lambda: be.load(buf, offset),
        lambda: be.store(buf, offset, 1),
        lambda: be.add(buf, offset, 1),
        lambda: be.compare_exchange(buf, offset, 0, 1),
        lambda: be.wait(buf, offset, 0, 0),
        lambda: be.wake(buf, offset, 1),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert buf == bytearray(64)


def test_misaligned_buffer_address_rejected(be: Any) -> None:
    base = bytearray(16)
    with memoryview(base) as whole, whole[1:13] as view:
        with pytest.raises(ValueError):
            be.load(view, 0)
        with pytest.raises(ValueError):
            be.store(view, 4, 1)
    assert base == bytearray(16)


def test_read_only_buffer_rejected(be: Any) -> None:
    with pytest.raises((BufferError, TypeError)):
        be.load(bytes(8), 0)
    with pytest.raises((BufferError, TypeError)):
        be.store(bytes(8), 0, 1)


def test_works_on_mmap_and_shared_memory(
    be: Any, make_shm: Callable[[int], SharedMemory]
) -> None:
    with mmap.mmap(-1, 4096) as m:
        be.store(m, 4092, 9)
        assert be.add(m, 4092, 1) == 9
        assert struct.unpack_from("=I", m, 4092)[0] == 10
    shm = make_shm(4096)
    be.store(shm.buf, 0, 77)
    assert be.load(shm.buf, 0) == 77
    assert be.wake(shm.buf, 0, 1) == 0


def test_buffer_not_held_after_calls(be: Any) -> None:
    """Every call releases its buffer export, error paths included."""
    m = mmap.mmap(-1, 4096)
    be.store(m, 0, 1)
    be.load(m, 0)
    be.add(m, 0, 1)
    be.compare_exchange(m, 0, 2, 3)
    be.wait(m, 0, 3, 0)
    be.wait(m, 0, 4, 0)
    be.wake(m, 0, 5)
    for bad in (
        lambda: be.load(m, 4096),
        lambda: be.store(m, 0, -1),
        lambda: be.wait(m, 2, 0),
    ):
        with pytest.raises(ValueError):
            bad()
    m.close()  # BufferError here if any export leaked


def test_bytearray_can_be_resized_after_calls(be: Any) -> None:
    buf = bytearray(8)
    be.store(buf, 0, 1)
    be.wait(buf, 0, 1, 0.001)
    buf.extend(b"1234")  # BufferError if an export leaked


# --------------------------------------------------------------------------
# wait / wake


def test_wait_returns_immediately_when_value_differs(be: Any) -> None:
    buf = bytearray(8)
    be.store(buf, 4, 5)
    start = time.monotonic()
    assert be.wait(buf, 4, 4, timeout=WAIT_S) is True
    assert be.wait(buf, 4, 4, None) is True
    assert be.wait(buf, 4, 4, 0) is True
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("timeout", [0, -1.0, 0.0])
def test_wait_zero_timeout_only_checks(be: Any, timeout: float) -> None:
    buf = bytearray(8)
    start = time.monotonic()
    assert be.wait(buf, 0, 0, timeout) is False
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("spin_us", [0, None])
def test_wait_times_out(be: Any, spin_us: int | None) -> None:
    buf = bytearray(8)
    kwargs = {} if spin_us is None else {"spin_us": spin_us}
    timeout = 0.2
    start = time.monotonic()
    assert be.wait(buf, 0, 0, timeout, **kwargs) is False
    elapsed = time.monotonic() - start
    assert timeout <= elapsed < timeout + 2.0


def test_wait_rejects_bad_arguments(be: Any) -> None:
    buf = bytearray(8)
    with pytest.raises(ValueError):
        be.wait(buf, 0, 0, float("nan"))
    with pytest.raises(ValueError):
        be.wait(buf, 0, 0, 0.01, spin_us=-1)
    with pytest.raises(TypeError):
        be.wait(buf, 0, 0, "1")
    with pytest.raises(ValueError):
        be.wake(buf, 0, -1)


def test_wait_woken_by_other_thread(be: Any) -> None:
    """The waiter sleeps with the GIL released; a thread's store + wake ends the wait."""
    buf = bytearray(8)
    progressed = threading.Event()

    def writer() -> None:
        progressed.set()  # needs the GIL while the main thread waits
        time.sleep(0.05)
        be.store(buf, 0, 1)
        be.wake(buf, 0, 2**31 - 1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert be.wait(buf, 0, 0, WAIT_S, spin_us=0) is True
        assert progressed.is_set()
        assert be.load(buf, 0) == 1
    finally:
        thread.join(WAIT_S)
    assert not thread.is_alive()


def test_native_wake_counts_blocked_waiter() -> None:
    if futex.native_backend is None:
        pytest.skip(f"fastenv._native is not built: {futex._native_error}")
    be = futex.native_backend
    buf = bytearray(8)
    results: list[bool] = []
    thread = threading.Thread(
        target=lambda: results.append(be.wait(buf, 0, 0, WAIT_S, 0))
    )
    assert be.wake(buf, 0, 1) == 0  # nobody waiting yet
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        woken = 0
        while woken == 0 and time.monotonic() < deadline:
            # wakes without changing the word are spurious: the waiter re-blocks
            woken = be.wake(buf, 0, 1)
            time.sleep(0.001)
        assert woken == 1
        be.store(buf, 0, 1)
        be.wake(buf, 0, 2**40)  # "all" is clamped to INT_MAX
    finally:
        thread.join(WAIT_S)
    assert results == [True]


def test_signal_handler_that_returns_keeps_waiting(be: Any) -> None:
    """EINTR runs the Python handler; the wait goes on when it does not raise."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    buf = bytearray(8)
    received: list[int] = []
    previous = signal.signal(
        signal.SIGUSR1, lambda signum, frame: received.append(signum)
    )
    main_id = threading.main_thread().ident
    assert main_id is not None

    def poker() -> None:
        for _ in range(5):
            time.sleep(0.02)
            signal.pthread_kill(main_id, signal.SIGUSR1)
        time.sleep(0.02)
        be.store(buf, 0, 1)
        be.wake(buf, 0, 1)

    thread = threading.Thread(target=poker)
    try:
        thread.start()
        assert be.wait(buf, 0, 0, WAIT_S, spin_us=0) is True
    finally:
        thread.join(WAIT_S)
        signal.signal(signal.SIGUSR1, previous)
    assert received == [signal.SIGUSR1] * 5


_SIGINT_CHILD = textwrap.dedent(
    """
    import mmap, sys
    from fastenv.shm.futex import get_backend
    be = get_backend(sys.argv[1])
    m = mmap.mmap(-1, 4096)
    try:
        print("waiting", flush=True)
        if sys.argv[2] == "take":  # the shared-memory fast path's wait (fastenv._layout.take)
            from fastenv import _layout
            _layout.take(m, 0, 0, 0, 1e12, 64, {}, False, -1)
        else:
            be.wait(m, 0, 0, None)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(42)
    print("returned", flush=True)
    sys.exit(1)
    """
)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_sigint_interrupts_blocked_wait(backend_name: str) -> None:
    _interrupt_blocked_child(backend_name, "wait")


@pytest.mark.skipif(_layout is None, reason="take() is part of the native fast path (fastenv._layout)")
def test_sigint_interrupts_blocked_take() -> None:
    _interrupt_blocked_child("native", "take")


def _interrupt_blocked_child(backend_name: str, waiter: str) -> None:
    """A child blocked in ``waiter`` gets SIGINT once asleep and must exit through KeyboardInterrupt."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_CHILD, backend_name, waiter],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=_child_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        # Ready signal #2: the child is asleep (in the futex, or between polls).
        deadline = time.monotonic() + WAIT_S
        while _proc_state(child.pid) != "S" and time.monotonic() < deadline:
            time.sleep(0.001)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=WAIT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=WAIT_S)
    assert child.returncode == 42, (out, err)
    assert out.strip() == "KeyboardInterrupt"


# --------------------------------------------------------------------------
# Doorbell


def test_doorbell_ring_value_wait(be: Any) -> None:
    buf = bytearray(16)
    bell = Doorbell(buf, 8, backend=be)
    assert bell.offset == 8 and bell.backend is be
    assert bell.value() == 0
    assert bell.ring() == 1
    assert bell.ring() == 2
    assert bell.value() == 2
    assert bell.wait(0, timeout=WAIT_S) == 2  # already differs: immediate
    assert bell.wait(1, timeout=0) == 2
    assert "Doorbell" in repr(bell)


def test_doorbell_wraps(be: Any) -> None:
    buf = bytearray(8)
    be.store(buf, 0, 2**32 - 1)
    bell = Doorbell(buf, 0, backend=be)
    assert bell.ring() == 0
    assert bell.wait(2**32 - 1, timeout=0) == 0


def test_doorbell_timeout_raises(be: Any) -> None:
    bell = Doorbell(bytearray(8), 0, backend=be)
    start = time.monotonic()
    with pytest.raises(FastEnvTimeout) as info:
        bell.wait(0, timeout=0.1)
    assert 0.1 <= time.monotonic() - start < 2.1
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, FastEnvError)
    with pytest.raises(FastEnvTimeout):
        bell.wait(0, timeout=0)


def test_doorbell_woken_by_thread(be: Any) -> None:
    buf = bytearray(8)
    bell = Doorbell(buf, 0, backend=be)
    timer = threading.Timer(0.05, bell.ring)
    timer.start()
    try:
        assert bell.wait(0, timeout=WAIT_S) == 1
    finally:
        timer.join(WAIT_S)


def test_doorbell_backend_selection() -> None:
    buf = bytearray(8)
    assert Doorbell(buf, 0).backend is futex.get_backend(None)
    assert Doorbell(buf, 0, backend="python").backend is futex.python_backend
    assert (
        Doorbell(buf, 0, backend=futex.python_backend).backend is futex.python_backend
    )
    if futex.native_backend is not None:
        assert Doorbell(buf, 0, backend="native").backend is futex.native_backend
    else:
        with pytest.raises(ImportError):
            Doorbell(buf, 0, backend="native")
    with pytest.raises(ValueError):
        Doorbell(buf, 0, backend="cython")
    with pytest.raises(TypeError):
        Doorbell(buf, 0, backend=object())
    with pytest.raises(ValueError):
        Doorbell(buf, 2)
    with pytest.raises(ValueError):
        Doorbell(buf, 8)
    with pytest.raises(ValueError):
        Doorbell(buf, 0, spin_us=-1)


# --------------------------------------------------------------------------
# backend selection


def test_backend_info() -> None:
    info = futex.backend_info()
    assert info["name"] == futex.BACKEND in ("native", "python")
    assert info["native_available"] is (futex.native_backend is not None)
    assert isinstance(info["module"], str) and os.path.exists(info["module"])
    if info["name"] == "python":
        assert info["reason"]
    else:
        assert info["reason"] is None
    for name in futex.PUBLIC_API:
        assert getattr(futex, name) is getattr(futex.get_backend(None), name)


def _backend_in_subprocess(value: str) -> subprocess.CompletedProcess[str]:
    env = _child_env()
    env["FASTENV_NATIVE"] = value
    code = "from fastenv.shm import futex; print(futex.BACKEND); print(futex.backend_info()['reason'])"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def test_env_var_forces_python() -> None:
    result = _backend_in_subprocess("0")
    assert result.returncode == 0, result.stderr
    name, reason = result.stdout.split("\n", 1)
    assert name == "python"
    assert "FASTENV_NATIVE=0" in reason


def test_env_var_forces_native() -> None:
    result = _backend_in_subprocess("1")
    if futex.native_backend is None:
        assert result.returncode != 0
        assert "ImportError" in result.stderr or "ModuleNotFoundError" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\n", 1)[0] == "native"


# --------------------------------------------------------------------------
# cross-process ping-pong

PING, PONG, PAYLOAD, REPLY = 0, 64, 128, 192
ROUND_TRIPS = 2000


def _pingpong_child(name: str, backend_name: str, rounds: int, conn: Any) -> None:
    shm = SharedMemory(name=name)
    try:
        buf = shm.buf
        ping = Doorbell(buf, PING, backend=backend_name)
        pong = Doorbell(buf, PONG, backend=backend_name)
        conn.send("ready")
        seen = 0
        for _ in range(rounds):
            seen = ping.wait(seen, timeout=WAIT_S)
            (payload,) = struct.unpack_from("=Q", buf, PAYLOAD)
            struct.pack_into("=Q", buf, REPLY, payload ^ 0xFFFF_FFFF_FFFF_FFFF)
            pong.ring()
        conn.send(("done", seen))
        del ping, pong, buf
    except BaseException as exc:  # report, then let the exit code say it too
        conn.send(("error", repr(exc)))
        raise
    finally:
        shm.close()


def test_cross_process_ping_pong(
    backend_name: str, make_shm: Callable[[int], SharedMemory]
) -> None:
    shm = make_shm(4096)
    buf = shm.buf
    buf[:256] = bytes(256)
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(
        target=_pingpong_child, args=(shm.name, backend_name, ROUND_TRIPS, child_conn)
    )
    proc.start()
    try:
        assert parent_conn.poll(60), "child did not start"
        assert parent_conn.recv() == "ready"
        ping = Doorbell(buf, PING, backend=backend_name)
        pong = Doorbell(buf, PONG, backend=backend_name)
        seen = 0
        for i in range(ROUND_TRIPS):
            payload = (i * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF
            struct.pack_into("=Q", buf, PAYLOAD, payload)
            assert ping.ring() == i + 1
            seen = pong.wait(seen, timeout=WAIT_S)
            assert seen == i + 1
            assert (
                struct.unpack_from("=Q", buf, REPLY)[0]
                == payload ^ 0xFFFF_FFFF_FFFF_FFFF
            )
        assert parent_conn.poll(WAIT_S)
        assert parent_conn.recv() == ("done", ROUND_TRIPS)
        assert ping.value() == ROUND_TRIPS and pong.value() == ROUND_TRIPS
        del ping, pong
    finally:
        proc.join(WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(WAIT_S)
        parent_conn.close()
        child_conn.close()
    assert proc.exitcode == 0


def test_ring_wakes_a_sleeper_and_the_sleepers_word_counts_it() -> None:
    if futex.native_backend is None:
        pytest.skip("fastenv._native is not built")
    native = futex.native_backend
    buf = bytearray(8)  # counter at 0, sleepers at 4
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(native.wait(buf, 0, 0, WAIT_S, 0, 4)))
    waiter.start()
    deadline = time.monotonic() + WAIT_S
    while native.load(buf, 4) != 1:  # the waiter announced its sleep
        assert time.monotonic() < deadline, "the waiter never went to sleep"
        time.sleep(0.001)
    assert native.ring(buf, 0, 4) == 1
    waiter.join(WAIT_S)
    assert woke == [True] and native.load(buf, 4) == 0  # it left the count on the way out


def test_ring_without_sleepers_only_counts(be: Any) -> None:
    buf = bytearray(8)
    assert be.ring(buf, 0, 4) == 1 and be.ring(buf, 0, 4) == 2
    assert be.load(buf, 4) == 0
    assert be.wait(buf, 0, 1, 0, 0, 4) is True  # already differs
    with pytest.raises(ValueError):
        be.ring(buf, 0, 8)  # sleepers word outside the buffer


def test_spin_readable_polls_a_socket_without_consuming_it() -> None:
    if futex.native_backend is None:
        pytest.skip("fastenv._native is not built")
    import socket

    left, right = socket.socketpair()
    with left, right:
        start = time.monotonic()
        assert futex.native_backend.spin_readable(left, 2000) is False  # nothing came within 2 ms
        assert time.monotonic() - start >= 0.002
        right.send(b"x")
        assert futex.native_backend.spin_readable(left, 2000) is True
        assert left.recv(1) == b"x"  # polling left the byte where it was
        right.close()
        assert futex.native_backend.spin_readable(left, 2000) is True  # EOF is readable too
