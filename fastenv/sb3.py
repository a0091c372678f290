"""Stable-Baselines3: a ``VecEnv`` over served envs, in place of ``SubprocVecEnv``.

Needs ``pip install "fastenv[sb3]"``. Each env is one session on a fastenv
server: give a list of addresses (one env each), or one address of a
``--mode per-client`` server and ``num_envs`` (each session gets its own env
there)::

    from stable_baselines3 import PPO
    from fastenv.sb3 import RemoteVecEnv

    venv = RemoteVecEnv("127.0.0.1:5555", num_envs=8)   # fastenv serve CartPole-v1 --mode per-client
    PPO("MlpPolicy", venv, seed=0).learn(10_000)

It behaves as ``SubprocVecEnv`` over the same envs, seed for seed: the same
observations, rewards, dones and infos (``"TimeLimit.truncated"``, and
``"terminal_observation"`` when an episode ends and the env is reset in the
same step), ``reset_infos``, ``seed`` and ``set_options``. A step is sent to
every env before any reply is awaited, so the servers step in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastenv.client import FastRemoteEnv
from fastenv.errors import MissingDependency

try:
    from gymnasium import spaces
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency('fastenv.sb3 needs Stable-Baselines3: pip install "fastenv[sb3]"') from exc


def _stack(observations: list[Any], space: spaces.Space) -> Any:
    """One batch from per-env observations, shaped as ``SubprocVecEnv`` shapes it."""
    if isinstance(space, spaces.Dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in space.spaces}
    if isinstance(space, spaces.Tuple):
        return tuple(np.stack([obs[i] for obs in observations]) for i in range(len(space.spaces)))
    return np.stack(observations)


class RemoteVecEnv(VecEnv):
    """An SB3 ``VecEnv`` whose envs are served by fastenv (see the module docstring).

    Args:
        addresses: one address per env, or a single address (with ``num_envs``).
        num_envs: with a single address, how many sessions to open on it.
        **client_kwargs: passed to every :class:`~fastenv.FastRemoteEnv`
            (``timeout``, ``transport``, ...).
    """

    def __init__(self, addresses: str | Sequence[str], num_envs: int | None = None, **client_kwargs: Any) -> None:
        if isinstance(addresses, str):
            addresses = [addresses] * (num_envs or 1)
        elif num_envs is not None and num_envs != len(addresses):
            raise ValueError(f"num_envs={num_envs} does not match the {len(addresses)} addresses given")
        if not addresses:
            raise ValueError("give at least one address")
        self.remotes: list[FastRemoteEnv] = []
        try:
            for address in addresses:
                self.remotes.append(FastRemoteEnv(address, **client_kwargs))
        except BaseException:
            self.close()
            raise
        first = self.remotes[0]
        super().__init__(len(self.remotes), first.observation_space, first.action_space)

    # ------------------------------------------------------------------ stepping

    def reset(self) -> Any:
        """Reset every env with its seed and options (those set by :meth:`seed` / ``set_options``, used once)."""
        for index, remote in enumerate(self.remotes):
            options = self._options[index]
            kwargs = {"seed": self._seeds[index], **({"options": options} if options else {})}
            remote.send_call("reset", (), kwargs)
        observations, reset_infos = [], []
        for remote in self.remotes:
            obs, info = remote.receive_result()
            observations.append(obs)
            reset_infos.append(info)
        self.reset_infos = tuple(reset_infos)  # each env's latest reset info, as SubprocVecEnv keeps them
        self._reset_seeds()
        self._reset_options()
        return _stack(observations, self.observation_space)

    def step_async(self, actions: np.ndarray) -> None:
        """Send each env its action; :meth:`step_wait` collects the results."""
        for remote, action in zip(self.remotes, actions):
            remote.send_call("step", (action,))

    def step_wait(self) -> VecEnvStepReturn:
        """Results of the steps sent; an env whose episode ended is reset in the same step."""
        results = [remote.receive_result() for remote in self.remotes]
        ended = []
        observations, rewards, dones, infos = [], [], [], []
        for index, (obs, reward, terminated, truncated, info) in enumerate(results):
            done = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if done:
                info["terminal_observation"] = obs
                self.remotes[index].send_call("reset", ())
                ended.append(index)
            observations.append(obs)
            rewards.append(reward)
            dones.append(done)
            infos.append(info)
        if ended:
            reset_infos = list(self.reset_infos)
            for index in ended:
                observations[index], reset_infos[index] = self.remotes[index].receive_result()
            self.reset_infos = tuple(reset_infos)
        return _stack(observations, self.observation_space), np.stack(rewards), np.stack(dones), tuple(infos)

    # ------------------------------------------------------------------ the envs' own attributes and methods

    def _targets(self, indices: VecEnvIndices) -> list[FastRemoteEnv]:
        return [self.remotes[index] for index in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of each env (read on the server)."""
        return [getattr(remote, attr_name) for remote in self._targets(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Not possible remotely: attributes are set where the env runs."""
        raise AttributeError(f"cannot set {attr_name!r} on served envs: call a method of theirs that sets it")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        """Call a method of each env on the server."""
        return [remote.call(method_name, *method_args, **method_kwargs) for remote in self._targets(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """Whether each served env is wrapped in ``wrapper_class`` (from the wrapper chain the server described)."""
        name = f"{wrapper_class.__module__}.{wrapper_class.__qualname__}"
        return [name in remote.env_info.get("wrappers", ()) for remote in self._targets(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each env's ``render()`` (``render_mode="rgb_array"`` on the server)."""
        return [remote.render() for remote in self.remotes]

    def close(self) -> None:
        """Close every session (per-client servers close their envs)."""
        for remote in getattr(self, "remotes", ()):
            remote.close()
        self.closed = True

    @property
    def addresses(self) -> list[str]:
        """Each env's server."""
        return [remote.address for remote in self.remotes]

