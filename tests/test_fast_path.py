"""The shared-memory fast path: ``fastenv._layout.put`` with a bell and ``take``.

Unit tests drive the two C functions on a real mapping with real threads
(the waiter really sleeps in FUTEX_WAIT before it is rung); the end-to-end
tests run a real ``fastenv serve`` and check that a client's steps go through
``take`` and still return exactly what the env returns.
"""

from __future__ import annotations

import mmap
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from assertions import assert_same

import fastenv
from fastenv import native
from fastenv.examples import VectorEnv
from fastenv.layout import Layout, copy_strided, native_put, native_take
from fastenv.layout_spec import infer_spec
from fastenv.shm import arena as arena_module
from fastenv.shm import client as shm_client
from fastenv.shm import futex
from fastenv.shm import plane as plane_module
from fastenv.shm import worker as shm_worker
from fastenv.shm.arena import CALL, ENVELOPE, FAST, RESULT

pytestmark = pytest.mark.skipif(native_take is None, reason="fastenv._layout / fastenv._native are not built")


@pytest.fixture(autouse=True)
def native_backend() -> Iterator[None]:
    """Every test here runs on the native backend (doorbells, packer and fast path), restored after."""
    try:
        previous = native.select_backend("native")
    except native.NativeBackendError as exc:
        pytest.skip(str(exc))
    yield
    native.select_backend(previous)

BELL = 64  # counter; the sleepers word follows it
CONSUMED = 72
REGION = 128
LAYOUT_ID = 3
WAIT_S = 10.0


def _step_result() -> Any:
    return (np.arange(4, dtype=np.float32), -0.5, False, True, {"frame": 2})


@pytest.fixture
def buf() -> Any:
    with mmap.mmap(-1, 64 * 1024) as mapping:
        yield mapping


def _prepared(buffer: Any, value: Any) -> tuple[Layout, dict[int, tuple]]:
    layout = Layout(infer_spec(value), native=True)
    views = layout.views(buffer, REGION + arena_module.FAST_DATA)
    return layout, {LAYOUT_ID: (layout.program, views, layout)}


def _put(buffer: Any, layout: Layout, views: list, value: Any, seq: int, bell: int = BELL) -> bool:
    return native_put(layout.program, buffer, REGION, value, views, copy_strided, RESULT, LAYOUT_ID, seq, bell)


def test_put_rings_and_wakes_a_take_asleep_in_the_kernel(buf: Any) -> None:
    value = _step_result()
    layout, prepared = _prepared(buf, value)
    got: list[Any] = []
    waiter = threading.Thread(
        target=lambda: got.append(native_take(buf, BELL, 0, 0, WAIT_S, REGION, prepared, False, CONSUMED))
    )
    waiter.start()
    deadline = time.monotonic() + WAIT_S
    while futex.native_backend.load(buf, BELL + 4) != 1:  # ready signal: the waiter counts itself asleep
        assert time.monotonic() < deadline, "take never went to sleep"
        time.sleep(0.001)
    assert _put(buf, layout, prepared[LAYOUT_ID][1], value, seq=7)
    waiter.join(WAIT_S)
    assert not waiter.is_alive()
    counter, kind, flags, seq, taken, result, slept = got[0]
    assert (counter, kind, flags, seq, taken, slept) == (1, FAST, RESULT, 7, True, True)
    assert_same(result, value)
    assert futex.native_backend.load(buf, CONSUMED) == 7
    assert futex.native_backend.load(buf, BELL + 4) == 0  # nobody asleep any more


def test_put_without_a_bell_does_not_ring_and_a_mismatch_rings_nothing(buf: Any) -> None:
    value = _step_result()
    layout, prepared = _prepared(buf, value)
    views = prepared[LAYOUT_ID][1]
    assert native_put(layout.program, buf, REGION, value, views, copy_strided, RESULT, LAYOUT_ID, 1)
    assert futex.native_backend.load(buf, BELL) == 0
    assert not _put(buf, layout, views, (np.zeros(5, np.float32), -0.5, False, True, {"frame": 2}), seq=2)
    assert futex.native_backend.load(buf, BELL) == 0


def test_take_times_out_with_none(buf: Any) -> None:
    _, prepared = _prepared(buf, _step_result())
    assert native_take(buf, BELL, 0, 0, 0.0, REGION, prepared, False, -1) is None
    started = time.monotonic()
    assert native_take(buf, BELL, 0, 50, 0.02, REGION, prepared, False, -1) is None
    assert time.monotonic() - started >= 0.02


@pytest.mark.parametrize("spin_us", [0, 1_000_000], ids=["asleep", "spinning"])
def test_a_poke_ends_a_take_without_a_request(buf: Any, spin_us: int) -> None:
    """A take given a poke word returns None once another thread changes it (then wakes the doorbell's sleepers)."""
    _, prepared = _prepared(buf, _step_result())
    with mmap.mmap(-1, mmap.PAGESIZE) as page:
        got: list[Any] = []
        waiter = threading.Thread(
            target=lambda: got.append(
                native_take(buf, BELL, 0, spin_us, WAIT_S, REGION, prepared, False, CONSUMED, page, 8, 0)
            )
        )
        started = time.monotonic()
        waiter.start()
        if spin_us == 0:  # wait until it sleeps in the kernel, counted in the sleepers word
            while futex.native_backend.load(buf, BELL + 4) != 1:
                assert time.monotonic() - started < WAIT_S, "take never went to sleep"
                time.sleep(0.001)
        futex.native_backend.add(page, 8, 1)
        while waiter.is_alive() and time.monotonic() - started < WAIT_S:
            futex.native_backend.wake(buf, BELL, 1)  # a wake can land before the sleep: repeat, as pokers do
            waiter.join(0.01)
        assert not waiter.is_alive() and got == [None]
        assert time.monotonic() - started < WAIT_S / 2
        assert futex.native_backend.load(buf, BELL) == 0 and futex.native_backend.load(buf, CONSUMED) == 0
        # An unchanged poke word does not end the wait; a changed one before the wait ends it at once.
        assert native_take(buf, BELL, 0, 0, 0.02, REGION, prepared, False, -1, page, 8, 1) is None
        before = time.monotonic()
        assert native_take(buf, BELL, 0, 0, WAIT_S, REGION, prepared, False, -1, page, 8, 0) is None
        assert time.monotonic() - before < WAIT_S / 2
        with pytest.raises(ValueError):
            native_take(buf, BELL, 0, 0, 0.01, REGION, prepared, False, -1, page, 6, 0)  # misaligned


def test_take_leaves_unknown_layouts_and_other_envelopes_to_the_caller(buf: Any) -> None:
    value = _step_result()
    layout, prepared = _prepared(buf, value)
    assert _put(buf, layout, prepared[LAYOUT_ID][1], value, seq=4)
    assert native_take(buf, BELL, 0, 0, WAIT_S, REGION, {}, False, CONSUMED) == (1, FAST, RESULT, 4, False, None, False)
    ENVELOPE.pack_into(buf, REGION, CALL, 0, 0, 10, 5)  # a general-codec envelope
    futex.native_backend.ring(buf, BELL, BELL + 4)
    assert native_take(buf, BELL, 1, 0, WAIT_S, REGION, prepared, False, CONSUMED) == (2, CALL, 0, 5, False, None, False)
    assert futex.native_backend.load(buf, CONSUMED) == 0  # nothing taken, nothing marked consumed


def test_take_returns_views_or_owned_copies(buf: Any) -> None:
    value = _step_result()
    layout, prepared = _prepared(buf, value)
    view = prepared[LAYOUT_ID][1][0]
    assert _put(buf, layout, prepared[LAYOUT_ID][1], value, seq=1)
    shared = native_take(buf, BELL, 0, 0, WAIT_S, REGION, prepared, False, -1)[5]
    owned = native_take(buf, BELL, 0, 0, WAIT_S, REGION, prepared, True, -1)[5]
    assert shared[0] is view
    assert not np.shares_memory(owned[0], view)
    view[:] = 99.0  # the next reply overwrites the slot: only the copy keeps its values
    np.testing.assert_array_equal(owned[0], value[0])
    np.testing.assert_array_equal(shared[0], np.full(4, 99.0, np.float32))


@pytest.mark.parametrize(
    ("bell", "region", "consumed"),
    [(66, REGION, -1), (65536 - 4, REGION, -1), (BELL, 65536, -1), (BELL, REGION, 74), (BELL, REGION, 65536)],
    ids=["misaligned-bell", "bell-past-end", "region-past-end", "misaligned-consumed", "consumed-past-end"],
)
def test_take_refuses_offsets_outside_the_buffer(buf: Any, bell: int, region: int, consumed: int) -> None:
    _, prepared = _prepared(buf, _step_result())
    with pytest.raises(ValueError):
        native_take(buf, bell, 0, 0, 0.0, region, prepared, False, consumed)


def test_take_and_put_refuse_bad_arguments(buf: Any) -> None:
    value = _step_result()
    layout, prepared = _prepared(buf, value)
    with pytest.raises(TypeError):
        native_take(buf, BELL, 0, 0, 0.0, REGION, list(prepared.items()), False, -1)
    with pytest.raises(ValueError):
        native_take(buf, BELL, 2**32, 0, 0.0, REGION, prepared, False, -1)
    with pytest.raises(BufferError):
        native_take(bytes(4096), BELL, 0, 0, 0.0, REGION, prepared, False, -1)  # read-only
    with pytest.raises(ValueError):
        _put(buf, layout, prepared[LAYOUT_ID][1], value, seq=1, bell=65536 - 4)
    futex.native_backend.store(buf, BELL, 0)
    futex.native_backend.ring(buf, BELL, BELL + 4)
    with pytest.raises(ValueError, match="layouts entries"):
        native_take(buf, BELL, 0, 0, 0.0, REGION, {LAYOUT_ID: "not a tuple"}, False, -1)


# ---------------------------------------------------------------- end to end


@pytest.fixture
def counted_takes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the client's calls of take() that returned a taken reply (the real function runs)."""
    taken: list[int] = []
    real = shm_client.native_take

    def counting(*args: Any) -> Any:
        got = real(*args)
        if got is not None and got[4]:
            taken.append(got[3])
        return got

    monkeypatch.setenv("FASTENV_NATIVE", "1")  # the server's backend; this process's is native_backend's
    monkeypatch.setattr(shm_client, "native_take", counting)
    return taken


def test_steps_take_the_fast_path_and_return_what_the_env_returns(serve, counted_takes: list[int]) -> None:
    server = serve("fastenv.examples:VectorEnv")
    local = VectorEnv()
    rng = np.random.default_rng(0)
    with fastenv.FastRemoteEnv(server.address) as env:
        assert env.transport == "shm"
        assert_same(env.reset(seed=3), local.reset(seed=3))
        for _ in range(50):
            action = rng.uniform(-1, 1, 4).astype(np.float32)
            assert_same(env.step(action), local.step(action))
        slots = env._session.transport.slots
    # The first step announces the layouts; the first reply into each slot prepares that
    # slot's views (general path). Every later step is taken in C.
    assert len(counted_takes) >= 50 - 1 - slots


def test_structure_changes_fall_back_and_stay_exact(serve, test_env_target, counted_takes: list[int]) -> None:
    server = serve(test_env_target("Growing"))
    sizes = [4] * 8 + [16] * 8 + [3] * 8 + [4] * 8
    with fastenv.FastRemoteEnv(server.address) as env:
        env.reset()
        for n in sizes:
            obs, _, _, _, info = env.step(n)
            np.testing.assert_array_equal(obs, np.arange(n, dtype=np.uint32))
            assert info == {"n": n}
        big = np.arange(100_000, dtype=np.float64)  # a large action echoed back: the arena grows
        for _ in range(3):
            obs, reward, *_ = env.step(big)
            np.testing.assert_array_equal(obs, big)
            assert reward == float(big.sum())
        obs, *_ = env.step(4)
        np.testing.assert_array_equal(obs, np.arange(4, dtype=np.uint32))
    assert len(counted_takes) >= 4  # repeated structures went through take() once their slots knew them


def test_a_failing_fast_path_on_the_server_answers_the_request_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A take() that raises on the server (say, MemoryError copying the action) leaves the request to the long way."""
    from fastenv import codec
    from fastenv.shm.arena import Arena

    real = shm_worker.native_take  # the planes use native doorbells: see native_backend
    failing = {5, 9}  # request sequence numbers whose take() always fails on the server

    def flaky(*args: Any) -> Any:
        if args[8] >= 0:  # the server's take (it marks requests consumed)
            flaky.server_calls += 1
            peek = real(*args[:6], {}, False, -1)  # wait for the ring, take nothing
            if peek is not None and peek[3] in failing:
                raise MemoryError("injected")
        return real(*args)

    flaky.server_calls = 0
    monkeypatch.setattr(shm_worker, "native_take", flaky)
    env, local = VectorEnv(), VectorEnv()
    calls: list[str] = []

    def execute(name: str, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        calls.append(name)
        return True, getattr(env, name)(*args, **kwargs)

    with Arena.create(plane_module.DEFAULT_SHAPE) as arena, Arena.attach(arena.name) as attached:
        worker = shm_worker.ShmServerWorker(arena, execute, limits=codec.DEFAULT_LIMITS, max_message_bytes=1 << 20)
        worker.start()
        try:
            client = shm_client.ShmClientPlane(attached, lambda: None)
            assert_same(client.call(("reset", (), {"seed": 1}), WAIT_S, "reset()"), (True, local.reset(seed=1)))
            for step in range(12):
                action = np.full(4, step / 12, np.float32)
                ok, value = client.call(("step", (action,), {}), WAIT_S, "step()")
                assert ok
                assert_same(value, local.step(action))
            client.close()
        finally:
            worker.stop()
    assert calls == ["reset"] + ["step"] * 12  # every request ran exactly once
    assert flaky.server_calls >= 13
