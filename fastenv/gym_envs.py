"""Gymnasium ids of fastenv's built-in envs, registered when fastenv is imported.

Registration stores only the entry point string, so importing fastenv never
imports the simulator: ``gymnasium.make("fastenv/StackCube-v0")`` imports
MuJoCo when it builds the env. Without Gymnasium this module does nothing.

- ``fastenv/StackCube-v0``: :class:`fastenv.examples.mujoco_stack.StackCubeEnv`
  (MuJoCo, rendered cameras; needs ``pip install "fastenv[sim]"``). The env
  truncates its episodes itself (``max_episode_steps`` argument, 300 by
  default), so no ``TimeLimit`` wrapper is added.
"""

from __future__ import annotations

#: Gymnasium id -> entry point.
ENVS: dict[str, str] = {
    "fastenv/StackCube-v0": "fastenv.examples.mujoco_stack:StackCubeEnv",
}


def register_envs() -> list[str]:
    """Register :data:`ENVS` with Gymnasium (ids already registered are left alone); returns the ids."""
    try:
        import gymnasium
    except ImportError:  # pragma: no cover - Gymnasium is optional
        return []
    for env_id, entry_point in ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)
    return list(ENVS)


register_envs()
