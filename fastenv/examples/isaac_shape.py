"""An env in Isaac Lab's shape: one object, ``num_envs`` rows, batched tensors in and out.

Isaac Lab (and other GPU simulators) batch inside the env: one env object
steps ``num_envs`` copies of a scene at once. :class:`IsaacShapeEnv` has the
same surface on a toy task, small enough for a CPU:

- ``num_envs``, ``single_observation_space`` (a ``Dict`` of observation
  groups ``"policy"`` and ``"critic"``), ``single_action_space`` and the
  batched ``observation_space`` / ``action_space``;
- ``step(actions)`` takes ``[num_envs, act_dim]`` actions and returns
  ``(obs, reward, terminated, truncated, extras)``: ``obs`` is
  ``{"policy": [N, d], "critic": [N, d2]}``, ``reward`` ``float32[N]``, the
  flags ``bool[N]``; ``reset(seed=, options=)`` returns ``(obs, extras)``;
- done rows reset themselves (autoreset), the Isaac Lab way
  (``autoreset_mode="same_step"``: the step that ends a row's episode resets
  it and returns the new episode's observation; ``extras["final_obs"]``
  holds every row's observation before the resets and
  ``extras["final_mask"]`` says which rows were done) or Gymnasium's
  (``"next_step"``: the step after the end resets the row and returns its
  reset observation, reward 0 and both flags false). ``metadata["autoreset_mode"]``
  says which (a ``gymnasium.vector.AutoresetMode``);
- RoboVerse-style state: :meth:`~IsaacShapeEnv.get_state` returns a
  :class:`SceneState`, nested dataclasses of tensors (registered with
  :func:`fastenv.register_dataclass` when this module is imported, so they
  travel as themselves), and :meth:`~IsaacShapeEnv.set_state` restores one
  exactly.

The task: a robot arm of ``num_dof`` joints (its first three joints move its
end effector) chases a cube that slides across a round table. An episode
terminates when the cube leaves the table and is truncated after
``max_episode_length`` steps, so rows end at different steps.

Values are torch tensors on ``device`` (``backend="torch"``, the default) or
numpy arrays (``backend="numpy"``, no torch needed). Everything is
deterministic given the seed: resets draw from the env's own generator
(a ``torch.Generator`` on ``device``, or a numpy ``Generator``), and the
dynamics are a function of the state and the actions.

Serve it (the sizes are env kwargs)::

    fastenv serve fastenv.examples.isaac_shape:make_env --env-thread main \\
        --env-kwargs '{"num_envs": 64, "autoreset_mode": "same_step"}'

and drive it with ``fastenv.FastVectorEnv.batched(address)``. Needs Gymnasium
(``pip install "fastenv[gym]"``) and, for the torch backend, torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import Env, spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

import fastenv

#: ``fastenv serve`` target of this env (sizes through ``--env-kwargs``).
TARGET = "fastenv.examples.isaac_shape:make_env"
AUTORESET_MODES = {"same_step": AutoresetMode.SAME_STEP, "next_step": AutoresetMode.NEXT_STEP}
BACKENDS = ("torch", "numpy")

DT = 0.05
ACTION_SCALE = 4.0
DAMPING = 0.9
DOF_LIMIT = 2.0
TABLE_RADIUS = 1.0
CUBE_START = 0.4  # cubes start in [-CUBE_START, CUBE_START]^2
CUBE_SPEED = 1.5  # cube velocity components in [-CUBE_SPEED, CUBE_SPEED]
CUBE_HEIGHT = 0.05


@dataclass
class RobotState:
    """One robot's state in every row.

    Attributes:
        root_pose: ``float32[N, 7]``: base position and orientation (quaternion w, x, y, z).
        dof_pos: ``float32[N, num_dof]`` joint positions.
        dof_vel: ``float32[N, num_dof]`` joint velocities.
    """

    root_pose: Any
    dof_pos: Any
    dof_vel: Any


@dataclass
class ObjectState:
    """One rigid object's state in every row.

    Attributes:
        root_pose: ``float32[N, 7]``: position and orientation (quaternion w, x, y, z).
        lin_vel: ``float32[N, 3]`` linear velocity.
    """

    root_pose: Any
    lin_vel: Any


@dataclass
class SceneState:
    """The whole scene, every row: what :meth:`IsaacShapeEnv.set_state` needs to restore it exactly.

    Attributes:
        robots: robot name -> :class:`RobotState`.
        objects: object name -> :class:`ObjectState`.
        time: ``int64[N]``: steps since each row's reset.
        reset_pending: ``bool[N]``: rows whose episode ended at the last step
            and that the next step resets (``"next_step"`` autoreset; always
            false with ``"same_step"``).
    """

    robots: dict[str, RobotState] = field(default_factory=dict)
    objects: dict[str, ObjectState] = field(default_factory=dict)
    time: Any = None
    reset_pending: Any = None


STATE_CLASSES = (RobotState, ObjectState, SceneState)
_register = getattr(fastenv, "register_dataclass", None)
if _register is not None:  # both sides import this module, so both register the same names
    for _cls in STATE_CLASSES:
        _register(_cls, f"fastenv.examples.isaac_shape.{_cls.__name__}")


# --------------------------------------------------------------------------- array backends


class _NumpyOps:
    """The few array operations the env needs, on numpy arrays (host memory only)."""

    name = "numpy"
    float32, int64, bool_ = np.float32, np.int64, np.bool_

    def __init__(self, device: Any) -> None:
        if device not in (None, "cpu"):
            raise ValueError(f"the numpy backend runs on the CPU; device={device!r} needs backend='torch'")
        self.device = "cpu"
        self.rng = np.random.default_rng()

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, size=shape).astype(np.float32)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def array(self, value: Any, dtype: Any) -> np.ndarray:
        """An owned copy of ``value`` (an array, a CPU tensor or a list) of ``dtype``."""
        if hasattr(value, "detach"):  # a tensor handed to the numpy backend
            value = value.detach().cpu().numpy()
        return np.array(value, dtype=dtype, copy=True)

    def copy(self, value: np.ndarray) -> np.ndarray:
        return value.copy()

    def cat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts, axis=-1)

    def norm(self, value: np.ndarray) -> np.ndarray:
        return np.sqrt((value * value).sum(axis=-1))

    def count(self, mask: np.ndarray) -> int:
        return int(mask.sum())

    def all_rows(self, n: int) -> np.ndarray:
        return np.ones(n, dtype=np.bool_)

    def as_float32(self, value: np.ndarray) -> np.ndarray:
        return value.astype(np.float32)

    exp, cos, sin = staticmethod(np.exp), staticmethod(np.cos), staticmethod(np.sin)


class _TorchOps:
    """The same operations on torch tensors on ``device``, drawing from a ``torch.Generator`` there."""

    name = "torch"

    def __init__(self, device: Any) -> None:
        try:
            import torch
        except ImportError as exc:
            raise fastenv.MissingDependency(
                "IsaacShapeEnv(backend='torch') needs torch: pip install 'fastenv[torch]', or pass backend='numpy'"
            ) from exc
        self.torch = torch
        self.device = torch.device(device if device is not None else "cpu")
        self.float32, self.int64, self.bool_ = torch.float32, torch.int64, torch.bool
        self.generator = torch.Generator(device=self.device)
        self.generator.seed()

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Any:
        draw = self.torch.rand(shape, generator=self.generator, device=self.device, dtype=self.torch.float32)
        return draw * (high - low) + low

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.torch.zeros(shape, dtype=dtype, device=self.device)

    def array(self, value: Any, dtype: Any) -> Any:
        """An owned copy of ``value`` (a tensor, an array or a list) of ``dtype`` on the env's device."""
        return self.torch.as_tensor(value, dtype=dtype, device=self.device).clone()

    def copy(self, value: Any) -> Any:
        return value.clone()

    def cat(self, parts: list[Any]) -> Any:
        return self.torch.cat(parts, dim=-1)

    def norm(self, value: Any) -> Any:
        return (value * value).sum(dim=-1).sqrt()

    def count(self, mask: Any) -> int:
        return int(mask.sum())

    def all_rows(self, n: int) -> Any:
        return self.torch.ones(n, dtype=self.torch.bool, device=self.device)

    def as_float32(self, value: Any) -> Any:
        return value.to(self.torch.float32)

    def exp(self, value: Any) -> Any:
        return value.exp()

    def cos(self, value: Any) -> Any:
        return value.cos()

    def sin(self, value: Any) -> Any:
        return value.sin()


# --------------------------------------------------------------------------- the env


class IsaacShapeEnv(Env):
    """A batched env of ``num_envs`` rows with Isaac Lab's interface (see the module docstring).

    Args:
        num_envs: rows stepped together.
        num_dof: the robot's joints (at least 3); the action is one target
            velocity change per joint.
        max_episode_length: steps after which a row's episode is truncated.
        autoreset_mode: ``"same_step"`` (Isaac Lab) or ``"next_step"`` (Gymnasium).
        backend: ``"torch"`` (tensors on ``device``) or ``"numpy"`` (arrays).
        device: the torch device (``"cpu"``, ``"cuda:0"``); the numpy backend is CPU only.
        seed: seeds the generator when the env is built (None: fresh entropy);
            ``reset(seed=...)`` seeds it again.
    """

    def __init__(
        self,
        num_envs: int = 64,
        *,
        num_dof: int = 7,
        max_episode_length: int = 60,
        autoreset_mode: str = "same_step",
        backend: str = "torch",
        device: Any = None,
        seed: int | None = 0,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if int(num_dof) < 3:
            raise ValueError(f"num_dof must be at least 3 (the first three move the end effector), got {num_dof}")
        if autoreset_mode not in AUTORESET_MODES:
            raise ValueError(f"autoreset_mode must be one of {', '.join(AUTORESET_MODES)}, got {autoreset_mode!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.num_envs = int(num_envs)
        self.num_dof = int(num_dof)
        self.max_episode_length = int(max_episode_length)
        self.autoreset_mode = autoreset_mode
        self.backend = backend
        self._ops = _TorchOps(device) if backend == "torch" else _NumpyOps(device)
        self.device = str(self._ops.device)
        self.metadata = {"render_modes": [], "autoreset_mode": AUTORESET_MODES[autoreset_mode]}
        self.render_mode = None

        policy_dim = 2 * self.num_dof + 3  # joint positions and velocities, cube relative to the end effector
        critic_dim = policy_dim + 3 + 7 + 1  # + cube velocity, robot base pose, episode progress
        unbounded = {"low": -np.inf, "high": np.inf, "dtype": np.float32}
        self.single_observation_space = spaces.Dict(
            {"policy": spaces.Box(shape=(policy_dim,), **unbounded), "critic": spaces.Box(shape=(critic_dim,), **unbounded)}
        )
        self.single_action_space = spaces.Box(-1.0, 1.0, (self.num_dof,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        if seed is not None:
            self._ops.seed(seed)
        ops, n = self._ops, self.num_envs
        self._root_pose = ops.zeros((n, 7), ops.float32)
        self._dof_pos = ops.zeros((n, self.num_dof), ops.float32)
        self._dof_vel = ops.zeros((n, self.num_dof), ops.float32)
        self._cube_pose = ops.zeros((n, 7), ops.float32)
        self._cube_vel = ops.zeros((n, 3), ops.float32)
        self._time = ops.zeros((n,), ops.int64)
        self._reset_pending = ops.zeros((n,), ops.bool_)
        self._reset_rows(ops.all_rows(n))

    # ------------------------------------------------------------------ env API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict]:
        """Start a new episode in every row; ``seed`` seeds the env's generator first."""
        if seed is not None:
            self._ops.seed(seed)
        self._reset_rows(self._ops.all_rows(self.num_envs))
        self._reset_pending[:] = False
        return self.get_observations(), {}

    def step(self, actions: Any) -> tuple[dict[str, Any], Any, Any, Any, dict[str, Any]]:
        """Step every row with its row of ``actions`` (``[num_envs, num_dof]``, clipped to [-1, 1])."""
        ops = self._ops
        actions = ops.array(actions, ops.float32)
        if tuple(actions.shape) != (self.num_envs, self.num_dof):
            raise ValueError(f"actions must have shape ({self.num_envs}, {self.num_dof}), got {tuple(actions.shape)}")
        actions = actions.clip(-1.0, 1.0)
        pending = ops.copy(self._reset_pending)

        self._dof_vel = self._dof_vel * DAMPING + actions * (DT * ACTION_SCALE)
        self._dof_pos = (self._dof_pos + self._dof_vel * DT).clip(-DOF_LIMIT, DOF_LIMIT)
        self._cube_pose[:, :3] = self._cube_pose[:, :3] + self._cube_vel * DT
        self._time = self._time + 1

        distance = ops.norm(self._cube_pose[:, :3] - self._end_effector())
        reward = ops.exp(-distance) - (actions * actions).sum(-1) * 0.01
        terminated = ops.norm(self._cube_pose[:, :2]) > TABLE_RADIUS
        truncated = self._time >= self.max_episode_length
        done = terminated | truncated

        if self.autoreset_mode == "same_step":
            final_obs = self.get_observations()
            self._reset_rows(done)
            extras = {"final_obs": final_obs, "final_mask": done, "time_outs": ops.copy(truncated)}
        else:
            self._reset_rows(pending)
            reward[pending] = 0.0
            terminated[pending] = False
            truncated[pending] = False
            self._reset_pending = terminated | truncated
            extras = {"time_outs": ops.copy(truncated)}
        return self.get_observations(), reward, terminated, truncated, extras

    def get_observations(self) -> dict[str, Any]:
        """The observation groups of the current state (new arrays, never written again)."""
        ops = self._ops
        policy = ops.cat([self._dof_pos, self._dof_vel, self._cube_pose[:, :3] - self._end_effector()])
        progress = ops.as_float32(self._time[:, None]) * (1.0 / self.max_episode_length)
        critic = ops.cat([policy, self._cube_vel, self._root_pose, progress])
        return {"policy": policy, "critic": critic}

    def get_state(self) -> SceneState:
        """The scene's state, every row (copies: later steps never change it)."""
        ops = self._ops
        return SceneState(
            robots={"franka": RobotState(ops.copy(self._root_pose), ops.copy(self._dof_pos), ops.copy(self._dof_vel))},
            objects={"cube": ObjectState(ops.copy(self._cube_pose), ops.copy(self._cube_vel))},
            time=ops.copy(self._time),
            reset_pending=ops.copy(self._reset_pending),
        )

    def set_state(self, state: SceneState) -> None:
        """Restore a state :meth:`get_state` returned (this env's or a remote one's), exactly."""
        ops, n = self._ops, self.num_envs
        robot, cube = state.robots["franka"], state.objects["cube"]
        values = {
            "_root_pose": (robot.root_pose, ops.float32, (n, 7)),
            "_dof_pos": (robot.dof_pos, ops.float32, (n, self.num_dof)),
            "_dof_vel": (robot.dof_vel, ops.float32, (n, self.num_dof)),
            "_cube_pose": (cube.root_pose, ops.float32, (n, 7)),
            "_cube_vel": (cube.lin_vel, ops.float32, (n, 3)),
            "_time": (state.time, ops.int64, (n,)),
            "_reset_pending": (state.reset_pending, ops.bool_, (n,)),
        }
        restored = {}
        for name, (value, dtype, shape) in values.items():
            array = ops.array(value, dtype)
            if tuple(array.shape) != shape:
                raise ValueError(f"state field for {name[1:]} has shape {tuple(array.shape)}, expected {shape}")
            restored[name] = array
        self.__dict__.update(restored)

    def close(self) -> None:
        """Nothing to release."""

    # ------------------------------------------------------------------ internals

    def _end_effector(self) -> Any:
        return self._root_pose[:, :3] + self._dof_pos[:, :3] * 0.5

    def _reset_rows(self, mask: Any) -> None:
        """Start new episodes in the rows marked by ``mask``, drawing from the env's generator."""
        ops = self._ops
        k = ops.count(mask)
        if k == 0:
            return
        yaw = ops.uniform((k, 1), -math.pi, math.pi)
        zeros = ops.zeros((k, 1), ops.float32)
        base = ops.cat([ops.uniform((k, 2), -0.05, 0.05), zeros])
        self._root_pose[mask] = ops.cat([base, ops.cos(yaw * 0.5), zeros, zeros, ops.sin(yaw * 0.5)])
        self._dof_pos[mask] = ops.uniform((k, self.num_dof), -0.5, 0.5)
        self._dof_vel[mask] = 0.0
        cube_xy = ops.uniform((k, 2), -CUBE_START, CUBE_START)
        self._cube_pose[mask] = ops.cat([cube_xy, zeros + CUBE_HEIGHT, zeros + 1.0, zeros, zeros, zeros])
        self._cube_vel[mask] = ops.cat([ops.uniform((k, 2), -CUBE_SPEED, CUBE_SPEED), zeros])
        self._time[mask] = 0

    def __repr__(self) -> str:
        return (
            f"IsaacShapeEnv(num_envs={self.num_envs}, autoreset_mode={self.autoreset_mode!r}, "
            f"backend={self.backend!r}, device={self.device!r})"
        )


def make_env(**kwargs: Any) -> IsaacShapeEnv:
    """The ``fastenv serve`` target: ``IsaacShapeEnv(**kwargs)`` (``--env-kwargs '{"num_envs": 1024}'``)."""
    return IsaacShapeEnv(**kwargs)
