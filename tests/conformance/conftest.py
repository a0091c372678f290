"""A served counting env per route, shared by a module's tests; a fresh client per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import fastenv
from fastenv import native
from tests.routes import ROUTES, Route

T = 20.0  # bound on every blocking call


@pytest.fixture(scope="module", params=ROUTES)
def route(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Route]:
    """The counting env served on one route (see :mod:`tests.routes`), for every test of a module."""
    args = getattr(request.module, "SERVER_ARGS", ())
    with Route(request.param, tmp_path_factory.mktemp(request.param), tuple(args)) as served:
        served.start_server()
        yield served


@pytest.fixture
def connect(route: Route) -> Iterator[Any]:
    """``connect(**options)``: a client on this module's route, closed at teardown."""
    previous = native.select_backend(route.client_backend) if route.client_backend is not None else None
    made: list[fastenv.FastRemoteEnv] = []

    def make(**options: Any) -> fastenv.FastRemoteEnv:
        if options.get("role") == "observer":
            route.proxy_transitions(T)  # observers subscribe on a third port: reachable through the route too
        env = route.connect(**{"timeout": T, **options})
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()
    if previous is not None:
        native.select_backend(previous)


@pytest.fixture
def env(connect: Any) -> fastenv.FastRemoteEnv:
    """A client on this module's route."""
    return connect()
