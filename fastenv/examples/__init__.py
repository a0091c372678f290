"""Built-in example environments used by the demo, the tests and the benchmarks.

- :class:`VectorEnv`: a tiny vector-observation env (Gymnasium 5-tuple API).
- :class:`CameraEnv`: a camera-like env returning a dict with two uint8 H×W×3
  images and a float proprio vector, sizes configurable.
- :class:`StructuredEnv`: nested Dict / Tuple observations, numpy scalars and a
  rich ``info`` dict: a stress test for transparency.
- :class:`LegacyEnv`: the pre-Gymnasium 4-tuple API (``reset`` returns only the
  observation, ``step`` returns ``obs, reward, done, info``).

All of them are deterministic given ``reset(seed=...)`` and the actions, work
without Gymnasium installed, and expose Gymnasium spaces when it is.

Serve one with ``fastenv serve fastenv.examples:CameraEnv``.

A real simulator lives in its own module, not imported here (it needs
``pip install "fastenv[sim]"``): :mod:`fastenv.examples.mujoco_stack`, a MuJoCo
cube-stacking task with rendered cameras (``fastenv serve
fastenv.examples.mujoco_stack:make_stack_cube --env-thread main``: its OpenGL
context is bound to the thread that built it; Gymnasium id
``fastenv/StackCube-v0``).
"""

from fastenv.examples.camera import CameraEnv
from fastenv.examples.legacy import LegacyEnv
from fastenv.examples.structured import StructuredEnv
from fastenv.examples.vector import VectorEnv

__all__ = ["CameraEnv", "LegacyEnv", "StructuredEnv", "VectorEnv"]
