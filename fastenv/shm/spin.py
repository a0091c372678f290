"""How long a waiting side spins before it sleeps, adapted to how long its peer takes to answer."""

from __future__ import annotations

#: Waits in a row that outlast the budget before waits stop spinning.
SLEEPS_BEFORE_OFF = 4
#: While spinning is off, every this many waits spin again to see whether answers got fast.
PROBE_EVERY = 32
#: The longest spin a server may advise its clients (µs).
MAX_ADVISED_SPIN_US = 1_000_000


def advised_spin_us(value: object) -> int | None:
    """``value`` if it is a spin (µs) a server may advise a shared-memory client, else None."""
    return value if type(value) is int and 0 <= value <= MAX_ADVISED_SPIN_US else None


class SpinBudget:
    """A spin budget that turns itself off while answers keep outlasting it.

    Spinning pays when the answer comes within the budget: no sleep in the
    kernel, no wake-up. When the peer takes longer (a costly env step, a batch
    stepped by worker processes), the whole budget is burnt on a CPU the peer
    may need. After :data:`SLEEPS_BEFORE_OFF` waits in a row that outlasted
    the budget, :attr:`now` is 0 (wait without spinning); every
    :data:`PROBE_EVERY`-th wait then spins again, and one answered within
    the spin turns spinning back on.

    The caller reads :attr:`now` before a wait and reports afterwards: on the
    common path (answered within the spin, spinning on) that is two attribute
    reads, with :meth:`waited` called only when the wait slept or spinning is
    off::

        if slept or spin.off:
            spin.waited(slept)
        elif spin.sleeps:
            spin.sleeps = 0
    """

    __slots__ = ("budget", "now", "off", "sleeps", "_waits")

    def __init__(self, budget_us: int) -> None:
        self.budget = budget_us
        self.now = budget_us  # the spin for the next wait, µs
        self.off = False  # spinning is off (but for probes)
        self.sleeps = 0  # waits in a row that outlasted the budget
        self._waits = 0  # waits since spinning went off

    def waited(self, slept: bool) -> None:
        """Report a wait: whether it outlasted :attr:`now` and slept in the kernel."""
        if not self.off:
            self.sleeps = self.sleeps + 1 if slept else 0
            if self.sleeps >= SLEEPS_BEFORE_OFF and self.budget:
                self.off, self.now, self._waits = True, 0, 0
            return
        if self.now:  # this wait was a probe
            if not slept:
                self.off, self.sleeps = False, 0
                return
            self.now = 0
        self._waits += 1
        if self._waits >= PROBE_EVERY:
            self.now, self._waits = self.budget, 0
