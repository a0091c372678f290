"""FastBatchedVectorEnv: a Gymnasium ``VectorEnv`` over one served env that is batched inside.

GPU simulators such as Isaac Lab step ``num_envs`` copies of a scene in one
env object: ``step`` takes a ``[num_envs, ...]`` batch of actions and returns
batched tensors. Served as one env (``fastenv serve TARGET``, no
``--num-envs``), such an env is already a vector env; this class gives it
Gymnasium's ``VectorEnv`` interface on the client, one session, one call per
step, and every value exactly as the served env returned it (torch tensors
stay tensors, observation groups stay a dict).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fastenv.client import FastRemoteEnv
from fastenv.errors import ClientClosedError, IncompatibleEnvsError
from fastenv.session.client import DEFAULT_TIMEOUT


def parse_autoreset_mode(value: Any) -> AutoresetMode:
    """``value`` as an :class:`~gymnasium.vector.AutoresetMode`.

    Accepts a member, its value (``"SameStep"``), its name (``"SAME_STEP"``)
    or the snake-case spelling (``"same_step"``).

    Raises:
        ValueError: ``value`` names no autoreset mode.
    """
    if isinstance(value, AutoresetMode):
        return value
    if isinstance(value, str):
        for mode in AutoresetMode:
            if value in (mode.value, mode.name) or value.upper() == mode.name:
                return mode
    choices = ", ".join(f"{mode.name.lower()!r}" for mode in AutoresetMode)
    raise ValueError(f"{value!r} is not an autoreset mode (one of {choices}, or a gymnasium AutoresetMode)")


class FastBatchedVectorEnv(VectorEnv):
    """Gymnasium's ``VectorEnv`` over one served env that is batched inside (Isaac Lab's shape).

    The served env must have an integer ``num_envs``, ``single_observation_space``
    and ``single_action_space``; its ``step(actions)`` takes a batch of
    ``num_envs`` actions and returns ``(obs, rewards, terminations,
    truncations, infos)`` for every row, and its ``reset(seed=, options=)``
    returns ``(obs, infos)``. The env resets its done rows itself; its
    ``metadata["autoreset_mode"]`` says when (``AutoresetMode.SAME_STEP``,
    Isaac Lab's way, or ``NEXT_STEP``, Gymnasium's), and becomes this vector
    env's ``metadata["autoreset_mode"]``.

    Calls go through one :class:`~fastenv.FastRemoteEnv` session: a step is one
    round trip whatever ``num_envs`` is. Results are returned exactly as the
    served env returned them: the same types (torch tensors stay tensors of
    the same dtype and shape), the same structure (observation groups stay a
    dict), infos untouched. On shared memory the arrays and tensors are views
    of the session's arena, never written again while the caller holds them
    (``copy=True`` gives owned ones).

    Args:
        address: the server's address (``fastenv serve TARGET`` printed it).
        autoreset_mode: when the served env's ``metadata`` does not say (or says
            wrongly), how it autoresets: an ``AutoresetMode`` or its name
            (``"same_step"``, ``"next_step"``, ``"disabled"``).
        **client_kwargs: passed to :class:`~fastenv.FastRemoteEnv` (``timeout``,
            ``transport``, ``copy``, ``auth``, ``device``, ...).

    Raises:
        IncompatibleEnvsError: the served env is not batched (no integer
            ``num_envs`` or no single-row spaces), or it does not say how it
            autoresets and ``autoreset_mode`` was not given.

    Example::

        with fastenv.FastVectorEnv.batched("gpu-box:5555") as envs:
            obs, infos = envs.reset(seed=0)
            obs, rewards, terminations, truncations, infos = envs.step(policy(obs["policy"]))
    """

    def __init__(self, address: str, *, autoreset_mode: AutoresetMode | str | None = None, **client_kwargs: Any) -> None:
        if "vector" in client_kwargs:
            raise TypeError("FastBatchedVectorEnv drives the served env as it is; vector= does not apply")
        self.closed = False
        self.remote = FastRemoteEnv(address, **client_kwargs)
        try:
            self._describe(autoreset_mode)
        except BaseException:
            self.closed = True
            self.remote.close()
            raise

    def _describe(self, override: AutoresetMode | str | None) -> None:
        """Read the batch size, spaces and autoreset mode the handshake described."""
        remote = self.remote
        attributes = remote.env_info.get("attributes", {})
        num_envs = attributes.get("num_envs")
        missing = [name for name in ("single_observation_space", "single_action_space") if name not in attributes]
        if not isinstance(num_envs, numbers.Integral) or isinstance(num_envs, bool) or num_envs < 1 or missing:
            what = f"num_envs={num_envs!r}" if not missing else f"no {' or '.join(missing)}"
            raise IncompatibleEnvsError(
                f"the env served at {remote.address} ({remote.env_info.get('class')}) is not batched ({what}): "
                "FastVectorEnv.batched needs an env with an integer num_envs, single_observation_space and "
                "single_action_space; drive a plain env with FastRemoteEnv, or serve it with --num-envs N and "
                "use FastVectorEnv"
            )
        self.num_envs = int(num_envs)
        self.single_observation_space = attributes["single_observation_space"]
        self.single_action_space = attributes["single_action_space"]
        self.observation_space = attributes.get("observation_space")
        if self.observation_space is None:
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = attributes.get("action_space")
        if self.action_space is None:
            self.action_space = batch_space(self.single_action_space, self.num_envs)
        metadata = attributes.get("metadata")
        self.metadata = dict(metadata) if isinstance(metadata, dict) else {}
        declared = self.metadata.get("autoreset_mode")
        if override is not None:
            self.metadata["autoreset_mode"] = parse_autoreset_mode(override)
        elif declared is None:
            raise IncompatibleEnvsError(
                f"the env served at {remote.address} ({remote.env_info.get('class')}) does not say how it "
                "autoresets (no metadata['autoreset_mode']); pass autoreset_mode='same_step' (Isaac Lab), "
                "'next_step' (Gymnasium) or 'disabled'"
            )
        else:
            try:
                self.metadata["autoreset_mode"] = parse_autoreset_mode(declared)
            except ValueError as exc:
                raise IncompatibleEnvsError(
                    f"the env served at {remote.address} declares metadata['autoreset_mode']={declared!r}: {exc}; "
                    "pass autoreset_mode= to say how it autoresets"
                ) from None
        self.spec = remote.spec
        self.render_mode = remote.render_mode

    # ------------------------------------------------------------------ info

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """When done rows are reset: ``AutoresetMode.SAME_STEP`` or ``NEXT_STEP`` (or ``DISABLED``)."""
        return self.metadata["autoreset_mode"]

    @property
    def transport(self) -> str:
        """The session's data plane: ``"shm"`` or ``"tcp"``."""
        return self.remote.transport

    @property
    def transport_reason(self) -> str:
        """Why the data plane was chosen, and how calls travel."""
        return self.remote.transport_reason

    @property
    def address(self) -> str:
        """The server's address."""
        return self.remote.address

    # ------------------------------------------------------------------ reset / step

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """``env.reset(seed=seed, options=options)`` on the server: ``(observations, infos)`` as it returned them."""
        self._check_open("reset")
        result = self.remote.invoke("reset", (), {"seed": seed, "options": options})
        if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):  # as VectorEnv.reset seeds np_random
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
        return result

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """``env.step(actions)`` on the server, one round trip for every row.

        Returns:
            ``(observations, rewards, terminations, truncations, infos)`` as the served env returned them.
        """
        self._check_open("step")
        return self.remote.step(actions)

    def step_async(self, actions: Any) -> None:
        """Send ``step(actions)`` and return at once; :meth:`step_wait` collects the result.

        Raises:
            AlreadyPendingError: a step is still waiting for its :meth:`step_wait`.
        """
        self._check_open("step_async")
        self.remote.step_async(actions)

    def step_wait(self, timeout: float | None = None) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The result of the step sent by :meth:`step_async`.

        Args:
            timeout: seconds to wait; None waits as long as the client's ``timeout``.

        Raises:
            NoPendingCallError: no :meth:`step_async` is pending.
            FastEnvTimeout: no result in time (the step stays pending: wait again to get it).
        """
        self._check_open("step_wait")
        return self.remote.step_wait(DEFAULT_TIMEOUT if timeout is None else timeout)

    # ------------------------------------------------------------------ other calls

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the served env's public method ``name`` (``envs.call("get_state")``); returns its result."""
        self._check_open("call")
        return self.remote.call(name, *args, **kwargs)

    def get_attr(self, name: str) -> Any:
        """The served env's attribute ``name`` (one value: the env is one object)."""
        self._check_open("get_attr")
        return getattr(self.remote, name)

    def render(self) -> Any:
        """The served env's ``render()`` result."""
        self._check_open("render")
        return self.remote.render()

    # ------------------------------------------------------------------ lifetime

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise ClientClosedError(f"{what}() on a closed FastBatchedVectorEnv")

    def close_extras(self, timeout: float = 2.0, **kwargs: Any) -> None:
        """End the session (``close()`` is idempotent and never raises for a server that is gone)."""
        self.remote.close(timeout)

    def __enter__(self) -> FastBatchedVectorEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self.__dict__.get("closed", True) and self.__dict__.get("remote") is not None:
            warnings.warn(
                f"FastBatchedVectorEnv({self.remote.address!r}) was not closed; use `with` or call close()",
                ResourceWarning,
                stacklevel=2,
            )
            self.close(timeout=0.5)

    def __repr__(self) -> str:
        name = f"{self.spec.id}, " if getattr(self, "spec", None) is not None else ""
        return f"FastBatchedVectorEnv({name}num_envs={getattr(self, 'num_envs', '?')}, address={self.remote.address!r})"
