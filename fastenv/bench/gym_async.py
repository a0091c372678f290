"""Gymnasium's ``AsyncVectorEnv`` with one env as a transport (``gym-async``).

Not a :class:`~fastenv.bench.serverproc.Baseline` subclass: Gymnasium starts
its own worker process. :class:`EnvFactory` is the picklable factory that worker
builds the workload's env with (the vector clients of ``--scaling envs`` use it
too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv.bench import malloc
from fastenv.bench.serverproc import ClosedOnExit
from fastenv.bench.workloads import Workload, get_workload
from fastenv.errors import FastEnvTimeout

__all__ = ["EnvFactory", "GymAsync"]


def _unbatch(batched: Any, like: Any) -> Any:
    """Element 0 of a batched observation, laid out like the single observation ``like``."""
    if isinstance(like, dict) and isinstance(batched, dict):
        if set(like) != set(batched):
            return batched  # a different structure: let the comparison fail
        return {k: _unbatch(batched[k], like[k]) for k in like}  # Dict spaces sort their keys
    if isinstance(like, tuple) and isinstance(batched, tuple):
        return tuple(_unbatch(b, x) for b, x in zip(batched, like))
    return batched[0]


@dataclass(frozen=True)
class EnvFactory:
    """Picklable env factory for Gymnasium's worker: the allocator setting, then the workload's env."""

    workload: Workload
    environ: tuple[tuple[str, str], ...] = ()

    def __call__(self) -> Any:
        malloc.apply(dict(self.environ))
        return self.workload.make_env()


class GymAsync(ClosedOnExit):
    """``gymnasium.vector.AsyncVectorEnv([make_env], shared_memory=True)`` with one env.

    Gymnasium's own process transport: one worker process (``spawn`` context,
    so it works from any thread) builds the env with the workload's factory (after
    applying ``server_env``'s ``MALLOC_*_`` settings with ``mallopt``, in
    whichever process builds it);
    actions go to it pickled through a ``multiprocessing.Pipe``, observations
    come back through Gymnasium's shared-memory buffers (then copied out, the
    default ``copy=True``), rewards, flags and infos pickled through the pipe.
    :meth:`step` is ``step_async`` + ``step_wait`` of a batch of one, and it
    returns Gymnasium's batched result unchanged; :meth:`comparable` unbatches
    the observation for the check (only the observation is checked: rewards,
    flags and infos come back as batched arrays). Spaces are Gymnasium's;
    ``render`` and other methods are not transported like a single env's.
    The calling script needs the usual ``if __name__ == "__main__"`` guard for
    ``spawn``. Episodes auto-reset (Gymnasium's ``NEXT_STEP`` mode); the
    workloads never truncate, so this never happens during a run.
    """

    name = "gym-async"

    def __init__(
        self, payload: str = "small", *, timeout: float = 30.0, server_env: Mapping[str, str] | None = None
    ) -> None:
        workload = get_workload(payload)
        self.payload = payload
        self.timeout = float(timeout)
        self._closed = True
        try:
            from gymnasium.vector import AsyncVectorEnv
        except ImportError as exc:
            raise ImportError(f"gym-async needs gymnasium: {exc}") from exc
        factory = EnvFactory(workload, tuple(sorted((server_env or {}).items())))
        self._env = AsyncVectorEnv([factory], shared_memory=True, context="spawn", daemon=True)
        self._closed = False

    def _wait(self, result: Callable[[float], Any]) -> Any:
        import multiprocessing

        try:
            return result(self.timeout)
        except multiprocessing.TimeoutError:
            raise FastEnvTimeout(f"{self.name}: no reply within {self.timeout:.0f}s") from None

    def reset(self, seed: int | None = None) -> Any:
        """``reset(seed=seed)`` of the vector env: ``(batched observation, infos)``."""
        self._env.reset_async(seed=seed)
        return self._wait(lambda timeout: self._env.reset_wait(timeout=timeout))

    def step(self, action: Any) -> Any:
        """One vector step with the batch ``action[None]``; Gymnasium's batched 5-tuple."""
        self._env.step_async(np.asarray(action)[None])
        return self._wait(lambda timeout: self._env.step_wait(timeout=timeout))

    @property
    def server_pid(self) -> int | None:
        """The Gymnasium worker process's id (``None`` when it cannot be reached)."""
        processes = getattr(self._env, "processes", None) or []
        return processes[0].pid if processes and not self._closed else None

    @staticmethod
    def comparable(result: Any, expected: Any) -> tuple[Any, Any]:
        """``(observation of env 0, the local env's observation)`` from a reset or step result."""
        return _unbatch(result[0], expected[0]), expected[0]

    def close(self) -> None:
        """Stop the worker (terminated if it does not exit within the timeout); safe twice."""
        if self._closed:
            return
        self._closed = True
        self._env.close(timeout=self.timeout)

    def __repr__(self) -> str:
        return f"<GymAsync payload={self.payload!r}>"
