"""Step round trip on real rendered frames (the MuJoCo stack-cube task), per transport.

The pytest-benchmark face of ``benchmarks/bench_mujoco.py`` (which prints the
comparison table with the env's own step time beside each round trip): one
server per transport for the module, the reset and first step checked against
a local env, then ``client.step(action)`` timed. ``in-process`` times the
env's own ``step`` (simulation + rendering) with no transport. Quick mode
(``FASTENV_BENCH_QUICK=1``) uses 48×64 images and a few rounds.

Skipped where MuJoCo is not installed or offscreen OpenGL cannot render.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from fastenv.errors import MissingDependency
from fastenv.examples.mujoco_render import configure_gl

configure_gl()  # before anything imports mujoco
pytest.importorskip("mujoco", reason='MuJoCo is not installed (pip install "fastenv[sim]")')

from bench_mujoco import IN_PROCESS, InProcess

from fastenv.bench.runner import TransportUnavailable, open_transport
from fastenv.bench.timing import check_result
from fastenv.bench.workloads import get_workload

TRANSPORTS = (IN_PROCESS, "fastenv-shm", "fastenv-tcp", "gym-async", "mp-pipe", "zmq-pickle")
ROUNDS, QUICK_ROUNDS = 100, 5


@pytest.fixture(scope="module")
def payload(bench_quick: bool) -> str:
    """``mujoco`` (two 240×320 cameras), or tiny images in quick mode; skips without offscreen GL."""
    name = "mujoco-48x64" if bench_quick else "mujoco"
    env = get_workload(name).make_env()
    try:
        env.reset(seed=0)  # the first render makes the OpenGL context
    except MissingDependency as exc:
        pytest.skip(f"offscreen OpenGL cannot render here: {exc}")
    finally:
        env.close()
    return name


@pytest.fixture(scope="module", params=TRANSPORTS)
def served(request: pytest.FixtureRequest, payload: str) -> Iterator[tuple[str, Any]]:
    """A running server and its client for one transport, checked once against a local env."""
    transport = request.param
    workload = get_workload(payload)
    with contextlib.ExitStack() as stack:
        if transport == IN_PROCESS:
            client = InProcess(payload)
            stack.callback(client.close)
        else:
            try:
                client = stack.enter_context(open_transport(transport, payload, timeout=60.0))
            except TransportUnavailable as exc:
                pytest.skip(f"{transport}: {exc}")
        local = workload.make_env()
        stack.callback(local.close)
        action = workload.make_action()
        assert check_result(client, (client.reset(seed=workload.seed)[0],), (local.reset(seed=workload.seed)[0],))
        assert check_result(client, client.step(action), local.step(action))
        yield transport, client


def test_mujoco_step_roundtrip(benchmark: Any, served: tuple[str, Any], payload: str, bench_quick: bool) -> None:
    transport, client = served
    action = get_workload(payload).make_action()
    benchmark.group = f"step-{payload}"
    benchmark.extra_info.update({"transport": transport, "payload": payload})
    rounds = QUICK_ROUNDS if bench_quick else ROUNDS
    benchmark.pedantic(client.step, args=(action,), rounds=rounds, warmup_rounds=1, iterations=1)
