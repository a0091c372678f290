"""Running calls on envs: the one place every route meets, and no sockets.

:meth:`Dispatcher.execute` takes a session's call from any route (the
shared-memory worker, the TCP worker, the control connection) and applies it
under the env's lock, so calls on one env are applied one at a time: that
is what makes *shared* mode (every client drives the same env) well
defined. Around the env call it checks the control lease and the observer
role, serves a repeated ``get_state()`` from the env's cache, runs
``batch_step``, and publishes what changed the env to observers.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from typing import Any

from fastenv import envinfo, tensors
from fastenv.batching import EMPTY_DICTS, pack_results, unpack_column
from fastenv.errors import ControlDenied, LeaseHeld, UnknownMethodError
from fastenv.observe import TransitionPublisher
from fastenv.protocol import BATCH_STEP, GETATTR, LEASE
from fastenv.session.table import EnvHandle, Session
from fastenv.wire import ErrorKind, error_body

log = logging.getLogger("fastenv.server")

# Calls that leave the env as it was: allowed to observers and while another client holds
# the lease, and not published as transitions. Everything else counts as changing the env.
READ_ONLY_CALLS = frozenset({GETATTR, "get_state", "render"})
MAX_BATCH_STEPS = 1 << 16  # most actions in one batch_step


class Dispatcher:
    """Applies sessions' calls to their envs.

    Attributes:
        publisher: where transitions of the shared env go (None: no observers).
        shared: the shared env's handle (shared mode), the only one observers see.
        stats: counters shared with the server (``env_errors``).
    """

    def __init__(self, stats: dict[str, int]) -> None:
        self.publisher: TransitionPublisher | None = None
        self.shared: EnvHandle | None = None
        self.stats = stats

    def executor_for(self, session: Session) -> Callable[[str, tuple, dict], tuple[bool, Any]]:
        """``(name, args, kwargs) -> (ok, value)`` for ``session``'s calls: :meth:`execute`, on the env's thread if it has one."""
        runner = session.handle.runner
        execute = self.execute if session.peer.get("tensors") != "numpy" else self._execute_as_numpy
        if runner is None:
            return functools.partial(execute, session)
        return functools.partial(runner.run, execute, session)

    def _execute_as_numpy(self, session: Session, name: str, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """:meth:`execute`, its result's tensors made numpy arrays (a client that asked for ``tensors="numpy"``)."""
        ok, value = self.execute(session, name, args, kwargs)
        return (True, tensors.as_numpy(value)) if ok else (ok, value)

    def execute(self, session: Session, name: str, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """Run one call on the session's env; ``(True, value)`` or ``(False, error body)``.

        Used by the ZeroMQ path and by the data-plane workers; the env lock
        applies calls one at a time, checks the control lease, serves a
        repeated ``get_state()`` from its cache, and publishes what changed
        the env to observers.
        """
        session.calls += 1
        handle = session.handle
        try:
            with handle.lock:
                method = session.methods.get(name)
                if method is not None:  # reset or step, already resolved: the hot path
                    if session.role == "observer" or handle.lease not in (None, session.session_id):
                        self.check_control(session)  # raises the reason
                    handle.cached_state = None
                    result = method(*args, **kwargs)
                    if self.publisher is None:  # no observers: only count the transition
                        handle.transitions += 1
                    else:
                        self._publish(session, name, args, kwargs, result)
                    return True, result
                if name == LEASE:
                    return True, self._lease(session, args)
                changes_env = name not in READ_ONLY_CALLS
                if changes_env:
                    self.check_control(session)
                    handle.cached_state = None
                elif name == "get_state" and not args and not kwargs:
                    cached = handle.cached_state
                    if cached is not None and cached[0] == id(session.env):
                        return True, cached[1]
                if name == BATCH_STEP:
                    return True, self._batch_step(session, args, kwargs)
                result = _invoke(session, name, args, kwargs)
                if changes_env:
                    self._publish(session, name, args, kwargs, result)
                elif name == "get_state" and not args and not kwargs:
                    handle.cached_state = (id(session.env), result)
                return True, result
        except ControlDenied as exc:
            return False, error_body(ErrorKind.CONTROL, exc)
        except UnknownMethodError as exc:
            return False, error_body(ErrorKind.UNKNOWN_METHOD, exc)
        except Exception as exc:
            self.stats["env_errors"] += 1
            return False, error_body(ErrorKind.REMOTE, exc, traceback.format_exc())

    def check_control(self, session: Session) -> None:
        """Raise :class:`ControlDenied` if ``session`` may not change the env now (env lock held)."""
        if session.role == "observer":
            raise ControlDenied("this client is an observer: it cannot change the env (connect with role='shared')")
        holder = session.handle.lease
        if holder is not None and holder != session.session_id:
            raise LeaseHeld(f"another client (session {holder}) holds the control lease of this env")

    def _lease(self, session: Session, args: tuple) -> Any:
        """``acquire`` / ``release`` / ``holder`` of the control lease (env lock held)."""
        handle = session.handle
        action = args[0] if len(args) == 1 else None
        if action == "holder":
            return handle.lease
        if action == "acquire":
            self.check_control(session)
            handle.lease = session.session_id
            return True
        if action == "release":
            if handle.lease == session.session_id:
                handle.lease = None
                return True
            return False
        raise UnknownMethodError("the lease takes one of 'acquire', 'release', 'holder'")

    def _publish(self, session: Session, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        """Count a call that changed the env, and tell the observers about it."""
        handle = session.handle
        handle.transitions += 1
        publisher = self.publisher
        # only the shared env has observers (not an env a trusted client shipped for itself)
        if publisher is not None and publisher.active and name != GETATTR and handle is self.shared:
            publisher.publish(handle.transitions, name, args, kwargs, result, session.session_id)

    def _batch_step(self, session: Session, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Step once per action, stopping after a step that ends the episode (env lock held).

        Returns the results packed in columns (:mod:`fastenv.batching`).
        """
        if len(args) != 2 or kwargs or not isinstance(args[1], tuple) or len(args[1]) != 2:
            raise TypeError("batch_step takes (count, packed column of actions)")
        count, (kind, column) = args
        if type(count) is not int or not 0 <= count <= MAX_BATCH_STEPS:
            raise ValueError(f"batch_step takes from 0 to {MAX_BATCH_STEPS} actions")
        if kind == EMPTY_DICTS and column != count:  # a count to expand: never larger than the batch
            raise ValueError("batch column length does not match the batch")
        actions = unpack_column(str(kind), column, count)
        step = session.methods.get("step")
        if step is None:
            step = envinfo.resolve_member(session.env, "step")
            session.methods["step"] = step
        results = []
        for action in actions:
            result = step(action)
            self._publish(session, "step", (action,), {}, result)
            results.append(result)
            if episode_over(result):
                break
        return pack_results(results)


def _invoke(session: Session, name: str, args: tuple, kwargs: dict) -> Any:
    """Resolve and run one call on the session's env (the env lock is held)."""
    env = session.env
    if name == GETATTR:
        if len(args) != 1 or kwargs:
            raise UnknownMethodError("attribute reads take exactly one name")
        return envinfo.resolve_member(env, args[0])
    if name in envinfo.RESERVED_METHODS:
        raise UnknownMethodError(f"{name!r} cannot be called remotely: close the client to end the session")
    member = envinfo.resolve_member(env, name)
    if not callable(member):
        raise UnknownMethodError(f"{name!r} is an attribute, not a method: read it as env.{name}")
    if name in ("reset", "step") and len(session.methods) < 64:
        session.methods[name] = member  # the hot calls skip the lookup from now on
    return member(*args, **kwargs)


def episode_over(result: Any) -> bool:
    """Whether a step result ends the episode (Gymnasium 5-tuple or legacy 4-tuple)."""
    if isinstance(result, tuple) and len(result) == 5:
        return bool(result[2]) or bool(result[3])
    if isinstance(result, tuple) and len(result) == 4:
        return bool(result[2])
    return False


def close_quietly(env: Any) -> None:
    """Close ``env`` if it has ``close``; log what it raises (an env failing to close must not stop the server)."""
    close = getattr(env, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # an env that fails to close must not stop the server's shutdown
        log.exception("closing env %r failed", env)
