"""``gymnasium.make("fastenv/Remote-v0", address=...)`` and ``gymnasium.make_vec``: served envs by id.

The entry points :data:`fastenv.gym_envs.ENVS` registers for ``fastenv/Remote-v0``:
:func:`make_remote` connects a :class:`~fastenv.FastRemoteEnv`;
:func:`make_remote_vector` (``make_vec``'s default mode) a
:class:`~fastenv.FastVectorEnv` over the server's ``--num-envs`` envs. With
``vectorization_mode="sync"`` or ``"async"``, ``make_vec`` opens one session
per env instead (per-client servers give each its own env).
"""

from __future__ import annotations

from typing import Any

from fastenv.client import FastRemoteEnv
from fastenv.vector.client import FastVectorEnv


def make_remote(address: str, *, render_mode: str | None = None, **kwargs: Any) -> FastRemoteEnv:
    """A client of the env served at ``address``; ``kwargs`` are :class:`~fastenv.FastRemoteEnv`'s.

    The served env's render mode is set where it runs: a ``render_mode``
    asked for here must be that one (``ValueError`` otherwise).
    """
    env = FastRemoteEnv(address, **kwargs)
    if render_mode is not None and render_mode != env.render_mode:
        env.close()
        raise ValueError(
            f"render_mode={render_mode!r} was asked for, but the served env renders {env.render_mode!r}: "
            "set it where the env is served (fastenv serve ... --env-kwargs '{\"render_mode\": ...}')"
        )
    return env


def make_remote_vector(address: str | list[str], *, num_envs: int | None = None, **kwargs: Any) -> FastVectorEnv:
    """A vector env over the envs served at ``address`` (one or several servers).

    ``num_envs``, when given, must match how many envs the servers host
    (``ValueError`` otherwise): the servers decide it (``--num-envs``).
    """
    kwargs.pop("max_episode_steps", None)  # the served envs apply their own time limits
    envs = FastVectorEnv(address, **kwargs)
    if num_envs is not None and num_envs != envs.num_envs:
        count = envs.num_envs
        envs.close()
        raise ValueError(f"num_envs={num_envs} was asked for, but the servers at {address!r} host {count} envs")
    return envs
