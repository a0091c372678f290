"""Running calls on envs: the one place every route meets, and no sockets.

:meth:`Dispatcher.execute` takes a session's call from any route (the
shared-memory worker, the TCP worker, the control connection) and applies it
under the env's lock, so calls on one env are applied one at a time: that
is what makes *shared* mode (every client drives the same env) well
defined. Around the env call it checks the control lease and the observer
role, serves a repeated ``get_state()`` from the env's cache, runs
``batch_step``, and publishes what changed the env to observers.

The state cache assumes the env changes only through calls. An env whose
state moves on its own (a real robot, a simulator running in real time on
a thread of its own) says so with ``metadata[STATE_CACHE] = False``, and
every ``get_state()`` then asks it.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from fastenv import envinfo, tensors
from fastenv.batching import EMPTY_DICTS, pack_results, unpack_column
from fastenv.errors import ControlDenied, FastEnvError, LeaseHeld, UnknownMethodError
from fastenv.metrics import ServerMetrics
from fastenv.observe import TransitionPublisher
from fastenv.recording.recorder import Recorder
from fastenv.protocol import BATCH_STEP, GETATTR, LEASE
from fastenv.session.deadline import DEADLINE, DeadlineWatch, parse_deadline
from fastenv.session.table import EnvHandle, Session
from fastenv.wire import ErrorKind, error_body

log = logging.getLogger("fastenv.server")
_perf_ns = time.perf_counter_ns

# Calls that leave the env as it was: allowed to observers and while another client holds
# the lease, and not published as transitions. Everything else counts as changing the env.
READ_ONLY_CALLS = frozenset({GETATTR, "get_state", "render"})
MAX_BATCH_STEPS = 1 << 16  # most actions in one batch_step
# The env metadata key that, set to False, turns the get_state() cache off for an env whose state moves on its own.
STATE_CACHE = "fastenv.state_cache"


def caches_state(env: Any) -> bool:
    """Whether a repeated ``get_state()`` of ``env`` may be answered from the cache (see :data:`STATE_CACHE`)."""
    metadata = getattr(env, "metadata", None)
    return not (isinstance(metadata, dict) and metadata.get(STATE_CACHE) is False)


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
        self.deadlines = DeadlineWatch(self._apply_fallback)
        self.metrics: ServerMetrics | None = None  # what a server with a metrics port records
        self.recorder: Recorder | None = None  # where a server started with --record writes every call
        self._watched: dict[str, Session] = {}

    def executor_for(self, session: Session) -> Callable[[str, tuple, dict], tuple[bool, Any]]:
        """``(name, args, kwargs) -> (ok, value)`` for ``session``'s calls: :meth:`execute`, on the env's thread if it has one."""
        runner = session.handle.runner
        execute = self.execute if session.peer.get("tensors") != "numpy" else self._execute_as_numpy
        bound = functools.partial(execute, session) if runner is None else functools.partial(runner.run, execute, session)
        return bound if self.metrics is None else self.metrics.timed(bound, session)

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
                    if not session.timed:
                        result = method(*args, **kwargs)
                    else:  # a call the metrics time
                        began = _perf_ns()
                        result = method(*args, **kwargs)
                        session.env_ns = _perf_ns() - began
                    if session.deadline is not None and session.deadline.stepped(name, args):
                        log.info("session %s is back in control", session.session_id)
                    if self.publisher is None:  # no observers: only count the transition
                        handle.transitions += 1
                    else:
                        self._publish(session, name, args, kwargs, result)
                    if self.recorder is not None:
                        self.recorder.record(session, name, args, kwargs, result)
                    return True, result
                if name == LEASE:
                    return True, self._lease(session, args)
                if name == DEADLINE:
                    return True, self._deadline(session, args)
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
                if not session.timed:
                    result = _invoke(session, name, args, kwargs)
                else:  # a call the metrics time
                    began = _perf_ns()
                    result = _invoke(session, name, args, kwargs)
                    session.env_ns = _perf_ns() - began
                if session.deadline is not None and name in ("step", "reset") and session.deadline.stepped(name, args):
                    log.info("session %s is back in control", session.session_id)
                if changes_env:
                    self._publish(session, name, args, kwargs, result)
                elif name == "get_state" and not args and not kwargs and caches_state(session.env):
                    handle.cached_state = (id(session.env), result)
                if self.recorder is not None and name != GETATTR:
                    self.recorder.record(session, name, args, kwargs, result)
                return True, result
        except ControlDenied as exc:
            return False, error_body(ErrorKind.CONTROL, exc)
        except UnknownMethodError as exc:
            return False, error_body(ErrorKind.UNKNOWN_METHOD, exc)
        except Exception as exc:
            self.stats["env_errors"] += 1
            body = error_body(ErrorKind.REMOTE, exc, traceback.format_exc())
            if self.recorder is not None and name != GETATTR:
                self.recorder.record_error(session, name, args, kwargs, body)
            return False, body

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
                if not session.owns_env:
                    self.end_deadline(session)  # a deadline guards the controller's commands
                return True
            return False
        raise UnknownMethodError("the lease takes one of 'acquire', 'release', 'holder'")

    def _publish(
        self, session: Session, name: str, args: tuple, kwargs: dict, result: Any, fallback: bool = False
    ) -> None:
        """Count a call that changed the env, and tell the observers about it."""
        handle = session.handle
        handle.transitions += 1
        publisher = self.publisher
        # only the shared env has observers (not an env a trusted client shipped for itself)
        if publisher is not None and publisher.active and name != GETATTR and handle is self.shared:
            publisher.publish(handle.transitions, name, args, kwargs, result, session.session_id, fallback)

    # ------------------------------------------------------------------ deadlines

    def _deadline(self, session: Session, args: tuple) -> Any:
        """``("set", period, tolerance, fallback)`` / ``("clear",)`` / ``("report",)`` (env lock held)."""
        action = args[0] if args else None
        if action == "report":
            return None if session.deadline is None else session.deadline.report()
        if action == "clear":
            self.end_deadline(session)
            return True
        if action != "set":
            raise UnknownMethodError("a deadline takes 'set', 'clear' or 'report'")
        if not session.owns_env and session.handle.lease != session.session_id:
            raise ControlDenied(
                "a deadline guards a controller's commands: hold the control lease first "
                "(role='controller' or acquire_control()), or serve with --mode per-client"
            )
        deadline = parse_deadline(args)
        session.deadline = deadline
        self._watched[session.session_id] = session
        self.deadlines.watch(session.session_id, time.monotonic() + deadline.period + deadline.tolerance)
        return True

    def end_deadline(self, session: Session) -> None:
        """Drop ``session``'s deadline: no fallback is applied for it any more."""
        session.deadline = None
        self._watched.pop(session.session_id, None)
        self.deadlines.forget(session.session_id)

    def session_ending(self, session: Session) -> None:
        """``session`` ends (its controller left or vanished): apply its armed fallback once more, then drop it.

        Whatever the controller commanded last must not go on after it: a
        fallback not applied since its last step is applied now.
        """
        deadline = session.deadline
        if deadline is not None and deadline.due is not None and not deadline.streak:
            try:
                session.handle.on_env_thread(self._fallback_on_env_thread, session, True)
            except FastEnvError:  # the env's thread stopped: the server is shutting down
                pass
        self.end_deadline(session)

    def _apply_fallback(self, session_id: str) -> float | None:
        """Apply a session's fallback if its deadline passed (the watch thread); returns when to look again."""
        session = self._watched.get(session_id)
        if session is None or session.ended:
            self._watched.pop(session_id, None)
            return None
        try:
            return session.handle.on_env_thread(self._fallback_on_env_thread, session)
        except FastEnvError:  # the env's thread stopped: the server is shutting down
            return None

    def _fallback_on_env_thread(self, session: Session, ending: bool = False) -> float | None:
        handle = session.handle
        with handle.lock:
            deadline = session.deadline
            if deadline is None or (session.ended and not ending):
                return None
            now = time.monotonic()
            if deadline.due is None:  # not armed: the controller has not stepped yet
                return now + deadline.period
            if now < deadline.due and not ending:  # the controller stepped in time
                return deadline.due
            fallback = deadline.fallback
            if fallback.kind == "repeat" and not deadline.has_action:
                return now + deadline.period
            handle.cached_state = None
            try:
                if fallback.kind == "method":
                    name, args = fallback.value, ()
                    result = envinfo.resolve_member(session.env, name)()
                else:
                    name = "step"
                    args = (deadline.last_action if fallback.kind == "repeat" else fallback.value,)
                    result = envinfo.resolve_member(session.env, "step")(*args)
            except Exception:
                self.stats["env_errors"] += 1
                log.exception("session %s: the deadline's fallback raised", session.session_id)
                result = None
                name, args = (fallback.value, ()) if fallback.kind == "method" else ("step", ())
            if ending:
                log.warning("session %s ends: applying its fallback (%s) once more", session.session_id, fallback.kind)
            elif not deadline.streak:
                log.warning(
                    "session %s missed its deadline (%g s): applying its fallback (%s) every period",
                    session.session_id,
                    deadline.period,
                    fallback.kind,
                )
            deadline.missed_now(now)
            if self.metrics is not None:
                self.metrics.deadline_misses += 1
            self._publish(session, name, args, {}, result, fallback=True)
            if self.recorder is not None:
                self.recorder.record(session, name, args, {}, result, fallback=True)
            return deadline.due

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
            if session.deadline is not None and session.deadline.stepped("step", (action,)):
                log.info("session %s is back in control", session.session_id)
            self._publish(session, "step", (action,), {}, result)
            if self.recorder is not None:
                self.recorder.record(session, "step", (action,), {}, result)
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
