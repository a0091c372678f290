"""The stack-cube scene: fastenv's own MJCF (a table, two 4 cm cubes, a floating two-finger hand) and its limits.

:func:`scene_xml` fills in the model's time step and render settings; the
constants are the scene's geometry, the hand's workspace, the observation
bounds and where :meth:`~fastenv.examples.mujoco_stack.StackCubeEnv.reset`
places the cubes.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CAMERAS",
    "CUBE_HALF",
    "CUBE_HIGH",
    "CUBE_LOW",
    "CUBE_X_RANGE",
    "CUBE_Y_RANGE",
    "FINGER_DROP",
    "FINGER_HALF_HEIGHT",
    "FINGER_OPEN",
    "GRIPPER_HIGH",
    "GRIPPER_LOW",
    "HAND_HOME",
    "MIN_CUBE_DISTANCE",
    "TABLE_TOP",
    "WORKSPACE_HIGH",
    "WORKSPACE_LOW",
    "scene_xml",
]

#: Cameras of the scene: a fixed view of the table and one on the gripper, looking down.
CAMERAS: tuple[str, ...] = ("front", "wrist")

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


def scene_xml(*, timestep: float, width: int, height: int, shadows: bool, antialias: bool) -> str:
    """The scene's MJCF: ``timestep`` (s), an offscreen buffer for ``width`` × ``height`` images, render options."""
    return _SCENE.format(
        timestep=float(timestep),
        offwidth=max(width, 64),
        offheight=max(height, 64),
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
