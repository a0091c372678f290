"""Deadline calls; mixed into :class:`~fastenv.FastRemoteEnv`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastenv.session.deadline import DEADLINE, DeadlineReport, Fallback


class DeadlineCalls:
    """``set_deadline`` / ``clear_deadline`` / ``deadline_report`` (see :mod:`fastenv.session.deadline`)."""

    invoke: Callable[..., Any]

    def set_deadline(self, period: float, fallback: Fallback | None = None, *, tolerance: float | None = None) -> None:
        """Promise a ``step`` every ``period`` seconds; when one is late, the server applies ``fallback``.

        If the next ``step`` (or ``reset``) does not arrive within ``period +
        tolerance`` of the last one, the server applies the fallback itself,
        on the env's thread, and again every ``period`` until this client
        steps again or its session ends. Observers see those calls marked
        ``fallback=True``; :attr:`deadline_report` counts and times them. The
        deadline is armed by this client's next step.

        Args:
            period: the control period in seconds (1 ms to 1 h).
            fallback: :meth:`Fallback.repeat` (the default: the last action
                again), :meth:`Fallback.action` (a fixed action) or
                :meth:`Fallback.method` (an env method, such as ``"safe_stop"``).
            tolerance: how late a step may be (default: a quarter of the period).

        Raises:
            ControlDenied: on a shared env, this client does not hold the
                control lease (connect with ``role="controller"``).
        """
        chosen = Fallback.repeat() if fallback is None else fallback
        slack = period / 4 if tolerance is None else tolerance
        self.invoke(DEADLINE, ("set", float(period), float(slack), chosen.to_wire()))

    def clear_deadline(self) -> None:
        """Drop the deadline: no fallback is applied any more."""
        self.invoke(DEADLINE, ("clear",))

    @property
    def deadline_report(self) -> DeadlineReport:
        """How many deadlines were missed, and when (a default report when none is set)."""
        data = self.invoke(DEADLINE, ("report",))
        return DeadlineReport() if data is None else DeadlineReport.from_wire(data)
