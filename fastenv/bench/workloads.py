"""Named payloads: which example env to serve and which action to send.

- ``small``: :class:`fastenv.examples.VectorEnv` (4 float32 in, 4 float32 out).
- ``camera``: :class:`fastenv.examples.CameraEnv` with its defaults (two
  480×640×3 uint8 frames and 20 float32 per step, about 1.8 MB), rendered
  into :func:`fastenv.reply_array` arrays (zero-copy over shared memory).
- ``camera-alloc``: the same env allocating its frames (``reply_arrays=False``),
  so every transport copies them into its reply.
- ``camera-<H>x<W>`` (any size, for example ``camera-120x160``, 115 kB):
  the same env with two H×W×3 frames, for payload-size sweeps
  (:data:`SWEEP_PAYLOADS`). Not listed in :data:`PAYLOADS`;
  :func:`get_workload` builds them from the name.
- ``mujoco`` and ``mujoco-<H>x<W>``: real rendered frames, the MuJoCo
  stack-cube task (:class:`fastenv.examples.mujoco_stack.StackCubeEnv`:
  physics plus two offscreen-rendered cameras, 240×320 for ``mujoco``), for
  ``benchmarks/bench_mujoco.py``. Needs ``pip install "fastenv[sim]"``; not
  listed in :data:`PAYLOADS` either. Its OpenGL context is bound to the
  thread that built the env, so ``fastenv serve`` serves it with
  ``--env-thread dedicated`` (:attr:`Workload.serve_args`); the baselines
  build and call their env on one thread anyway.

- ``costly`` and ``uneven`` (:data:`COST_PAYLOADS`, for ``--scaling envs``):
  :class:`fastenv.bench.cost_env.CostEnv` (8 float32 out, 4 float32 in)
  busy-waiting about 96 µs a step, and the same with step costs spread 10x
  between envs by index (100 µs to 1 ms: env ``i`` of N costs ``100 *
  10 ** (i / (N - 1))`` µs; :meth:`Workload.for_envs` sets N). Not listed in
  :data:`PAYLOADS` either.

All are built with ``max_steps`` = :data:`NEVER_TRUNCATE`, so no episode ends
during a run: transports that auto-reset (Gymnasium's vector envs) and those
that do not then step the very same trajectory as the local reference env.

Every transport serves the same env built from the same :class:`Workload`, so
rows of one table are comparable, and a local instance gives the reference
observations used to check what each transport delivers.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "COST_PAYLOADS",
    "NEVER_TRUNCATE",
    "PAYLOADS",
    "SWEEP_PAYLOADS",
    "Workload",
    "build",
    "get_workload",
    "observation_arrays",
    "observation_nbytes",
    "observations_equal",
    "snapshot",
]

#: ``max_steps`` of every workload env: far more steps than any benchmark runs.
NEVER_TRUNCATE = 2**31 - 1


@dataclass(frozen=True)
class Workload:
    """An env (``module:Class`` plus kwargs) and the fixed action sent every step.

    ``serve_args``: command-line arguments ``fastenv serve`` needs to serve
    the env at all (``--env-thread dedicated`` for an env bound to one thread).
    """

    name: str
    target: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    action_dim: int = 4
    seed: int = 0
    serve_args: tuple[str, ...] = ()
    #: The env kwarg that must equal the number of envs stepped together (see :meth:`for_envs`), if any.
    envs_kwarg: str | None = None

    def for_envs(self, num_envs: int) -> Workload:
        """This workload for a vector of ``num_envs`` envs (its :attr:`envs_kwarg` set to ``num_envs``)."""
        if self.envs_kwarg is None:
            return self
        return dataclasses.replace(self, env_kwargs={**self.env_kwargs, self.envs_kwarg: int(num_envs)})

    def make_env(self) -> Any:
        """A fresh local instance of the env."""
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)(**self.env_kwargs)

    def make_action(self) -> np.ndarray:
        """The action sent at every step: deterministic float32 values in [-1, 1]."""
        rng = np.random.default_rng(1234)
        return rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)


PAYLOADS: dict[str, Workload] = {
    "small": Workload("small", "fastenv.examples:VectorEnv", {"max_steps": NEVER_TRUNCATE}, action_dim=4),
    "camera": Workload("camera", "fastenv.examples:CameraEnv", {"max_steps": NEVER_TRUNCATE}, action_dim=20),
    "camera-alloc": Workload(
        "camera-alloc", "fastenv.examples:CameraEnv", {"max_steps": NEVER_TRUNCATE, "reply_arrays": False}, action_dim=20
    ),
}


_COST_ENV = "fastenv.bench.cost_env:CostEnv"
#: Envs that cost CPU time per step, for ``--scaling envs`` (``--payload costly`` / ``uneven``).
COST_PAYLOADS: dict[str, Workload] = {
    "costly": Workload(
        "costly", _COST_ENV, {"step_us": 92, "horizon": NEVER_TRUNCATE, "action_dim": 4}, action_dim=4
    ),
    "uneven": Workload(
        "uneven",
        _COST_ENV,
        {"step_us": 100, "spread": 10, "horizon": NEVER_TRUNCATE, "action_dim": 4},
        action_dim=4,
        envs_kwarg="levels",
    ),
}


#: The default ``fastenv-bench --sweep``: 16 B, 18 kB, 115 kB, 461 kB and 1.8 MB observations.
SWEEP_PAYLOADS: tuple[str, ...] = ("small", "camera-48x64", "camera-120x160", "camera-240x320", "camera")

_SIZED_CAMERA = re.compile(r"camera-([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
_SIZED_MUJOCO = re.compile(r"mujoco(?:-([1-9][0-9]{0,4})x([1-9][0-9]{0,4}))?")
_MAX_SIDE = 8192
#: ``fastenv serve`` arguments for the MuJoCo workloads: one thread per env for its OpenGL context.
MUJOCO_SERVE_ARGS: tuple[str, ...] = ("--env-thread", "dedicated")


def get_workload(name: str) -> Workload:
    """The :class:`Workload` called ``name``: one of :data:`PAYLOADS`, :data:`COST_PAYLOADS` or ``camera-<H>x<W>``.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    known = PAYLOADS.get(name) or COST_PAYLOADS.get(name)
    if known is not None:
        return known
    match = _SIZED_CAMERA.fullmatch(name)
    if match is not None:
        height, width = int(match[1]), int(match[2])
        if height <= _MAX_SIDE and width <= _MAX_SIDE:
            kwargs = {"max_steps": NEVER_TRUNCATE, "height": height, "width": width}
            return Workload(name, "fastenv.examples:CameraEnv", kwargs, action_dim=20)
    match = _SIZED_MUJOCO.fullmatch(name)
    if match is not None:
        height, width = (int(match[1]), int(match[2])) if match[1] else (240, 320)
        if height <= _MAX_SIDE and width <= _MAX_SIDE:
            kwargs = {"max_episode_steps": NEVER_TRUNCATE, "height": height, "width": width}
            target = "fastenv.examples.mujoco_stack:StackCubeEnv"
            return Workload(name, target, kwargs, action_dim=4, serve_args=MUJOCO_SERVE_ARGS)
    raise KeyError(
        f"unknown payload {name!r}; choose one of {', '.join([*PAYLOADS, *COST_PAYLOADS])}, "
        f"camera-<H>x<W> or mujoco[-<H>x<W>] (sides 1..{_MAX_SIDE})"
    ) from None


def observation_nbytes(name: str) -> int:
    """Bytes of the arrays in one observation of payload ``name`` (from a local reset)."""
    workload = get_workload(name)
    env = workload.make_env()
    try:
        observation = env.reset(seed=workload.seed)[0]
    finally:
        env.close()
    return sum(array.nbytes for _, array in observation_arrays(observation))


def build(name: str) -> tuple[Any, np.ndarray]:
    """A fresh local env and the action for the payload called ``name``."""
    workload = get_workload(name)
    return workload.make_env(), workload.make_action()


def observations_equal(a: Any, b: Any) -> bool:
    """Structural equality: same container types and keys, same array dtypes, shapes, values."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and list(a) == list(b)
            and all(observations_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, (tuple, list)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(observations_equal(x, y) for x, y in zip(a, b))
        )
    return type(a) is type(b) and bool(a == b)


def snapshot(value: Any) -> Any:
    """A deep copy in which every array is owned and writable.

    What a check keeps must not share memory with what the transport under
    test may reuse (a baseline's buffers, a floor's shared memory).
    """
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(snapshot(v) for v in value)
    return value


def observation_arrays(observation: Any) -> list[tuple[str | None, np.ndarray]]:
    """``(key, array)`` for each array of an observation: one array, or a flat dict of arrays.

    Raises:
        TypeError: for any other structure (the floors only lay out these two).
    """
    if isinstance(observation, np.ndarray):
        return [(None, observation)]
    if isinstance(observation, dict) and all(isinstance(v, np.ndarray) for v in observation.values()):
        return [(str(k), v) for k, v in observation.items()]
    raise TypeError(f"expected an array or a dict of arrays, got {type(observation).__name__}")
