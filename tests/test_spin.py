"""The client's spin budget: off while answers keep outlasting it, back on once a probe is answered within it."""

from __future__ import annotations

from fastenv.shm.spin import PROBE_EVERY, SLEEPS_BEFORE_OFF, SpinBudget


def test_spinning_stops_after_waits_in_a_row_that_slept_and_probes_until_answers_are_fast() -> None:
    spin = SpinBudget(200)
    for _ in range(SLEEPS_BEFORE_OFF - 1):
        spin.waited(True)
    spin.waited(False)  # one answer within the spin: the count starts again
    assert spin.now == 200 and not spin.off
    for _ in range(SLEEPS_BEFORE_OFF):
        spin.waited(True)
    assert spin.now == 0 and spin.off
    budgets = []
    for _ in range(2 * PROBE_EVERY + 1):
        budgets.append(spin.now)
        spin.waited(True)  # every wait sleeps, probes too
    # one probe per PROBE_EVERY waits: the PROBE_EVERY-th wait after spinning went off, then every PROBE_EVERY-th
    assert [i for i, budget in enumerate(budgets) if budget] == [PROBE_EVERY, 2 * PROBE_EVERY]
    while spin.now == 0:
        spin.waited(True)
    spin.waited(False)  # a probe answered within the spin
    assert spin.now == 200 and not spin.off and spin.sleeps == 0


def test_a_zero_budget_never_changes() -> None:
    spin = SpinBudget(0)
    for _ in range(3 * PROBE_EVERY):
        spin.waited(True)
    assert spin.now == 0 and not spin.off
