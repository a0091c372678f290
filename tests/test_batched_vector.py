"""FastVectorEnv.batched: a Gymnasium VectorEnv over one served env that is batched inside (Isaac Lab's shape).

The served env is :class:`fastenv.examples.isaac_shape.IsaacShapeEnv` in a real
``fastenv serve`` process, reached on every route of :mod:`tests.routes`; the
same env built here, with the same seeds and actions, is the reference: what
the adapter returns must equal what the local env returns (types, dtypes,
shapes, values, observation groups, autoreset in both modes, the state's
dataclasses). The numpy backend needs nothing but numpy; the torch backend
checks that tensors travel as tensors.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, VectorEnv

import fastenv
from fastenv import native
from fastenv.errors import ClientClosedError, IncompatibleEnvsError
from fastenv.examples import isaac_shape
from fastenv.examples.isaac_shape import TARGET, IsaacShapeEnv, ObjectState, RobotState, SceneState
from fastenv.examples.replay_remote import max_abs_difference
from fastenv.server_process import ServerProcess
from fastenv.vector.batched import FastBatchedVectorEnv, parse_autoreset_mode
from tests.routes import ROUTES, Route

T = 20.0  # bound on every blocking call
ROOT = Path(__file__).resolve().parent.parent
BATCHED_ENVS = Path(__file__).resolve().parent / "envs" / "batched_envs.py"
MODES = ("same_step", "next_step")
ENV_KWARGS = {"num_envs": 8, "max_episode_length": 16}  # rows end at different steps, both ways, within 40 steps
STEPS = 40


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


needs_torch = pytest.mark.skipif(not _has_torch(), reason="needs torch")


def _case(route: str, mode: str, backend: str) -> Any:
    marks = [needs_torch] if backend == "torch" else []
    return pytest.param((route, mode, backend), id=f"{route}-{mode}-{backend}", marks=marks)


# numpy: every route, both autoreset modes. torch (a server that imports it takes seconds to start; the
# tensor conformance suite covers tensors on every route): each kind of data plane in Isaac Lab's mode,
# Gymnasium's on shared memory.
CASES = [_case(route, mode, "numpy") for route in ROUTES for mode in MODES]
CASES += [_case(route, "same_step", "torch") for route in ("shm", "tcp", "control")]
CASES += [_case("shm", "next_step", "torch")]


class BatchedRoute(Route):
    """A route of :mod:`tests.routes` serving the Isaac Lab-shaped env (on the main thread) instead of the counter."""

    def __init__(self, name: str, workdir: Path, env_kwargs: dict[str, Any]) -> None:
        super().__init__(name, workdir, ("--env-thread", "main"))
        self.env_kwargs = dict(env_kwargs)  # the counter's marker_dir does not apply

    def start_server(self) -> ServerProcess:
        extra_env = {"FASTENV_NATIVE": "0"} if self.name == "shm-python" else None
        self.server = ServerProcess(TARGET, self.server_args, env_kwargs=self.env_kwargs, extra_env=extra_env)
        self.server.start()
        self._stack.callback(self.server.stop)
        return self.server


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchedRoute]:
    """The batched env served on one route with one autoreset mode and backend (``request.param``)."""
    route_name, mode, backend = request.param
    kwargs = {**ENV_KWARGS, "autoreset_mode": mode, "backend": backend}
    with BatchedRoute(route_name, tmp_path_factory.mktemp(route_name), kwargs) as route:
        route.start_server()
        yield route


@pytest.fixture
def open_batched(served: BatchedRoute) -> Iterator[Any]:
    """``open_batched(**options)``: ``FastVectorEnv.batched`` on the served route, closed at teardown."""
    previous = native.select_backend(served.client_backend) if served.client_backend is not None else None
    made: list[FastBatchedVectorEnv] = []

    def make(**options: Any) -> FastBatchedVectorEnv:
        envs = fastenv.FastVectorEnv.batched(served.address, **{**served.client_options(), "timeout": T, **options})
        made.append(envs)
        served.check_route(envs.remote)
        return envs

    yield make
    for envs in made:
        envs.close()
    if previous is not None:
        native.select_backend(previous)


# --------------------------------------------------------------------------- helpers


def assert_same(got: Any, expected: Any, where: str = "value") -> None:
    """``got`` equals ``expected`` exactly: same types (tensors stay tensors), dtypes, shapes, values, keys."""
    assert type(got) is type(expected), f"{where}: {type(got)} != {type(expected)}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), f"{where}: keys {list(got)} != {list(expected)}"
        for key in expected:
            assert_same(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), f"{where}: length {len(got)} != {len(expected)}"
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, f"{where}[{index}]")
    elif dataclasses.is_dataclass(expected):
        for field in dataclasses.fields(expected):
            assert_same(getattr(got, field.name), getattr(expected, field.name), f"{where}.{field.name}")
    elif isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.shape == expected.shape, (where, got.dtype, got.shape)
        np.testing.assert_array_equal(got, expected, err_msg=where)
    elif type(expected).__module__.startswith("torch"):
        import torch

        assert got.dtype == expected.dtype and got.shape == expected.shape, (where, got.dtype, got.shape)
        assert got.device == expected.device, (where, got.device)
        assert torch.equal(got, expected), where
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def random_actions(backend: str, steps: int = STEPS, rows: int = 8, dof: int = 7, seed: int = 0) -> list[Any]:
    """Reproducible actions, a little past [-1, 1] (the env clips), as arrays or tensors."""
    rng = np.random.default_rng(seed)
    actions = [rng.uniform(-1.2, 1.2, (rows, dof)).astype(np.float32) for _ in range(steps)]
    if backend == "torch":
        import torch

        actions = [torch.from_numpy(action) for action in actions]
    return actions


def done_rows(terminated: Any, truncated: Any) -> np.ndarray:
    return np.asarray(terminated) | np.asarray(truncated)


# --------------------------------------------------------------------------- the adapter against the local env


@pytest.mark.parametrize("served", CASES, indirect=True)
def test_batched_env_matches_the_local_env(served: BatchedRoute, open_batched: Any) -> None:
    kwargs = served.env_kwargs
    local = IsaacShapeEnv(**kwargs)
    envs = open_batched()
    assert isinstance(envs, FastBatchedVectorEnv) and isinstance(envs, VectorEnv)
    assert envs.num_envs == local.num_envs == 8
    assert envs.single_observation_space == local.single_observation_space
    assert envs.single_action_space == local.single_action_space
    assert envs.observation_space == local.observation_space
    assert envs.action_space == local.action_space
    assert envs.metadata["autoreset_mode"] is local.metadata["autoreset_mode"] is envs.autoreset_mode
    assert envs.autoreset_mode is AutoresetMode(
        {"same_step": "SameStep", "next_step": "NextStep"}[kwargs["autoreset_mode"]]
    )

    assert_same(envs.reset(seed=11), local.reset(seed=11), "reset")
    ended_at: dict[int, list[int]] = {}
    terminated_rows = truncated_rows = 0
    for step, actions in enumerate(random_actions(kwargs["backend"])):
        expected = local.step(actions)
        got = envs.step(actions)
        assert_same(got, expected, f"step {step}")
        obs = got[0]
        assert set(obs) == {"policy", "critic"}
        terminated, truncated = np.asarray(expected[2]), np.asarray(expected[3])
        terminated_rows += int(terminated.sum())
        truncated_rows += int(truncated.sum())
        for row in np.flatnonzero(terminated | truncated):
            ended_at.setdefault(int(row), []).append(step)
    # autoreset mattered: rows ended, by both flags, at different steps, some more than once
    assert terminated_rows and truncated_rows, (terminated_rows, truncated_rows)
    assert len({steps[0] for steps in ended_at.values()}) > 1, ended_at
    assert any(len(steps) > 1 for steps in ended_at.values()), ended_at

    state = envs.call("get_state")
    assert type(state) is SceneState
    assert type(state.robots["franka"]) is RobotState and type(state.objects["cube"]) is ObjectState
    assert_same(state, local.get_state(), "state")
    # a reset with a seed starts the same episodes again
    assert_same(envs.reset(seed=11), local.reset(seed=11), "second reset")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device (none here)")
@pytest.mark.parametrize("route_name", ["shm", "tcp"])
def test_a_batched_env_on_a_gpu_matches_the_local_env(route_name: str, tmp_path: Path) -> None:
    """The env steps on the GPU in the server, the client places what it receives on the GPU: equal to local."""
    import torch

    kwargs = {**ENV_KWARGS, "autoreset_mode": "same_step", "backend": "torch", "device": "cuda:0"}
    local = IsaacShapeEnv(**kwargs)
    with BatchedRoute(route_name, tmp_path, kwargs) as route:
        route.start_server()
        with fastenv.FastVectorEnv.batched(route.address, **route.client_options(), timeout=T, device="cuda:0") as envs:
            route.check_route(envs.remote)
            assert_same(envs.reset(seed=5), local.reset(seed=5), "reset")
            ended = 0
            for step, actions in enumerate(random_actions("torch")):
                actions = actions.to("cuda:0")
                expected = local.step(actions)
                assert_same(envs.step(actions), expected, f"step {step}")
                ended += int(torch.count_nonzero(expected[2] | expected[3]))
            assert ended, "no episode ended"
            state = envs.call("get_state")
            assert type(state) is SceneState
            assert_same(state, local.get_state(), "state")


@pytest.mark.parametrize("served", [CASES[0]], indirect=True)
def test_step_async_and_the_closed_env(served: BatchedRoute, open_batched: Any) -> None:
    local = IsaacShapeEnv(**served.env_kwargs)
    envs = open_batched()
    assert_same(envs.reset(seed=3), local.reset(seed=3))
    for actions in random_actions("numpy", steps=5):
        envs.step_async(actions)
        with pytest.raises(fastenv.AlreadyPendingError):
            envs.step_async(actions)
        assert_same(envs.step_wait(timeout=T), local.step(actions))
    with pytest.raises(fastenv.NoPendingCallError):
        envs.step_wait(timeout=T)
    assert envs.get_attr("max_episode_length") == 16
    assert "FastBatchedVectorEnv(num_envs=8" in repr(envs)
    envs.close()
    envs.close()  # idempotent
    with pytest.raises(ClientClosedError):
        envs.step(random_actions("numpy", steps=1)[0])


def test_a_plain_env_is_refused(serve: Any) -> None:
    server = serve("fastenv.examples:VectorEnv")
    with pytest.raises(IncompatibleEnvsError, match="not batched"):
        fastenv.FastVectorEnv.batched(server.address, timeout=T)
    bad = serve(f"{BATCHED_ENVS}:BadNumEnvs", env_kwargs={"num_envs": 2})
    with pytest.raises(IncompatibleEnvsError, match="num_envs='many'"):
        FastBatchedVectorEnv(bad.address, timeout=T)


def test_an_env_that_does_not_say_how_it_autoresets(serve: Any) -> None:
    server = serve(f"{BATCHED_ENVS}:UndeclaredAutoreset", env_kwargs={"num_envs": 2})
    with pytest.raises(IncompatibleEnvsError, match="autoreset_mode="):
        fastenv.FastVectorEnv.batched(server.address, timeout=T)
    with fastenv.FastVectorEnv.batched(server.address, timeout=T, autoreset_mode="same_step") as envs:
        assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        obs, _ = envs.reset(seed=0)
        assert obs["policy"].shape == (2, 17)
    with pytest.raises(TypeError, match="vector="):
        fastenv.FastVectorEnv.batched(server.address, timeout=T, vector=True)


def test_autoreset_mode_spellings() -> None:
    for spelling in ("same_step", "SAME_STEP", "SameStep", AutoresetMode.SAME_STEP):
        assert parse_autoreset_mode(spelling) is AutoresetMode.SAME_STEP
    assert parse_autoreset_mode("next_step") is AutoresetMode.NEXT_STEP
    with pytest.raises(ValueError, match="not an autoreset mode"):
        parse_autoreset_mode("sometimes")


def test_public_names() -> None:
    assert fastenv.FastBatchedVectorEnv is FastBatchedVectorEnv
    assert fastenv.vector.FastBatchedVectorEnv is FastBatchedVectorEnv


# --------------------------------------------------------------------------- the example env itself


BACKENDS = ["numpy", pytest.param("torch", marks=needs_torch)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_example_env_is_deterministic_and_restores_its_state(backend: str) -> None:
    a, b = IsaacShapeEnv(**ENV_KWARGS, backend=backend), IsaacShapeEnv(**ENV_KWARGS, backend=backend)
    assert_same(a.reset(seed=5), b.reset(seed=5))
    actions = random_actions(backend, steps=20)
    for action in actions[:10]:
        assert_same(a.step(action), b.step(action))
    saved = a.get_state()
    later = [a.step(action) for action in actions[10:]]
    b.set_state(saved)  # b's generator is where a's was: the continuation matches, resets included
    assert_same(b.get_state(), saved)
    assert_same([b.step(action) for action in actions[10:]], later)
    assert_same(b.get_state(), a.get_state())
    assert max_abs_difference(b.get_state(), a.get_state()) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_example_env_autoreset_modes(backend: str) -> None:
    """Same seed, same actions: until the first episode ends both modes agree; then each resets its own way."""
    same = IsaacShapeEnv(**ENV_KWARGS, backend=backend, autoreset_mode="same_step")
    nxt = IsaacShapeEnv(**ENV_KWARGS, backend=backend, autoreset_mode="next_step")
    assert_same(same.reset(seed=2), nxt.reset(seed=2))
    actions = random_actions(backend)
    for step, action in enumerate(actions):
        obs, reward, terminated, truncated, extras = same.step(action)
        n_obs, n_reward, n_terminated, n_truncated, n_extras = nxt.step(action)
        assert_same((reward, terminated, truncated), (n_reward, n_terminated, n_truncated))
        assert set(n_extras) == {"time_outs"} and set(extras) == {"final_obs", "final_mask", "time_outs"}
        done = done_rows(terminated, truncated)
        assert_same(extras["final_mask"], terminated | truncated)
        if not done.any():
            assert_same(obs, n_obs)
            continue
        # same step: the final observations in extras, the new episode's in obs
        assert_same(extras["final_obs"], n_obs)
        assert (np.asarray(same.get_state().time)[done] == 0).all()
        assert (np.asarray(nxt.get_state().reset_pending) == done).all()
        # next step: the done rows come back reset, reward 0, not done; the other rows step on
        n_obs, n_reward, n_terminated, n_truncated, _ = nxt.step(actions[step + 1])
        assert not np.asarray(n_terminated)[done].any() and not np.asarray(n_truncated)[done].any()
        assert (np.asarray(n_reward)[done] == 0).all()
        for group in ("policy", "critic"):  # the resets drew the same numbers in both envs
            np.testing.assert_array_equal(np.asarray(n_obs[group])[done], np.asarray(obs[group])[done])
        assert (np.asarray(nxt.get_state().time)[done] == 0).all()
        break
    else:
        pytest.fail("no episode ended")


def test_example_env_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="autoreset_mode"):
        IsaacShapeEnv(autoreset_mode="whenever")
    with pytest.raises(ValueError, match="backend"):
        IsaacShapeEnv(backend="jax")
    with pytest.raises(ValueError, match="device"):
        IsaacShapeEnv(backend="numpy", device="cuda:0")
    env = IsaacShapeEnv(4, backend="numpy")
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((3, 7), np.float32))
    assert isaac_shape.make_env(num_envs=3, backend="numpy").num_envs == 3


def test_max_abs_difference_sees_differences() -> None:
    env = IsaacShapeEnv(4, backend="numpy")
    state = env.get_state()
    assert max_abs_difference(state, env.get_state()) == 0
    changed = env.get_state()
    changed.robots["franka"].dof_pos[2, 3] += 0.25
    assert max_abs_difference(changed, state) == pytest.approx(0.25, rel=1e-6)
    rows = np.array([True, True, False, True])
    assert max_abs_difference(changed, state, rows) == 0
    changed.time = changed.time.astype(np.int32)
    assert max_abs_difference(changed, state) == float("inf")


# --------------------------------------------------------------------------- the replay script


@pytest.mark.parametrize(
    ("backend", "mode"), [("numpy", "same_step"), ("numpy", "next_step"), pytest.param("torch", "same_step", marks=needs_torch)]
)
def test_replay_script_reports_no_difference(backend: str, mode: str) -> None:
    command = [
        sys.executable, "-m", "fastenv.examples.replay_remote",
        "--steps", "30", "--num-envs", "16", "--max-episode-length", "12",
        "--backend", backend, "--autoreset-mode", mode, "--timeout", str(T),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "max abs difference = 0\n" in done.stdout, done.stdout
    assert f"16 rows ({mode} autoreset, {backend} backend)" in done.stdout, done.stdout
