"""fastenv servers placed on a Ray cluster, driven as one vector env (``pip install "fastenv[ray]"``).

- :func:`place_servers` starts K servers as Ray actors in a placement group
  (spread across nodes or packed), each building ``num_envs`` envs and serving
  them on its node's address; the :class:`ServerGroup` it returns knows each
  server's address and node, and shuts them down.
- :class:`RayVectorEnv` (``group.vector_env()``) is a :class:`~fastenv.FastVectorEnv`
  over them: shared memory to servers on this host, TCP to the others, as the
  probe decides; a server that Ray restarts has its envs recreated and reported.
- :mod:`fastenv.ray.rllib`: an RLlib env creator that connects to placed servers.

Ray is the engine: fastenv does not schedule, it asks Ray for bundles and
actors, and asks an actor where it serves after Ray restarted it.
"""

from fastenv.errors import MissingDependency

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without ray
    raise MissingDependency('fastenv.ray needs Ray: pip install "fastenv[ray]"') from exc

from fastenv.ray.actor import ServerActor, ServerLocation, ServerSpec
from fastenv.ray.errors import PlacementError, PlacementTimeout, ServerGone
from fastenv.ray.placement import ServerGroup, generated_keys, place_servers
from fastenv.ray.vector import RECREATED_KEY, RayVectorEnv, Recovery, ServerSlot

__all__ = [
    "RECREATED_KEY",
    "PlacementError",
    "PlacementTimeout",
    "RayVectorEnv",
    "Recovery",
    "ServerActor",
    "ServerGone",
    "ServerGroup",
    "ServerLocation",
    "ServerSlot",
    "ServerSpec",
    "generated_keys",
    "place_servers",
]
