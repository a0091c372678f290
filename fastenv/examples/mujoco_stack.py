"""A MuJoCo "stack the red cube on the green one" task with rendered cameras.

fastenv's own scene, written here in MJCF: a table, two 4 cm cubes and a
two-finger gripper whose hand follows a mocap target through a weld
constraint (a floating hand, position controlled, no arm).
Every step renders one RGB image per camera offscreen, so it is a real camera
payload: what a robot-learning env sends over the wire.

Serve it on one thread (see below); the second line serves the same env made
by ``gymnasium.make``, with larger images::

    fastenv serve fastenv.examples.mujoco_stack:make_stack_cube --env-thread main
    fastenv serve fastenv/StackCube-v0 --env-thread main --env-kwargs '{"height": 480, "width": 640}'

or use it locally (``gymnasium.make("fastenv/StackCube-v0")`` after ``import fastenv``).

Needs ``pip install "fastenv[sim]"`` (MuJoCo and Gymnasium) and an offscreen
OpenGL: on Linux without a display this module picks EGL (Debian/Ubuntu:
``apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0``, which
renders on the CPU with Mesa's llvmpipe when there is no GPU), or OSMesa
(``libosmesa6``) when EGL is not installed. ``MUJOCO_GL`` set by the user is
respected; it must be set before anything imports ``mujoco``.

An OpenGL context belongs to one thread, so the env renders only on the
thread that built it: it makes its OpenGL context there on the first render
and frees it in :meth:`~StackCubeEnv.close`, and a render from any other
thread raises :class:`~fastenv.examples.mujoco_render.GLThreadError`
(:mod:`fastenv.examples.mujoco_render`). fastenv's server calls an env from
the thread that received the call unless told otherwise, so serve it with
``--env-thread main`` or ``--env-thread dedicated``
(``fastenv.EnvServer(..., env_thread=...)`` from Python): the server then
builds, calls and closes it on one thread, for every client. An env with
``cameras=()`` and no ``render_mode`` never renders and may be called from
any thread. The scene itself, in MJCF, is :mod:`fastenv.examples.mujoco_scene`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fastenv.errors import MissingDependency
from fastenv.examples.mujoco_render import GLThreadError, ThreadBoundRenderer, import_mujoco
from fastenv.examples.mujoco_scene import (
    CAMERAS,
    CUBE_HALF,
    CUBE_HIGH,
    CUBE_LOW,
    CUBE_X_RANGE,
    CUBE_Y_RANGE,
    FINGER_OPEN,
    GRIPPER_HIGH,
    GRIPPER_LOW,
    HAND_HOME,
    MIN_CUBE_DISTANCE,
    TABLE_TOP,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    scene_xml,
)

try:
    import gymnasium
    from gymnasium import spaces
except ImportError as exc:  # pragma: no cover - exercised only without gymnasium
    raise MissingDependency(
        f'the MuJoCo stack-cube env needs Gymnasium: pip install "fastenv[sim]" ({exc})'
    ) from exc

__all__ = ["CAMERAS", "GLThreadError", "StackCubeEnv", "make_stack_cube"]


class StackCubeEnv(gymnasium.Env):
    """Stack the red cube on the green one with a two-finger gripper; camera images in every observation.

    Observation (a dict, in this order):

    - one ``uint8[height, width, 3]`` RGB image per name in ``cameras``
      (``"front"``: the table seen from the front; ``"wrist"``: from the hand,
      looking down between the fingers);
    - ``"gripper"``: ``float32[5]``: hand position x, y, z (m), then the left
      and right finger openings (m, 0 = closed, 0.045 = open);
    - ``"cubes"``: ``float32[14]``: red cube position (3) and quaternion
      w, x, y, z (4), then the green cube's.

    Action: ``float32[4]`` in [-1, 1]: hand velocity x, y, z (1 = ``max_move``
    metres per step, spread over the physics substeps), then the grip
    (-1 fully open, +1 closed; the fingers are position-controlled).

    Reward: 1.0 once the red cube rests on the green one and the fingers have
    let go (``terminated``), otherwise minus the distance (m) from the red
    cube to that goal. ``truncated`` after ``max_episode_steps`` steps.
    ``info["is_success"]`` says whether the cubes are stacked and released.

    Every step renders the cameras of the new state (after ``mj_forward``, so
    images, ``"gripper"`` and ``"cubes"`` describe the same instant), on the
    thread that built the env (:class:`GLThreadError` on any other; see the
    module docstring).
    :meth:`get_state` / :meth:`set_state` capture and restore everything
    integration depends on (``mj_getState`` with ``mjSTATE_INTEGRATION``:
    time, qpos, qvel, act, warm start, controls, mocap poses, ...) plus the
    step counter and the seeding RNG, so a restored env continues bit for bit
    and renders the same pixels.

    Args:
        height, width: image size of every camera (pixels).
        cameras: which cameras to render into the observation (``()`` for none).
        render_mode: ``"rgb_array"`` to make :meth:`render` return the
            ``render_camera`` image, or None.
        render_camera: camera used by :meth:`render`.
        frame_skip: physics steps (of ``timestep`` seconds) per env step.
        timestep: physics time step (s).
        max_episode_steps: steps after which an episode is truncated.
        max_move: hand displacement per step (m) at action magnitude 1.
        shadows: cast shadows from the key light.
        antialias: 4x multisampling (MuJoCo's default).
            Both are off by default: on a software rasterizer (Mesa llvmpipe,
            no GPU) each multiplies the render time by 2 to 4.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        height: int = 240,
        width: int = 320,
        cameras: Sequence[str] = CAMERAS,
        render_mode: str | None = None,
        render_camera: str = "front",
        frame_skip: int = 10,
        timestep: float = 0.002,
        max_episode_steps: int = 300,
        max_move: float = 0.01,
        shadows: bool = False,
        antialias: bool = False,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        cameras = tuple(cameras)
        unknown = [name for name in (*cameras, render_camera) if name not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; the scene has {list(CAMERAS)}")
        if height < 1 or width < 1 or frame_skip < 1 or max_episode_steps < 1 or timestep <= 0:
            raise ValueError("height, width, frame_skip, max_episode_steps and timestep must be positive")
        self._mujoco = mujoco = import_mujoco()
        self.height, self.width = int(height), int(width)
        self.cameras = cameras
        self.render_mode = render_mode
        self.render_camera = render_camera
        self.frame_skip = int(frame_skip)
        self.max_episode_steps = int(max_episode_steps)
        self.max_move = float(max_move)
        self.model = mujoco.MjModel.from_xml_string(
            scene_xml(timestep=timestep, width=self.width, height=self.height, shadows=shadows, antialias=antialias)
        )
        self.data = mujoco.MjData(self.model)
        self.dt = float(self.model.opt.timestep) * self.frame_skip
        self.metadata = {**type(self).metadata, "render_fps": round(1.0 / self.dt)}
        self._state_signature = int(mujoco.mjtState.mjSTATE_INTEGRATION)
        self._state_size = int(mujoco.mj_stateSize(self.model, self._state_signature))
        self._cube_qpos = {
            name: int(self.model.jnt_qposadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)])
            for name in ("cube_a", "cube_b")
        }
        self._finger_qpos = np.array(
            [
                self.model.jnt_qposadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)]
                for name in ("finger_left", "finger_right")
            ]
        )
        self._finger_geoms = {
            mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name) for name in ("finger_left", "finger_right")
        }
        self._cube_a_geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "cube_a")
        self._hand_body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "hand")

        image = spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        self.observation_space = spaces.Dict(
            [
                *((name, image) for name in self.cameras),
                ("gripper", spaces.Box(GRIPPER_LOW, GRIPPER_HIGH, (5,), np.float32)),
                ("cubes", spaces.Box(np.tile(CUBE_LOW, 2), np.tile(CUBE_HIGH, 2), (14,), np.float32)),
            ]
        )
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._steps = 0
        self._closed = False
        # Bound to this thread; its OpenGL context is made by the first render.
        self._renderer = ThreadBoundRenderer(mujoco, self.model, self.height, self.width, owner_of=type(self).__name__)
        self._reset_physics(np.array([0.5, 0.1]), np.array([0.5, -0.1]))

    # ------------------------------------------------------------------ physics

    def _reset_physics(self, cube_a_xy: np.ndarray, cube_b_xy: np.ndarray) -> None:
        mujoco, data = self._mujoco, self.data
        mujoco.mj_resetData(self.model, data)
        for name, xy in (("cube_a", cube_a_xy), ("cube_b", cube_b_xy)):
            start = self._cube_qpos[name]
            data.qpos[start : start + 7] = (xy[0], xy[1], TABLE_TOP + CUBE_HALF, 1.0, 0.0, 0.0, 0.0)
        data.qpos[self._finger_qpos] = FINGER_OPEN
        data.ctrl[:] = FINGER_OPEN
        data.mocap_pos[0] = HAND_HOME
        data.mocap_quat[0] = (1.0, 0.0, 0.0, 0.0)
        mujoco.mj_forward(self.model, data)

    def _observe(self) -> dict[str, np.ndarray]:
        data = self.data
        obs: dict[str, np.ndarray] = {}
        if self.cameras:
            for name, image in zip(self.cameras, self._render(self.cameras)):
                obs[name] = image
        obs["gripper"] = np.concatenate([data.xpos[self._hand_body], data.qpos[self._finger_qpos]]).astype(np.float32)
        a, b = self._cube_qpos["cube_a"], self._cube_qpos["cube_b"]
        obs["cubes"] = np.concatenate([data.qpos[a : a + 7], data.qpos[b : b + 7]]).astype(np.float32)
        return obs

    def _check_open(self) -> None:
        if self._closed:
            raise gymnasium.error.ClosedEnvironmentError(f"{type(self).__name__} is closed")

    def _render(self, cameras: Sequence[str]) -> list[np.ndarray]:
        self._check_open()
        return self._renderer.render(self.data, cameras)

    def _goal(self) -> np.ndarray:
        b = self._cube_qpos["cube_b"]
        return self.data.qpos[b : b + 3] + np.array([0.0, 0.0, 2 * CUBE_HALF])

    def _cube_a_position(self) -> np.ndarray:
        a = self._cube_qpos["cube_a"]
        return self.data.qpos[a : a + 3]

    def _fingers_touch_cube_a(self) -> bool:
        contacts = self.data.contact
        for g1, g2 in contacts.geom[: self.data.ncon]:
            pair = {int(g1), int(g2)}
            if self._cube_a_geom in pair and pair & self._finger_geoms:
                return True
        return False

    def is_success(self) -> bool:
        """Whether the red cube rests on the green one and the fingers have let go of it."""
        offset = self._cube_a_position() - self._goal()
        stacked = bool(np.hypot(offset[0], offset[1]) < CUBE_HALF * 0.75 and abs(offset[2]) < 0.005)
        return stacked and not self._fingers_touch_cube_a()

    # ------------------------------------------------------------------ Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode: cubes at random places on the table (from ``seed``), hand at home, fingers open."""
        self._check_open()
        super().reset(seed=seed)
        rng = self.np_random
        low = np.array([CUBE_X_RANGE[0], CUBE_Y_RANGE[0]])
        high = np.array([CUBE_X_RANGE[1], CUBE_Y_RANGE[1]])
        cube_a = rng.uniform(low, high)
        cube_b = rng.uniform(low, high)
        while np.linalg.norm(cube_a - cube_b) < MIN_CUBE_DISTANCE:
            cube_b = rng.uniform(low, high)
        self._reset_physics(cube_a, cube_b)
        self._steps = 0
        return self._observe(), {"is_success": False}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        """Move the hand and the fingers for ``frame_skip`` physics steps, then observe and render."""
        self._check_open()
        mujoco, model, data = self._mujoco, self.model, self.data
        act = np.clip(np.asarray(action, dtype=np.float64).reshape(4), -1.0, 1.0)
        target = np.clip(data.mocap_pos[0] + act[:3] * self.max_move, WORKSPACE_LOW, WORKSPACE_HIGH)
        start = data.mocap_pos[0].copy()
        data.ctrl[:] = (1.0 - act[3]) / 2.0 * FINGER_OPEN
        for i in range(1, self.frame_skip + 1):
            data.mocap_pos[0] = start + (target - start) * (i / self.frame_skip)
            mujoco.mj_step(model, data)
        mujoco.mj_forward(model, data)  # kinematics of the new state, for the images and the success test
        self._steps += 1
        success = self.is_success()
        reward = 1.0 if success else -float(np.linalg.norm(self._cube_a_position() - self._goal()))
        truncated = self._steps >= self.max_episode_steps and not success
        return self._observe(), reward, success, truncated, {"is_success": success}

    def render(self) -> np.ndarray | None:
        """A fresh ``render_camera`` image of the current state when ``render_mode == "rgb_array"``, else None."""
        if self.render_mode != "rgb_array":
            return None
        return self._render((self.render_camera,))[0]

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly from here.

        ``"physics"``: ``float64[n]`` from ``mj_getState(mjSTATE_INTEGRATION)``;
        ``"signature"``: that state signature; ``"steps"``: steps into the
        episode; ``"rng"``: the seeding RNG's ``bit_generator.state``.
        ``"time"``, ``"qpos"`` and ``"qvel"`` are readable copies of parts of
        ``"physics"`` (for plotting and comparing); :meth:`set_state` ignores them.
        """
        physics = np.empty(self._state_size, dtype=np.float64)
        self._mujoco.mj_getState(self.model, self.data, physics, self._state_signature)
        return {
            "physics": physics,
            "signature": self._state_signature,
            "steps": self._steps,
            "rng": self.np_random.bit_generator.state,
            "time": float(self.data.time),
            "qpos": self.data.qpos.copy(),
            "qvel": self.data.qvel.copy(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_state` (of this env or a twin built with the same arguments).

        Raises:
            ValueError: the state comes from a different model or MuJoCo state layout.
        """
        physics = np.ascontiguousarray(state["physics"], dtype=np.float64)
        if int(state["signature"]) != self._state_signature or physics.shape != (self._state_size,):
            raise ValueError(
                f"state does not fit this env: signature {state['signature']} with {physics.size} values, "
                f"expected {self._state_signature} with {self._state_size} (another model or MuJoCo version?)"
            )
        self._mujoco.mj_setState(self.model, self.data, physics, self._state_signature)
        self._mujoco.mj_forward(self.model, self.data)
        self._steps = int(state["steps"])
        if "rng" in state:
            self.np_random.bit_generator.state = state["rng"]

    def render_state(self, state: dict[str, Any], cameras: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Restore ``state`` and return ``{camera: image}`` for ``cameras`` (default: the observation's)."""
        self.set_state(state)
        names = self.cameras if cameras is None else tuple(cameras)
        return dict(zip(names, self._render(names)))

    # ------------------------------------------------------------------ lifetime

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Free the renderer's OpenGL context, if a render made one. Safe to call twice.

        Raises:
            GLThreadError: a render made a context, and this is not the thread
                that built the env (the env is closed, the context is left for
                ``close()`` on that thread).
        """
        self._closed = True
        self._renderer.close()

    def __del__(self) -> None:
        renderer = self.__dict__.get("_renderer")
        if renderer is None or not renderer.active:
            return
        warnings.warn(
            f"{type(self).__name__} was not closed; call close() to free its renderer",
            ResourceWarning,
            stacklevel=2,
        )
        self._closed = True
        if renderer.on_own_thread():
            renderer.close()
        else:  # collected on another thread: OpenGL may not be touched here
            renderer.abandon()


def make_stack_cube(**kwargs: Any) -> StackCubeEnv:
    """``fastenv serve fastenv.examples.mujoco_stack:make_stack_cube``: a :class:`StackCubeEnv` with ``kwargs``."""
    return StackCubeEnv(**kwargs)
