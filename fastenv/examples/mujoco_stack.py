"""A MuJoCo "stack the red cube on the green one" task with rendered cameras.

fastenv's own scene, written here in MJCF: a table, two 4 cm cubes and a
two-finger gripper whose hand follows a mocap target through a weld
constraint (a floating hand, position controlled, no arm).
Every step renders one RGB image per camera offscreen, so it is a real camera
payload: what a robot-learning env sends over the wire.

Serve it::

    fastenv serve fastenv.examples.mujoco_stack:make_stack_cube --env-kwargs '{"height": 480, "width": 640}'
    fastenv serve fastenv/StackCube-v0            # the same env, made by gymnasium.make

or use it locally (``gymnasium.make("fastenv/StackCube-v0")`` after ``import fastenv``).

Needs ``pip install "fastenv[sim]"`` (MuJoCo and Gymnasium) and an offscreen
OpenGL: on Linux without a display this module picks EGL (Debian/Ubuntu:
``apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0``, which
renders on the CPU with Mesa's llvmpipe when there is no GPU), or OSMesa
(``libosmesa6``) when EGL is not installed. ``MUJOCO_GL`` set by the user is
respected; it must be set before anything imports ``mujoco``.

Rendering runs on a thread owned by the env, because an OpenGL context belongs
to the thread that made it current while fastenv's server calls an env from
its sessions' threads.
"""

from __future__ import annotations

import concurrent.futures
import ctypes.util
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fastenv.errors import FastEnvTimeout, MissingDependency
from fastenv.loans import reply_array

try:
    import gymnasium
    from gymnasium import spaces
except ImportError as exc:  # pragma: no cover - exercised only without gymnasium
    raise MissingDependency(
        f'the MuJoCo stack-cube env needs Gymnasium: pip install "fastenv[sim]" ({exc})'
    ) from exc

__all__ = [
    "CAMERAS",
    "GL_APT_PACKAGES",
    "StackCubeEnv",
    "configure_gl",
    "make_stack_cube",
]

#: Cameras of the scene: a fixed view of the table and one on the gripper, looking down.
CAMERAS: tuple[str, ...] = ("front", "wrist")

#: Debian/Ubuntu packages for headless EGL rendering (Mesa; software rasterizer without a GPU).
GL_APT_PACKAGES: tuple[str, ...] = ("libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libopengl0")

#: Seconds one render (all cameras) may take before :class:`~fastenv.FastEnvTimeout`.
RENDER_TIMEOUT_S = 60.0

CUBE_HALF = 0.02  # cube half size (m): 4 cm cubes
TABLE_TOP = 0.40  # height of the table surface (m)
FINGER_OPEN = 0.045  # finger slide opening (m) when fully open: a 9 cm gap
FINGER_HALF_HEIGHT = 0.02
FINGER_DROP = 0.045  # finger centre below the hand (m)
# Where the hand's target may go (mocap position, m): the fingers stay 1 mm above the table.
WORKSPACE_LOW = np.array([0.25, -0.30, TABLE_TOP + 0.001 + FINGER_HALF_HEIGHT + FINGER_DROP])
WORKSPACE_HIGH = np.array([0.75, 0.30, 0.80])
HAND_HOME = np.array([0.50, 0.0, 0.60])
# Observation bounds: positions within 10 m of the origin (the floor is an infinite plane),
# finger openings within their joint range plus the constraint's softness, unit quaternions.
GRIPPER_LOW = np.array([-10.0, -10.0, -10.0, -0.01, -0.01], dtype=np.float32)
GRIPPER_HIGH = np.array([10.0, 10.0, 10.0, FINGER_OPEN + 0.01, FINGER_OPEN + 0.01], dtype=np.float32)
CUBE_LOW = np.array([-10.0, -10.0, -10.0, -1.0, -1.0, -1.0, -1.0], dtype=np.float32)
CUBE_HIGH = np.array([10.0, 10.0, 10.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32)
CUBE_X_RANGE = (0.40, 0.60)
CUBE_Y_RANGE = (-0.15, 0.15)
MIN_CUBE_DISTANCE = 0.08

_SCENE = """
<mujoco model="fastenv_stack_cube">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{offwidth}" offheight="{offheight}"/>
    <quality shadowsize="{shadowsize}" offsamples="{offsamples}"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.1 0.1 0.1"/>
  </visual>
  <asset>
    <texture name="floor" type="2d" builtin="checker" rgb1="0.22 0.27 0.32" rgb2="0.15 0.18 0.22"
             width="256" height="256" mark="edge" markrgb="0.3 0.35 0.4"/>
    <material name="floor" texture="floor" texrepeat="6 6"/>
    <texture name="wood" type="2d" builtin="flat" rgb1="0.62 0.46 0.32" width="64" height="64"
             random="0.05" mark="random" markrgb="0.5 0.36 0.24"/>
    <material name="table" texture="wood" texrepeat="4 4"/>
    <material name="metal" rgba="0.62 0.64 0.68 1" specular="0.6" shininess="0.5"/>
    <material name="pad" rgba="0.12 0.12 0.14 1"/>
    <material name="red" rgba="0.86 0.16 0.14 1"/>
    <material name="green" rgba="0.16 0.66 0.24 1"/>
  </asset>
  <default>
    <geom solref="0.005 1" solimp="0.95 0.99 0.001"/>
  </default>
  <worldbody>
    <light name="key" pos="0.9 -0.7 1.8" dir="-0.3 0.35 -1" castshadow="true" diffuse="0.7 0.7 0.7"/>
    <geom name="floor" type="plane" size="2 2 0.1" material="floor"/>
    <geom name="table" type="box" pos="0.5 0 {table_center}" size="0.4 0.5 {table_center}" material="table"/>
    <camera name="front" pos="0.98 0 0.74" xyaxes="0 1 0 -0.555 0 0.832" fovy="42"/>
    <body name="cube_a" pos="0.5 0.1 {cube_z}">
      <freejoint name="cube_a"/>
      <geom name="cube_a" type="box" size="{cube} {cube} {cube}" material="red" condim="4" friction="1 0.01 0.001"/>
    </body>
    <body name="cube_b" pos="0.5 -0.1 {cube_z}">
      <freejoint name="cube_b"/>
      <geom name="cube_b" type="box" size="{cube} {cube} {cube}" material="green" condim="4" friction="1 0.01 0.001"/>
    </body>
    <body name="target" mocap="true" pos="{home}"/>
    <body name="hand" pos="{home}" gravcomp="1">
      <freejoint name="hand"/>
      <geom name="palm" type="box" size="0.015 0.06 0.01" material="metal" mass="0.4"/>
      <camera name="wrist" pos="0.07 0 0.01" xyaxes="0 1 0 -0.707 0 0.707" fovy="60"/>
      <body name="finger_left" pos="0 0 -{finger_drop}" gravcomp="1">
        <joint name="finger_left" type="slide" axis="0 1 0" range="0 {finger_open}" damping="8"/>
        <geom name="finger_left" type="box" pos="0 0.006 0" size="0.012 0.006 {finger_half}" material="pad"
              condim="4" friction="1.5 0.02 0.001" mass="0.05"/>
      </body>
      <body name="finger_right" pos="0 0 -{finger_drop}" gravcomp="1">
        <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {finger_open}" damping="8"/>
        <geom name="finger_right" type="box" pos="0 -0.006 0" size="0.012 0.006 {finger_half}" material="pad"
              condim="4" friction="1.5 0.02 0.001" mass="0.05"/>
      </body>
    </body>
  </worldbody>
  <contact>
    <exclude body1="hand" body2="finger_left"/>
    <exclude body1="hand" body2="finger_right"/>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <equality>
    <weld name="hand_to_target" body1="target" body2="hand" solref="0.01 1"/>
  </equality>
  <actuator>
    <position name="finger_left" joint="finger_left" kp="300" ctrlrange="0 {finger_open}"/>
    <position name="finger_right" joint="finger_right" kp="300" ctrlrange="0 {finger_open}"/>
  </actuator>
</mujoco>
"""


# Whether something imported mujoco before this module could choose MUJOCO_GL (None: not known yet).
_MUJOCO_IMPORTED_FIRST: bool | None = None


def configure_gl() -> str:
    """Choose MuJoCo's offscreen OpenGL backend (``MUJOCO_GL``) before ``mujoco`` is imported.

    A ``MUJOCO_GL`` already set is kept. On Linux: ``egl`` when libEGL is
    installed, else ``osmesa`` when libOSMesa is, else MuJoCo's default
    (GLFW, which needs a display). Elsewhere MuJoCo's default (CGL on macOS,
    WGL on Windows). Returns the value now in effect (``""`` for the default).
    """
    global _MUJOCO_IMPORTED_FIRST
    if _MUJOCO_IMPORTED_FIRST is None:
        _MUJOCO_IMPORTED_FIRST = "mujoco" in sys.modules
    chosen = os.environ.get("MUJOCO_GL", "")
    if chosen or not sys.platform.startswith("linux"):
        return chosen
    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = backend
            return backend
    return ""


def _import_mujoco() -> Any:
    configure_gl()
    try:
        import mujoco
    except ImportError as exc:
        raise MissingDependency(f'the MuJoCo stack-cube env needs MuJoCo: pip install "fastenv[sim]" ({exc})') from exc
    return mujoco


class _RenderThread:
    """MuJoCo's offscreen renderer, created, used and freed on one thread of its own.

    An OpenGL context can be current in one thread only; the thread that
    calls the env may change from call to call (fastenv's server runs each
    session's calls on that session's thread), so all GL work goes here.
    """

    def __init__(self, mujoco: Any, model: Any, height: int, width: int) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mujoco-render")
        self._renderer: Any = None
        try:
            self._renderer = self._run(mujoco.Renderer, model, height, width)
        except FastEnvTimeout:
            self._executor.shutdown(wait=False)
            raise
        except Exception as exc:  # GL context creation failed: translate at the edge
            self._executor.shutdown(wait=True)
            backend = os.environ.get("MUJOCO_GL") or "MuJoCo's default (GLFW, needs a display)"
            if _MUJOCO_IMPORTED_FIRST:
                backend += (
                    " (but mujoco was imported before fastenv could set MUJOCO_GL: set it in the environment, "
                    "or import fastenv.examples.mujoco_stack first)"
                )
            raise MissingDependency(
                f"offscreen rendering with MUJOCO_GL={backend} failed ({type(exc).__name__}: {exc}); "
                f"on Debian/Ubuntu: apt-get install {' '.join(GL_APT_PACKAGES)} (EGL) or libosmesa6 "
                "(MUJOCO_GL=osmesa)"
            ) from exc

    def _run(self, function: Any, *args: Any) -> Any:
        future = self._executor.submit(function, *args)
        try:
            return future.result(timeout=RENDER_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise FastEnvTimeout(f"MuJoCo rendering took longer than {RENDER_TIMEOUT_S:.0f}s") from None

    def render(self, data: Any, cameras: Sequence[str]) -> list[np.ndarray]:
        """One new uint8[H, W, 3] image per camera, for the state in ``data``.

        The images are :func:`fastenv.reply_array` arrays, taken here on the
        caller's thread (the one fastenv serves the call on): served over
        shared memory, MuJoCo renders straight into the reply.
        """
        renderer = self._renderer
        images = [reply_array((renderer.height, renderer.width, 3), np.uint8) for _ in cameras]
        return self._run(self._render, data, tuple(cameras), images)

    def _render(self, data: Any, cameras: tuple[str, ...], images: list[np.ndarray]) -> list[np.ndarray]:
        for camera, image in zip(cameras, images):
            self._renderer.update_scene(data, camera=camera)
            self._renderer.render(out=image)
        return images

    def close(self) -> None:
        """Free the GL context (on its thread) and stop the thread. Safe to call twice."""
        renderer, self._renderer = self._renderer, None
        if renderer is not None:
            try:
                self._run(renderer.close)
            except RuntimeError:
                pass  # interpreter shutdown stopped the thread already; the process exit frees the context
            finally:
                self._executor.shutdown(wait=True)


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
    images, ``"gripper"`` and ``"cubes"`` describe the same instant).
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
        self._mujoco = mujoco = _import_mujoco()
        self.height, self.width = int(height), int(width)
        self.cameras = cameras
        self.render_mode = render_mode
        self.render_camera = render_camera
        self.frame_skip = int(frame_skip)
        self.max_episode_steps = int(max_episode_steps)
        self.max_move = float(max_move)
        self.model = mujoco.MjModel.from_xml_string(
            _SCENE.format(
                timestep=float(timestep),
                offwidth=max(self.width, 64),
                offheight=max(self.height, 64),
                shadowsize=1024 if shadows else 0,
                offsamples=4 if antialias else 0,
                table_center=TABLE_TOP / 2,
                cube=CUBE_HALF,
                cube_z=TABLE_TOP + CUBE_HALF,
                home=" ".join(map(str, HAND_HOME)),
                finger_drop=FINGER_DROP,
                finger_open=FINGER_OPEN,
                finger_half=FINGER_HALF_HEIGHT,
            )
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
        self._renderer: _RenderThread | None = None
        self._renderer_lock = threading.Lock()
        if self.cameras or self.render_mode is not None:
            self._renderer = _RenderThread(mujoco, self.model, self.height, self.width)
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
        with self._renderer_lock:
            self._check_open()
            if self._renderer is None:  # render_mode set later, or a camera-less env asked for a frame
                self._renderer = _RenderThread(self._mujoco, self.model, self.height, self.width)
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
        """Free the renderer (its GL context and thread). Safe to call twice."""
        self._closed = True
        with self._renderer_lock:
            renderer, self._renderer = self._renderer, None
        if renderer is not None:
            renderer.close()

    def __del__(self) -> None:
        if self.__dict__.get("_renderer") is not None:
            warnings.warn(
                f"{type(self).__name__} was not closed; call close() to free its renderer",
                ResourceWarning,
                stacklevel=2,
            )
            self.close()


def make_stack_cube(**kwargs: Any) -> StackCubeEnv:
    """``fastenv serve fastenv.examples.mujoco_stack:make_stack_cube``: a :class:`StackCubeEnv` with ``kwargs``."""
    return StackCubeEnv(**kwargs)
