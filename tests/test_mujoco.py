"""The MuJoCo stack-cube task with rendered cameras: Gymnasium API, remote = local, exact replay, examples.

The env's OpenGL context is bound to the thread that built it, so every
server here runs it with ``--env-thread dedicated`` (or ``main``), and the
tests show several clients in both modes, and the typed error for a render
from another thread. Skipped as a whole, with the reason, only where MuJoCo
is not installed or offscreen OpenGL cannot render here (``.ci/run``
installs both). Images are small (24×32 to 48×64) to keep the module fast on
two cores.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fastenv
from fastenv.errors import MissingDependency
from fastenv.examples.mujoco_render import GLThreadError, configure_gl
from fastenv.examples.mujoco_stack import StackCubeEnv, make_stack_cube
from fastenv.server_process import ServerProcess

from assertions import assert_same

configure_gl()  # before anything imports mujoco: it reads MUJOCO_GL once, at import
pytest.importorskip("mujoco", reason='MuJoCo is not installed (pip install "fastenv[sim]")')


def _offscreen_gl_problem() -> str | None:
    env = StackCubeEnv(height=8, width=8)
    try:
        env.reset(seed=0)  # the first render makes the OpenGL context
    except MissingDependency as exc:
        return str(exc)
    finally:
        env.close()
    return None


_GL_PROBLEM = _offscreen_gl_problem()
if _GL_PROBLEM is not None:
    pytest.skip(f"offscreen OpenGL cannot render here: {_GL_PROBLEM}", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
TARGET = "fastenv.examples.mujoco_stack:make_stack_cube"
SMALL = {"height": 48, "width": 64}
TIMEOUT = 60.0
DEDICATED = ("--env-thread", "dedicated")  # one thread per env: its OpenGL context's


def _actions(count: int, seed: int = 3) -> list[np.ndarray]:
    """Seeded actions that move the hand around and open and close the fingers."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (count, 4)).astype(np.float32)
    actions[:, 2] = np.where(np.arange(count) < count // 2, -1.0, 0.5)  # down onto the cubes, then up
    return list(actions)


def _owned(value: Any) -> Any:
    """A copy in which every array is owned (shared-memory views are reused after a few calls)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {key: _owned(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_owned(item) for item in value)
    return value


class RemoteGymEnv(gymnasium.Env):
    """A ``gymnasium.Env`` face over a :class:`fastenv.FastRemoteEnv`, so Gymnasium's checker can drive it.

    ``check_env`` insists on a ``gymnasium.Env`` instance and inspects
    ``unwrapped._np_random``: that is rebuilt from the served env's RNG
    state, which :meth:`StackCubeEnv.get_state` reports.
    """

    def __init__(self, remote: fastenv.FastRemoteEnv) -> None:
        self.remote = remote
        self.observation_space = remote.observation_space
        self.action_space = remote.action_space
        self.metadata = remote.metadata
        self.render_mode = remote.render_mode
        self.spec = remote.spec

    @property
    def _np_random(self) -> np.random.Generator:  # type: ignore[override]
        state = self.remote.get_state()["rng"]
        generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
        generator.bit_generator.state = state
        return generator

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        return self.remote.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        return self.remote.step(action)

    def render(self) -> Any:
        return self.remote.render()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One ``fastenv serve`` of the task (small images) for the module; every test resets it with a seed."""
    with ServerProcess(TARGET, DEDICATED, env_kwargs=SMALL, ready_timeout=TIMEOUT) as started:
        yield started


@pytest.fixture
def local() -> Iterator[StackCubeEnv]:
    env = StackCubeEnv(**SMALL)
    yield env
    env.close()


# ---------------------------------------------------------------- the env itself


@pytest.mark.parametrize("render_mode", [None, "rgb_array"])
def test_passes_gymnasium_check_env_locally(render_mode: str | None) -> None:
    env = gymnasium.make("fastenv/StackCube-v0", height=24, width=32, render_mode=render_mode)
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_observation_layout_and_rendering(local: StackCubeEnv) -> None:
    obs, info = local.reset(seed=0)
    assert list(obs) == ["front", "wrist", "gripper", "cubes"]
    assert obs["front"].shape == obs["wrist"].shape == (48, 64, 3) and obs["front"].dtype == np.uint8
    assert obs["gripper"].dtype == obs["cubes"].dtype == np.float32
    assert obs["front"].std() > 10  # a rendered scene, not a blank frame
    assert not np.array_equal(obs["front"], obs["wrist"])
    assert info == {"is_success": False}
    assert local.render() is None  # render_mode=None
    assert local.metadata["render_fps"] == 50 and local.dt == pytest.approx(0.02)


def test_seeds_place_the_cubes(local: StackCubeEnv) -> None:
    first = local.reset(seed=1)[0]["cubes"]
    again = local.reset(seed=1)[0]["cubes"]
    other = local.reset(seed=2)[0]["cubes"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_truncates_after_max_episode_steps() -> None:
    env = StackCubeEnv(cameras=(), max_episode_steps=3)
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(4, np.float32))[2:4] for _ in range(3)]
        assert flags == [(False, False), (False, False), (False, True)]
    finally:
        env.close()


def test_the_first_render_makes_the_gl_context_and_close_frees_it() -> None:
    threads = set(threading.enumerate())
    env = StackCubeEnv(height=16, width=16)
    assert not env._renderer.active  # building the env makes no OpenGL context
    env.reset(seed=0)
    assert env._renderer.active and not set(threading.enumerate()) - threads  # made here, on no thread of its own
    env.close()
    env.close()  # twice is fine
    assert not env._renderer.active
    with pytest.raises(gymnasium.error.ClosedEnvironmentError):
        env.step(np.zeros(4, np.float32))


def _on_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on a new thread: what it returned, or the exception it raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(fn(*args, **kwargs))
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, name="foreign")
    thread.start()
    thread.join(TIMEOUT)
    return outcome[0]


def test_rendering_on_another_thread_raises_the_typed_error() -> None:
    env = StackCubeEnv(height=16, width=16, render_mode="rgb_array")
    try:
        first = _on_thread(env.reset, seed=0)  # refused before any OpenGL context exists
        assert isinstance(first, GLThreadError) and isinstance(first, RuntimeError)
        assert "'foreign'" in str(first) and "'MainThread'" in str(first)
        assert "--env-thread main" in str(first) and "--env-thread dedicated" in str(first)
        assert 'env_thread="dedicated"' in str(first)
        env.reset(seed=0)  # the thread that built it renders
        for call in (lambda: env.step(np.zeros(4, np.float32)), env.render, lambda: env.render_state(env.get_state())):
            assert isinstance(_on_thread(call), GLThreadError)
        refused = _on_thread(env.close)  # the context exists: only its thread may free it
        assert isinstance(refused, GLThreadError) and "free its renderer" in str(refused)
        assert env.closed and env._renderer.active
    finally:
        env.close()
    assert not env._renderer.active


def test_an_env_that_never_renders_may_be_called_from_any_thread() -> None:
    env = StackCubeEnv(cameras=())
    try:
        obs, _ = _on_thread(env.reset, seed=0)
        assert list(obs) == ["gripper", "cubes"]
        assert len(_on_thread(env.step, np.zeros(4, np.float32))) == 5
    finally:
        _on_thread(env.close)
    assert not env._renderer.active


def test_missing_mujoco_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mujoco", None)  # what an uninstalled package looks like to `import`
    with pytest.raises(MissingDependency, match=r'pip install "fastenv\[sim\]"'):
        make_stack_cube(height=8, width=8)


def test_unusable_gl_backend_is_a_missing_dependency() -> None:
    code = (
        "from fastenv.examples.mujoco_stack import StackCubeEnv\n"
        "from fastenv.errors import MissingDependency\n"
        "env = StackCubeEnv(height=8, width=8)\n"
        "try:\n"
        "    env.reset(seed=0)\n"
        "except MissingDependency as exc:\n"
        "    print(exc)\n"
        "env.close()\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    environ["MUJOCO_GL"] = "glfw"  # a windowing backend, with no display to open a window on
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=TIMEOUT, env=environ
    )
    assert result.returncode == 0, result.stderr
    assert "offscreen rendering with MUJOCO_GL=glfw failed" in result.stdout
    assert "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0" in result.stdout


def test_importing_fastenv_registers_the_id_without_importing_mujoco() -> None:
    code = (
        "import sys, fastenv, gymnasium; "
        "assert 'mujoco' not in sys.modules, 'mujoco imported'; "
        "assert 'fastenv/StackCube-v0' in gymnasium.registry; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_set_state_refuses_a_foreign_state(local: StackCubeEnv) -> None:
    state = local.get_state()
    with pytest.raises(ValueError, match="does not fit"):
        local.set_state({**state, "physics": state["physics"][:-1]})


# ---------------------------------------------------------------- through fastenv


def test_passes_gymnasium_check_env_remotely(serve) -> None:
    kwargs = {"height": 24, "width": 32, "render_mode": "rgb_array"}
    started = serve("fastenv/StackCube-v0", "--env-thread", "main", env_kwargs=kwargs)
    with fastenv.FastRemoteEnv(started.address, timeout=TIMEOUT) as remote:
        assert remote.spec.id == "fastenv/StackCube-v0"
        check_env(RemoteGymEnv(remote))
        frame = remote.render()
        assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_remote_equals_local(server: ServerProcess, local: StackCubeEnv, transport: str) -> None:
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=TIMEOUT) as remote:
        assert remote.transport == transport
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space
        assert remote.metadata == local.metadata
        assert_same(remote.reset(seed=4), local.reset(seed=4))
        for action in _actions(25):
            assert_same(remote.step(action), local.step(action))  # images bit for bit, types included
        assert_same(remote.get_state(), local.get_state())
        assert remote.is_success() == local.is_success()


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_remote_states_replay_exactly_locally(server: ServerProcess, local: StackCubeEnv, transport: str) -> None:
    actions = _actions(30, seed=8)
    with fastenv.FastRemoteEnv(server.address, transport=transport, timeout=TIMEOUT, copy=True) as remote:
        obs, _ = remote.reset(seed=6)
        states, frames = [remote.get_state()], [obs]
        for action in actions:
            frames.append(remote.step(action)[0])
            states.append(remote.get_state())

    # Restore each remote state locally: the local renderer draws the server's pixels.
    for state, remote_obs in zip(states, frames):
        images = local.render_state(state)
        for camera, image in images.items():
            np.testing.assert_array_equal(image, remote_obs[camera])

    # Re-simulate from the first remote state with the same actions: bit-identical trajectory.
    local.set_state(states[0])
    for action, expected_state, expected_obs in zip(actions, states[1:], frames[1:]):
        obs = local.step(action)[0]
        got = local.get_state()
        for key in ("physics", "qpos", "qvel"):
            assert got[key].tobytes() == expected_state[key].tobytes(), key
        assert got["time"] == expected_state["time"] and got["steps"] == expected_state["steps"]
        assert_same(obs, expected_obs)


TINY = {"height": 24, "width": 32}


def _local_run(seed: int, actions: list[np.ndarray]) -> list[Any]:
    """What a local env returns for ``reset(seed)`` and then ``actions`` (owned copies)."""
    env = StackCubeEnv(**TINY)
    try:
        return [_owned(env.reset(seed=seed))] + [_owned(env.step(action)) for action in actions]
    finally:
        env.close()


def _client(address: str, transport: str, seed: int, actions: list[np.ndarray], out: dict[int, Any]) -> None:
    """One client's run: its results, or the exception that ended it, under ``out[seed]``."""
    try:
        with fastenv.FastRemoteEnv(address, transport=transport, timeout=TIMEOUT) as remote:
            out[seed] = [_owned(remote.reset(seed=seed))] + [_owned(remote.step(action)) for action in actions]
    except BaseException as exc:  # reported by the test
        out[seed] = exc


@pytest.mark.parametrize("transport", ["shm", "tcp"])
@pytest.mark.parametrize("mode", ["shared", "per-client"])
@pytest.mark.parametrize("env_thread", ["dedicated", "main"])
def test_several_clients_of_an_env_served_on_its_thread(serve, env_thread: str, mode: str, transport: str) -> None:
    kwargs = {**TINY, "render_mode": "rgb_array"}
    started = serve(TARGET, "--env-thread", env_thread, "--mode", mode, env_kwargs=kwargs)
    actions = _actions(6, seed=5)
    out: dict[int, Any] = {}
    clients = [
        threading.Thread(target=_client, args=(started.address, transport, seed, actions, out)) for seed in range(3)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(2 * TIMEOUT)
    assert sorted(out) == [0, 1, 2]
    failed = {seed: got for seed, got in out.items() if isinstance(got, BaseException)}
    assert not failed, failed
    for seed, got in out.items():
        if mode == "per-client":  # each client has an env of its own: exactly a local env's run
            assert_same(got, _local_run(seed, actions))
        else:  # the clients took turns on one env: rendered frames of its one scene
            for result in got:
                assert result[0]["front"].shape == (24, 32, 3) and result[0]["front"].std() > 10
    with fastenv.FastRemoteEnv(started.address, transport=transport, timeout=TIMEOUT) as remote:
        assert_same(_owned(remote.reset(seed=7)), _local_run(7, [])[0])
        assert remote.render().shape == (24, 32, 3)


@pytest.mark.parametrize("mode", ["shared", "per-client"])
def test_an_env_server_with_a_dedicated_env_thread_serves_it(mode: str) -> None:
    actions = _actions(4, seed=2)
    with fastenv.EnvServer(factory=lambda: StackCubeEnv(**TINY), mode=mode, env_thread="dedicated") as server:
        address = server.start()
        out: dict[int, Any] = {}
        clients = [threading.Thread(target=_client, args=(address, "shm", seed, actions, out)) for seed in range(2)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(2 * TIMEOUT)
    failed = {seed: got for seed, got in out.items() if isinstance(got, BaseException)}
    assert sorted(out) == [0, 1] and not failed, failed
    if mode == "per-client":
        for seed, got in out.items():
            assert_same(got, _local_run(seed, actions))


@pytest.mark.parametrize("mode", ["shared", "per-client"])
def test_served_without_an_env_thread_the_error_says_how_to_serve_it(serve, mode: str) -> None:
    started = serve(TARGET, "--mode", mode, env_kwargs=TINY)  # --env-thread caller, the default
    with fastenv.FastRemoteEnv(started.address, timeout=TIMEOUT) as remote:
        with pytest.raises(fastenv.RemoteEnvError, match="--env-thread main") as raised:
            remote.reset(seed=0)
            remote.step(np.zeros(4, np.float32))  # in case the reset came on the thread that built the env
    assert raised.value.remote_type.endswith("GLThreadError")


def test_remote_set_state_rewinds(server: ServerProcess) -> None:
    actions = _actions(12, seed=11)
    with fastenv.FastRemoteEnv(server.address, timeout=TIMEOUT, copy=True) as remote:
        remote.reset(seed=9)
        for action in actions[:4]:
            remote.step(action)
        saved = remote.get_state()
        first = [remote.step(action) for action in actions[4:]]
        remote.set_state(saved)
        assert_same([remote.step(action) for action in actions[4:]], first)
        with pytest.raises(ValueError):  # a RemoteEnvError that is also a ValueError
            remote.set_state({**saved, "signature": 1})


def test_bench_workloads_serve_the_task() -> None:
    from fastenv.bench.workloads import PAYLOADS, get_workload, observation_nbytes

    assert get_workload("mujoco").env_kwargs["height"] == 240 and "mujoco" not in PAYLOADS
    workload = get_workload("mujoco-8x16")
    assert workload.target == "fastenv.examples.mujoco_stack:StackCubeEnv" and workload.action_dim == 4
    assert observation_nbytes("mujoco-8x16") == 2 * 8 * 16 * 3 + (5 + 14) * 4
    with pytest.raises(KeyError, match=r"mujoco\[-<H>x<W>\]"):
        get_workload("mujoco-0x16")


# ---------------------------------------------------------------- the examples


def _run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _read_png(path: Path) -> np.ndarray:
    """Decode the 8-bit RGB, filter-0 PNG that the example writes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        (size,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + size]
        assert struct.unpack(">I", data[offset + 8 + size : offset + 12 + size])[0] == zlib.crc32(kind + payload)
        chunks[kind] = chunks.get(kind, b"") + payload
        offset += 12 + size
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert not rows[:, 0].any()  # filter type 0 on every row
    return rows[:, 1:].reshape(height, width, 3)


def test_example_remote_replay(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    result = _run_example(
        "remote_replay.py", "--steps", "30", "--height", "48", "--width", "64", "--tiles", "4",
        "--out", str(sheet), "--strict",
    )
    assert "max abs pixel difference from the server's frames = 0" in result.stdout
    assert "bit-identical at 30 of 30 steps" in result.stdout
    image = _read_png(sheet)
    assert image.shape == (2 * 48 + 2, 3 * (2 * 64) + 2 * 2, 3)  # 4 tiles of front|wrist, 3 a row, 2 px gaps
    assert image.std() > 10


def test_example_headless_control() -> None:
    result = _run_example("headless_control.py", "--episodes", "1", "--height", "32", "--width", "32")
    assert "1/1 episodes stacked" in result.stdout
    assert "steps/s" in result.stdout


def test_example_own_env() -> None:
    result = _run_example("own_env.py")
    assert "over shm" in result.stdout and "set_state(saved) -> back at" in result.stdout
