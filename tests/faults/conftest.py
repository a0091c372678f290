"""Fixtures of the fault suite: a route per parameter, a printed seed, and the figures of each run.

``FASTENV_FAULTS_LONG=SECONDS`` turns the short deterministic pass into a long
one: the cut schedule of each route runs for that many seconds, and the
storms are larger. ``FASTENV_FAULT_SEED=N`` replays a seed a run printed.
``FASTENV_FAULTS_REPORT=FILE`` writes the figures as JSON lines too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import ROUTES, Route

_FIGURES: list[dict[str, Any]] = []


@pytest.fixture(params=ROUTES)
def route_name(request: pytest.FixtureRequest) -> str:
    """Each route a call can take (see :mod:`tests.faults.harness`)."""
    return request.param


@pytest.fixture
def make_route(route_name: str, tmp_path: Path) -> Iterator[Callable[..., Route]]:
    """``make_route(*server_args, **env_kwargs)``: the counting env served on this test's route, server started."""
    with contextlib.ExitStack() as stack:

        def make(*server_args: str, **env_kwargs: Any) -> Route:
            made = stack.enter_context(Route(route_name, tmp_path, server_args, env_kwargs))
            made.start_server()
            return made

        yield make


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded generator; the seed is printed so a failing schedule can be replayed.

    The short pass uses a fixed seed per test (deterministic schedules); the
    long pass draws a new one each run.
    """
    chosen = os.environ.get("FASTENV_FAULT_SEED")
    if chosen:
        seed = int(chosen)
    elif os.environ.get("FASTENV_FAULTS_LONG"):
        seed = random.SystemRandom().randrange(1 << 32)
    else:
        seed = zlib.crc32(request.node.name.encode())
    print(f"\nfault seed for {request.node.name}: {seed} (replay with FASTENV_FAULT_SEED={seed})")
    return random.Random(seed)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict a test fills with what it measured; printed in the run's summary."""
    measured: dict[str, Any] = {}
    yield measured
    if measured:
        _FIGURES.append({"test": request.node.name, **measured})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault suite figures")
    for entry in _FIGURES:
        terminalreporter.write_line(json.dumps(entry, default=str))
    report = os.environ.get("FASTENV_FAULTS_REPORT")
    if report:
        with open(report, "a") as out:
            for entry in _FIGURES:
                out.write(json.dumps(entry, default=str) + "\n")
