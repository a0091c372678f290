"""Shared fixtures: real `fastenv serve` processes, started and reaped per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastenv.server_process import ServerProcess

ENVS_DIR = Path(__file__).parent / "envs"


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``serve(target, *args, env_kwargs=...)`` starts `fastenv serve` and waits for ready.

    Every server it made is stopped at teardown.
    """
    made: list[ServerProcess] = []

    def start(target: str, *args: str, **kwargs: Any) -> ServerProcess:
        server = ServerProcess(target, args, **kwargs)
        server.start()
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop()


@pytest.fixture
def test_env_target() -> Callable[[str], str]:
    """``test_env_target("Faulty")`` -> the file.py:callable target of a test env."""
    return lambda name: f"{ENVS_DIR / 'test_envs.py'}:{name}"
