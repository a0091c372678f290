"""Deadlines: a controller promises a step every period; when one does not come, the server applies a fallback.

A robot must not keep executing a stale command because a laptop's Wi-Fi
dropped or a garbage collector paused. A controller (the lease holder of a
shared env, or the client of a per-client env) declares a control period, a
tolerance and a :class:`Fallback`. Each ``step`` (or ``reset``) it makes
arms the deadline at ``now + period + tolerance``; if the deadline passes
first, the server's :class:`DeadlineWatch` applies the fallback itself, on
the env's thread under the env's lock, and keeps applying it once per period
until the controller steps again or the session ends. Each application is
a *miss*: counted, timed, and published to observers marked as a fallback.

A deadline is armed by the controller's first step after it was set: a
controller that never stepped has no command to guard.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastenv.errors import ProtocolError

DEADLINE = "__deadline__"  # pseudo-method: ("set", period, tolerance, fallback) | ("clear",) | ("report",)
FALLBACK_KINDS = ("repeat", "action", "method")
MIN_PERIOD_S = 0.001
MAX_PERIOD_S = 3600.0
RECENT_MISSES = 64  # miss times a report carries


@dataclass(frozen=True)
class Fallback:
    """What the server does when a step is late.

    Build one with :meth:`repeat` (step again with the last action),
    :meth:`action` (step with a fixed action) or :meth:`method` (call a
    public method of the env with no arguments, for example ``safe_stop``).
    """

    kind: str
    value: Any = None

    @classmethod
    def repeat(cls) -> Fallback:
        """Step with the controller's last action."""
        return cls("repeat")

    @classmethod
    def action(cls, action: Any) -> Fallback:
        """Step with ``action``."""
        return cls("action", action)

    @classmethod
    def method(cls, name: str) -> Fallback:
        """Call the env's public method ``name()`` (for example ``"safe_stop"``)."""
        if not isinstance(name, str) or not name or name.startswith("_"):
            raise ValueError("a fallback method is the name of a public env method")
        return cls("method", name)

    def to_wire(self) -> tuple:
        """The plain-data form a client sends."""
        return (self.kind, self.value)

    @classmethod
    def from_wire(cls, data: Any) -> Fallback:
        """A fallback a peer sent, checked (:class:`~fastenv.errors.ProtocolError` otherwise)."""
        if not isinstance(data, tuple) or len(data) != 2 or data[0] not in FALLBACK_KINDS:
            raise ProtocolError(f"a fallback is one of {', '.join(FALLBACK_KINDS)}")
        if data[0] == "method" and (not isinstance(data[1], str) or not data[1] or data[1].startswith("_")):
            raise ProtocolError("a fallback method is the name of a public env method")
        return cls(data[0], data[1])


@dataclass(frozen=True)
class DeadlineReport:
    """What a deadline has done so far, as the client reads it.

    Attributes:
        period: the control period (seconds); 0 when no deadline is set.
        tolerance: how late a step may be before the fallback applies.
        fallback: the fallback's kind (``"repeat"``, ``"action"``, ``"method"``), or None.
        missed: how many times the fallback was applied.
        recent: the server's wall-clock times (``time.time()``) of the latest misses, oldest first.
        lateness: for the same misses, how long after it was due each fallback ran (seconds).
        armed: whether the deadline is armed (the controller stepped since it was set).
    """

    period: float = 0.0
    tolerance: float = 0.0
    fallback: str | None = None
    missed: int = 0
    recent: tuple[float, ...] = ()
    lateness: tuple[float, ...] = ()
    armed: bool = False

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> DeadlineReport:
        """A report from the dict the server sends."""
        return cls(
            period=float(data.get("period", 0.0)),
            tolerance=float(data.get("tolerance", 0.0)),
            fallback=data.get("fallback"),
            missed=int(data.get("missed", 0)),
            recent=tuple(float(when) for when in data.get("recent", ())),
            lateness=tuple(float(late) for late in data.get("lateness", ())),
            armed=bool(data.get("armed", False)),
        )


@dataclass
class Deadline:
    """One session's deadline (server side); changed under the env's lock."""

    period: float
    tolerance: float
    fallback: Fallback
    due: float | None = None  # monotonic time the next step is due by (None: not armed)
    last_action: Any = None
    has_action: bool = False
    missed: int = 0
    streak: int = 0  # fallbacks applied since the controller's last step
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_MISSES))
    lateness: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_MISSES))

    def stepped(self, name: str, args: tuple) -> bool:
        """The controller called ``name`` (``step`` or ``reset``): the next step is due a period from now.

        Returns whether this ends a streak of fallbacks (the controller is back).
        """
        if name == "step" and args:
            self.last_action, self.has_action = args[0], True
        self.due = time.monotonic() + self.period + self.tolerance
        if self.streak:
            self.streak = 0
            return True
        return False

    def missed_now(self, now: float) -> None:
        """Count a fallback applied at monotonic ``now``; the next one is due a period after this one was."""
        self.missed += 1
        self.streak += 1
        self.recent.append(time.time())
        assert self.due is not None
        self.lateness.append(max(0.0, now - self.due))
        self.due = max(self.due + self.period, now)

    def report(self) -> dict[str, Any]:
        """The plain-data report the client reads (:class:`DeadlineReport`)."""
        return {
            "period": self.period,
            "tolerance": self.tolerance,
            "fallback": self.fallback.kind,
            "missed": self.missed,
            "recent": list(self.recent),
            "lateness": list(self.lateness),
            "armed": self.due is not None,
        }


def parse_deadline(args: tuple) -> Deadline:
    """The deadline a ``("set", period, tolerance, fallback)`` call asks for, checked."""
    if len(args) != 4:
        raise ProtocolError("a deadline is set with (period, tolerance, fallback)")
    _, period, tolerance, fallback = args
    if not isinstance(period, (int, float)) or not MIN_PERIOD_S <= period <= MAX_PERIOD_S:
        raise ProtocolError(f"a deadline period is between {MIN_PERIOD_S} and {MAX_PERIOD_S} seconds")
    if not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= MAX_PERIOD_S:
        raise ProtocolError("a deadline tolerance is a non-negative number of seconds")
    return Deadline(float(period), float(tolerance), Fallback.from_wire(fallback))


class DeadlineWatch:
    """One thread per server that applies the fallbacks of deadlines that passed.

    Args:
        apply: ``apply(key)`` applies the fallback of the deadline watched
            under ``key`` if it is still due (the caller checks, on the env's
            thread, under its lock) and returns its next due time, or None
            to stop watching it.
    """

    def __init__(self, apply: Callable[[Any], float | None]) -> None:
        self._apply = apply
        self._due: dict[Any, float] = {}
        self._changed = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def watch(self, key: Any, due: float) -> None:
        """Look at ``key``'s deadline at monotonic time ``due`` (earlier steps move it; :meth:`apply` says)."""
        with self._changed:
            if self._stopped:
                return
            self._due[key] = due
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fastenv-deadlines", daemon=True)
                self._thread.start()
            self._changed.notify()

    def forget(self, key: Any) -> None:
        """Stop watching ``key``."""
        with self._changed:
            self._due.pop(key, None)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (idempotent)."""
        with self._changed:
            self._stopped = True
            self._due.clear()
            self._changed.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopped:
                    now = time.monotonic()
                    key, due = min(self._due.items(), key=lambda item: item[1], default=(None, None))
                    if due is not None and due <= now:
                        del self._due[key]
                        break
                    self._changed.wait(None if due is None else due - now)
                if self._stopped:
                    return
            following = self._apply(key)
            if following is not None:
                with self._changed:
                    if not self._stopped and key not in self._due:
                        self._due[key] = following
