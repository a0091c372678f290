"""RLlib (new API stack) env creator that connects to servers placed by :func:`fastenv.ray.place_servers`.

Register it once (:func:`register_env`) and name it in the algorithm's
config with :func:`env_config` as its ``env_config``. RLlib's env runners
call the creator in their own processes:

- with ``gym_env_vectorize_mode="vector_entry_point"`` RLlib asks for the
  whole batch of ``num_envs_per_env_runner`` envs at once, and the creator
  returns a :class:`~fastenv.ray.RayVectorEnv` over every server of the
  group (each runner gets its own sessions, hence its own envs, on
  per-client servers): one step is one round trip per server, and a
  restarted server's envs are recreated. ``num_envs_per_env_runner`` must
  equal the group's env count.
- otherwise (RLlib's default ``"sync"`` mode) each sub-env is one
  :class:`~fastenv.FastRemoteEnv` session, spread over the servers, for
  servers placed without ``num_envs``.

Example::

    group = fastenv.ray.place_servers("CartPole-v1", 2, num_envs=2, auth="generate")
    config = (
        PPOConfig()
        .environment(fastenv.ray.rllib.register_env(), env_config=fastenv.ray.rllib.env_config(group))
        .env_runners(num_envs_per_env_runner=4, gym_env_vectorize_mode="vector_entry_point")
    )
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastenv.client import FastRemoteEnv
from fastenv.ray.placement import ServerGroup

ENV_NAME = "fastenv"
_GROUP = "fastenv_group"
_CLIENT = "fastenv_client_kwargs"


def env_config(group: ServerGroup, **client_kwargs: Any) -> dict[str, Any]:
    """The ``env_config`` for the creator: the group (its actor handles travel with it) and client options.

    The group's client keys go with it when it uses authentication: they
    travel to the env runners as part of the config.
    """
    return {_GROUP: group, _CLIENT: {"timeout": 60.0, **client_kwargs}}


def make_env(config: Mapping[str, Any]) -> Any:
    """RLlib env creator: a :class:`~fastenv.ray.RayVectorEnv` when asked for ``num_envs``, else one remote env.

    Args:
        config: the ``env_config`` from :func:`env_config`, as RLlib passes it
            (an ``EnvContext`` with ``worker_index`` and ``vector_index``; with
            ``"num_envs"`` added in ``vector_entry_point`` mode).
    """
    group: ServerGroup = config[_GROUP]
    client_kwargs = dict(config.get(_CLIENT, {}))
    num_envs = config.get("num_envs")
    if num_envs is not None:
        from fastenv.ray.vector import RayVectorEnv

        envs = RayVectorEnv(group, **client_kwargs)
        if envs.num_envs != num_envs:
            envs.close()
            raise ValueError(
                f"RLlib asked for {num_envs} envs per env runner, but the servers hold {envs.num_envs}: "
                "set num_envs_per_env_runner to the group's env count"
            )
        return envs
    index = int(getattr(config, "worker_index", 0)) + int(getattr(config, "vector_index", 0))
    address = group.addresses[index % len(group)]
    return FastRemoteEnv(address, **group.client_kwargs(), **client_kwargs)


def register_env(name: str = ENV_NAME) -> str:
    """Register :func:`make_env` with RLlib (``ray.tune.registry``) under ``name``; returns the name."""
    from ray.tune.registry import register_env as register

    register(name, make_env)
    return name
