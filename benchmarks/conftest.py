"""Settings for the pytest-benchmark suites (``pytest benchmarks/ --benchmark-only``).

Quick mode (``FASTENV_BENCH_QUICK=1`` or ``--bench-quick``) shrinks every
benchmark to a handful of rounds: a CI smoke test that the suites still run,
not a measurement.
"""

from __future__ import annotations

import os

import pytest

# Timed rounds per benchmark, by payload; seed-pickle pays ~90 ms per step, so it gets fewer.
ROUNDS = {"small": 1000, "camera": 200}
SLOW_ROUNDS = {"seed-pickle": 50}
WARMUP_ROUNDS = 10
QUICK_ROUNDS = 5


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-quick",
        action="store_true",
        default=False,
        help="tiny benchmark runs (CI smoke); same as FASTENV_BENCH_QUICK=1",
    )


@pytest.fixture(scope="session")
def bench_quick(pytestconfig: pytest.Config) -> bool:
    """True in quick (smoke) mode."""
    from_env = os.environ.get("FASTENV_BENCH_QUICK", "") not in ("", "0")
    return bool(pytestconfig.getoption("--bench-quick")) or from_env


@pytest.fixture(scope="session")
def bench_rounds(bench_quick: bool):
    """``rounds(transport, payload) -> (rounds, warmup_rounds)``."""

    def rounds(transport: str, payload: str) -> tuple[int, int]:
        if bench_quick:
            return QUICK_ROUNDS, 1
        return min(ROUNDS[payload], SLOW_ROUNDS.get(transport, ROUNDS[payload])), WARMUP_ROUNDS

    return rounds
