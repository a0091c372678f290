"""Other libraries' multiprocess vectorizers as rows of ``fastenv-bench --scaling envs``: the peers.

- ``sb3-subproc``: Stable-Baselines3's ``SubprocVecEnv`` (one process per env,
  pickled actions and observations on pipes); needs ``stable-baselines3``.
  Its workers are forked (the client has imported SB3 already; its default
  ``forkserver`` would import torch again in every worker).
- ``puffer-mp``: PufferLib's ``Multiprocessing`` vectorizer (workers writing
  into shared buffers), synchronous (``batch_size`` = every env); needs
  ``pufferlib``, which is often not installed: the row is then reported
  unavailable and skipped (:func:`peer_missing`).

Both have the ``reset(seed)`` / ``step(actions)`` / ``comparable`` / ``close``
shape of :func:`fastenv.bench.timing.measure`'s clients. SB3's results are
checked against the local ``SyncVectorEnv`` like every row (observations,
rewards, and ``dones`` against terminations or truncations). PufferLib's
emulation layer returns its own flattened batch and seeds its envs its own
way, so only the observations' shape and dtype are checked.

``benchmarks/bench_vector_pool.py`` builds its PufferLib rows with
:func:`puffer_env` and :func:`peer_missing` too.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

import numpy as np

from fastenv.bench.gym_async import EnvFactory
from fastenv.bench.workloads import Workload
from fastenv.errors import MissingDependency

__all__ = ["PEER_VECTORS", "PufferVector", "Sb3Vector", "peer_missing", "puffer_env"]

#: The peers' row names, and the modules each needs.
_NEEDS: dict[str, tuple[str, ...]] = {
    "sb3-subproc": ("stable_baselines3.common.vec_env",),
    "puffer-mp": ("pufferlib.emulation", "pufferlib.vector"),
}
PEER_VECTORS: tuple[str, ...] = tuple(_NEEDS)


def peer_missing(name: str, workload: Workload | None = None) -> str | None:
    """Why peer ``name`` cannot run here (its library is not installed), or None; imports no peer library.

    With ``workload``: also when its env is not a ``gymnasium.Env`` (SB3 takes nothing else).
    """
    package = _NEEDS[name][0].partition(".")[0]
    if importlib.util.find_spec(package) is None:
        return f"{name} needs {package}, which is not installed here"
    if name == "sb3-subproc" and workload is not None:
        import gymnasium

        module, _, attr = workload.target.partition(":")
        made = getattr(importlib.import_module(module), attr)
        if not (isinstance(made, type) and issubclass(made, gymnasium.Env)):
            return f"{name} steps gymnasium.Env subclasses only, and {workload.target} is not one"
    return None


def _require(name: str) -> None:
    """Import what peer ``name`` needs; :class:`MissingDependency` if any of it does not import."""
    for module in _NEEDS[name]:
        try:
            importlib.import_module(module)
        except Exception as exc:  # missing, or broken by one of its own dependencies
            raise MissingDependency(
                f"{name} needs {module.partition('.')[0]}, which does not import here ({type(exc).__name__}: {exc})"
            ) from None


def _obs_and_rewards(got: Any, expected: Any) -> tuple[Any, Any]:
    """A reset's observations as they are; a step's observations, float64 rewards and done flags."""
    if len(got) < 4:
        return tuple(got[:1]), tuple(expected[:1])
    obs, rewards, dones = got[0], np.asarray(got[1], np.float64), np.asarray(got[2], bool)
    done = np.asarray(expected[2], bool) | np.asarray(expected[3], bool)
    return (obs, rewards, dones), (expected[0], np.asarray(expected[1], np.float64), done)


class Sb3Vector:
    """``stable_baselines3.common.vec_env.SubprocVecEnv`` over ``num_envs`` of ``workload``'s envs.

    Raises:
        MissingDependency: stable-baselines3 does not import.
    """

    def __init__(self, workload: Workload, num_envs: int) -> None:
        _require("sb3-subproc")
        from stable_baselines3.common.vec_env import SubprocVecEnv

        self._env = SubprocVecEnv([EnvFactory(workload)] * num_envs, start_method="fork")
        self._closed = False

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        self._env.seed(seed)  # env i gets seed + i at this reset, as in Gymnasium's vector envs
        return self._env.reset(), {}

    def step(self, actions: Any) -> Any:
        return self._env.step(actions)

    comparable = staticmethod(_obs_and_rewards)

    def close(self) -> None:
        """Stop the worker processes; safe twice."""
        if not self._closed:
            self._closed = True
            self._env.close()


def puffer_env(*args: Any, buf: Any = None, seed: int = 0, target: str, **env_kwargs: Any) -> Any:
    """One PufferLib-wrapped env of ``target`` (module level, so PufferLib's worker processes can pickle it)."""
    from pufferlib.emulation import GymnasiumPufferEnv

    from fastenv.vector.worker_sizing import TargetFactory

    return GymnasiumPufferEnv(env_creator=TargetFactory(target, env_kwargs), buf=buf, seed=seed)


def _divisor_workers(num_envs: int) -> int:
    """The most workers that divide ``num_envs`` (PufferLib requires it), one per usable CPU but the caller's.

    PufferLib's workers and its main process busy-wait for each other: a
    worker on every CPU leaves the main process none, and each batch then
    waits for the scheduler (about 8 ms a batch on 2 CPUs, whatever the env).
    """
    from fastenv.vector.worker_sizing import usable_cpus

    most = max(1, min(num_envs, usable_cpus() - 1))
    return max(w for w in range(1, most + 1) if num_envs % w == 0)


class PufferVector:
    """PufferLib's ``Multiprocessing`` vectorizer over ``num_envs`` of ``workload``'s envs.

    Args:
        batch_size: envs per ``recv`` (None: all of them, a synchronous step;
            fewer: the first workers done, PufferLib's async mode, where
            :meth:`step` takes that many rows of actions).
        num_workers: worker processes (None: the most that divide
            ``num_envs``, at most one per usable CPU but one).

    Raises:
        MissingDependency: pufferlib does not import.
    """

    def __init__(
        self, workload: Workload, num_envs: int, *, batch_size: int | None = None, num_workers: int | None = None
    ) -> None:
        _require("puffer-mp")
        import pufferlib.vector

        self._env = pufferlib.vector.make(
            functools.partial(puffer_env, target=workload.target, **workload.env_kwargs),
            backend=pufferlib.vector.Multiprocessing,
            num_envs=num_envs,
            num_workers=_divisor_workers(num_envs) if num_workers is None else num_workers,
            batch_size=num_envs if batch_size is None else batch_size,
            overwork=True,
        )
        self._closed = False

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        self._env.async_reset(0 if seed is None else seed)
        return self._env.recv()[0], {}

    def step(self, actions: Any) -> Any:
        self._env.send(actions)
        return self._env.recv()

    @staticmethod
    def comparable(got: Any, expected: Any) -> tuple[Any, Any]:
        """The observations' shape and dtype only (see the module docstring)."""
        obs, want = np.asarray(got[0]), np.asarray(expected[0])
        return (obs.shape, str(obs.dtype)), (want.shape, str(want.dtype))

    def close(self) -> None:
        """Stop the worker processes; safe twice."""
        if not self._closed:
            self._closed = True
            self._env.close()
