"""Step round trip per (transport, payload): fastenv against its baselines and floors.

Each server is started once per module (a module-scoped fixture per
parameter) and every benchmark times ``client.step(action)`` on the same
example env. The reset observation and the first step are checked against a
local env before timing (through :func:`fastenv.bench.timing.check_result`,
which snapshots zero-copy views and compares only the observation for
transports that carry only that). Run with ``pytest benchmarks/
--benchmark-only``; compare rows within one run.

``fastenv-shm-py`` needs the pure-Python doorbell in this process: it runs
under ``FASTENV_NATIVE=0 pytest benchmarks/ ...`` and is skipped otherwise
(``fastenv-bench`` runs it in a subprocess instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from fastenv.bench.runner import (
    TRANSPORTS,
    TransportUnavailable,
    open_transport,
)
from fastenv.bench.timing import check_result
from fastenv.bench.workloads import PAYLOADS, get_workload

CASES = [(transport, payload) for payload in PAYLOADS for transport in TRANSPORTS]


@pytest.fixture(scope="module", params=CASES, ids=[f"{t}-{p}" for t, p in CASES])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, Any]]:
    """A running server and its client for one (transport, payload), checked once."""
    transport, payload = request.param
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(open_transport(transport, payload, timeout=30.0))
        except TransportUnavailable as exc:
            pytest.skip(f"{transport}: {exc}")
        workload = get_workload(payload)
        local, action = workload.make_env(), workload.make_action()
        seed = workload.seed
        assert check_result(client, (client.reset(seed=seed)[0],), (local.reset(seed=seed)[0],))
        assert check_result(client, client.step(action), local.step(action))
        yield transport, payload, client


def test_step_roundtrip(benchmark: Any, served: tuple[str, str, Any], bench_rounds: Any) -> None:
    transport, payload, client = served
    rounds, warmup = bench_rounds(transport, payload)
    action = get_workload(payload).make_action()
    benchmark.group = f"step-{payload}"
    benchmark.extra_info.update({"transport": transport, "payload": payload})
    benchmark.pedantic(client.step, args=(action,), rounds=rounds, warmup_rounds=warmup, iterations=1)
