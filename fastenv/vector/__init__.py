"""Many envs per server, and a Gymnasium ``VectorEnv`` over one or more servers.

- :class:`VectorHost` (server side): N env instances that a server serves as
  one env (``fastenv serve TARGET --num-envs N``).
- :class:`FastVectorEnv` (client side): ``gymnasium.vector.VectorEnv`` over the
  envs of one or more such servers, on this host or others.
- :class:`FastBatchedVectorEnv` (client side): ``gymnasium.vector.VectorEnv``
  over one served env that is batched inside (Isaac Lab's shape: ``num_envs``
  rows in one env object); ``FastVectorEnv.batched(address)`` makes one.

Needs Gymnasium (``pip install "fastenv[gym]"``).
"""

from fastenv.errors import MissingDependency

try:
    import gymnasium.vector  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without gymnasium
    raise MissingDependency('fastenv.vector needs Gymnasium: pip install "fastenv[gym]"') from exc

from fastenv.vector.batched import FastBatchedVectorEnv
from fastenv.vector.client import FastVectorEnv
from fastenv.vector.host import VectorHost

__all__ = ["FastBatchedVectorEnv", "FastVectorEnv", "VectorHost"]
