"""The vector env a server hosts for ``fastenv serve TARGET --num-envs N`` (``--workers``, ``--autoreset``).

:func:`make_vector_host` builds it for each new env the server needs (once in
shared mode, once per session in per-client mode): a
:class:`~fastenv.vector.host.VectorHost` stepping the envs in the server
process, or a :class:`~fastenv.vector.workers.WorkerVectorHost` stepping them
in worker processes, started in the autoreset mode the server declares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gymnasium.vector import AutoresetMode

from fastenv.errors import ServerConfigError
from fastenv.vector.arguments import autoreset_mode
from fastenv.vector.host import VectorHost

log = logging.getLogger("fastenv.vector.serving")


def check_vector_options(
    num_envs: int | None, workers: int | str | None, mode: AutoresetMode | str | None
) -> AutoresetMode | None:
    """Validate ``EnvServer``'s vector options; the declared autoreset mode, parsed (None: not declared).

    Raises:
        ServerConfigError: ``workers`` or ``mode`` without ``num_envs``, a bad
            worker count, or ``mode`` not ``next-step`` / ``same-step``.
    """
    if workers is not None and (
        num_envs is None or (workers != "auto" and (not isinstance(workers, int) or workers < 1))
    ):
        raise ServerConfigError("workers needs num_envs, and must be 'auto' or at least 1")
    if mode is None:
        return None
    if num_envs is None:
        raise ServerConfigError("autoreset_mode needs num_envs: only vector envs autoreset")
    return autoreset_mode(mode)


def make_vector_host(
    factory: Callable[[], Any],
    num_envs: int,
    *,
    workers: int | str | None = None,
    declared: AutoresetMode | None = None,
    fixed: bool = False,
) -> VectorHost:
    """``num_envs`` envs from ``factory`` behind one host, autoresetting as ``declared``.

    Args:
        factory: makes one env (picklable when ``workers`` is set: workers
            build their own envs).
        num_envs: how many envs.
        workers: step the envs in this many worker processes (``"auto"``: one
            per usable CPU); None: in this process.
        declared: the autoreset mode to start in (None: Gymnasium's default,
            next-step, which a client may switch).
        fixed: refuse clients that ask for another mode than ``declared``
            (a shared server: every client steps the same envs).
    """
    if workers is not None:
        from fastenv.vector.workers import WorkerVectorHost  # loads the worker machinery only when asked

        host: VectorHost = WorkerVectorHost(factory, num_envs, None if workers == "auto" else int(workers))
    else:
        envs: list[Any] = []
        try:
            for _ in range(num_envs):
                envs.append(factory())
            host = VectorHost(envs)
        except BaseException:
            _close_all(envs)
            raise
    if declared is not None:
        try:
            host.declare_autoreset_mode(declared, fixed=fixed)
        except BaseException:
            host.close()
            raise
    return host


def _close_all(envs: list[Any]) -> None:
    """Close the envs built before a failure; log (and otherwise ignore) what closing them raises."""
    for env in envs:
        close = getattr(env, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception:  # the build failure is the error to report
            log.exception("closing env %r failed", env)
