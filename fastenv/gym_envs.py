"""Gymnasium ids of fastenv's built-in envs, registered when fastenv is imported.

Registration stores only the entry point string, so importing fastenv never
imports the simulator: ``gymnasium.make("fastenv/StackCube-v0")`` imports
MuJoCo when it builds the env. Without Gymnasium this module does nothing.

- ``fastenv/Remote-v0``: an env served elsewhere, by address
  (``gymnasium.make("fastenv/Remote-v0", address="127.0.0.1:5555")``;
  ``gymnasium.make_vec`` gives a :class:`fastenv.FastVectorEnv`), see
  :mod:`fastenv.gym_remote`.
- ``fastenv/StackCube-v0``: :class:`fastenv.examples.mujoco_stack.StackCubeEnv`
  (MuJoCo, rendered cameras; needs ``pip install "fastenv[sim]"``). The env
  truncates its episodes itself (``max_episode_steps`` argument, 300 by
  default), so no ``TimeLimit`` wrapper is added.
"""

from __future__ import annotations

#: Gymnasium id -> entry point.
ENVS: dict[str, str] = {
    "fastenv/Remote-v0": "fastenv.gym_remote:make_remote",
    "fastenv/StackCube-v0": "fastenv.examples.mujoco_stack:StackCubeEnv",
}
#: Gymnasium id -> vector entry point (``gymnasium.make_vec``).
VECTOR_ENVS: dict[str, str] = {"fastenv/Remote-v0": "fastenv.gym_remote:make_remote_vector"}


def register_envs() -> list[str]:
    """Register :data:`ENVS` with Gymnasium (ids already registered are left alone); returns the ids."""
    try:
        import gymnasium
    except ImportError:  # pragma: no cover - Gymnasium is optional
        return []
    for env_id, entry_point in ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, vector_entry_point=VECTOR_ENVS.get(env_id))
    return list(ENVS)


register_envs()
