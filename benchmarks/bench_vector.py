"""Vector envs: FastVectorEnv against Gymnasium's AsyncVectorEnv and SyncVectorEnv, in one run.

Usage::

    python benchmarks/bench_vector.py                    # the table, 16 x CartPole-v1
    python benchmarks/bench_vector.py --num-envs 8 --steps 5000
    python benchmarks/bench_vector.py --env fastenv.examples:VectorEnv
    pytest benchmarks/bench_vector.py --benchmark-only   # the same backends under pytest-benchmark

Backends, all over the same ``--num-envs`` copies of the same env:

* ``fastenv-shm``: :class:`fastenv.FastVectorEnv` over one ``fastenv serve ENV
  --num-envs N`` on this host, shared memory (the batch arrives as views);
* ``fastenv-tcp``: the same server, over the TCP data plane;
* ``fastenv-shm-2srv``: two servers with N/2 envs each, shared memory;
* ``gym-async``: ``gymnasium.vector.AsyncVectorEnv(shared_memory=True)``, one
  worker process per env;
* ``gym-sync``: ``gymnasium.vector.SyncVectorEnv`` in this process (no IPC at all:
  the in-process reference);
* ``fastenv-w1`` / ``fastenv-w2``: one ``fastenv serve ENV --num-envs N --workers
  1`` (or ``2``) server, shared memory: the envs step in 1 (2) worker processes
  writing into one batch buffer, behind the one address; ``fastenv-w2-spin0``:
  the same with a client that does not spin for its reply
  (``FastVectorEnv(..., spin_us=0)``), leaving both CPUs of a 2-CPU host to the workers.

``--workers-table`` compares ways to use every core of a host behind one
address: 16 envs of a cheap numpy env (``fastenv.bench.cost_env``, about
3 µs a step) and of a costly one (about 96 µs, busy-waiting), each through
fastenv with one server stepping its envs in turn (no ``--workers``), with
``--workers 1`` and ``--workers 2``, and through Gymnasium's ``SyncVectorEnv``
and ``AsyncVectorEnv``; steps/s (medians of ``--repeats``) and the ratio to
``SyncVectorEnv``, with the targets checked (``--workers 2`` at least 1.7x
``SyncVectorEnv`` for the costly env, 1.0x for the cheap one; every backend of a point is
open at once and the repeats are taken in turns, so a machine whose speed
drifts treats them alike)::

    python benchmarks/bench_vector.py --workers-table [--quick]

``--pool-table`` compares the async pool (``FastVectorEnv(batch_size=N/2)``:
``send`` / ``recv``) with synchronous ``step`` on uneven envs (step costs
spread 10x between envs), with SB3's ``SubprocVecEnv`` and PufferLib's
``Multiprocessing`` vectorizer as peers; see ``benchmarks/bench_vector_pool.py``::

    python benchmarks/bench_vector.py --pool-table [--quick]

Each timed call is one batched ``step`` with the same fixed actions (episodes
end and autoreset, as in training). Reported: env steps per second (batch
steps/s x N), p50 / p99 of one batched step, CPU time of all processes (this
one and its children: servers, workers) per batched step, and the ratio of
env steps/s to ``gym-async``. Compare rows within one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import psutil
import pytest
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

from fastenv.bench.stats import summarize
from fastenv.bench.workloads import COST_PAYLOADS
from fastenv.server_process import ServerProcess
from fastenv.target import resolve_target
from fastenv.vector import FastVectorEnv

BACKENDS = ("fastenv-shm", "fastenv-tcp", "fastenv-shm-2srv", "fastenv-w1", "fastenv-w2", "gym-async", "gym-sync")
WORKER_BACKENDS = ("gym-sync", "gym-async", "fastenv-shm", "fastenv-w1", "fastenv-w2", "fastenv-w2-spin0")
COST_ENV = "fastenv.bench.cost_env:CostEnv"
#: (label, env kwargs) of the two envs of ``--workers-table``; the costly one is ``fastenv-bench``'s
#: ``costly`` payload's cost (step_us=92: about 96 µs a step in all).
COST_POINTS = (
    ("cheap numpy env", {"step_us": 0}),
    ("costly env", {"step_us": COST_PAYLOADS["costly"].env_kwargs["step_us"]}),
)
#: The issue's targets: the best fastenv row over gym-sync, per point.
TARGETS = {"cheap numpy env": 1.0, "costly env": 1.7}
BASELINE = "gym-async"
DEFAULT_ENV = "CartPole-v1"
DEFAULT_NUM_ENVS = 16
TIMEOUT_S = 60.0
PYTEST_ROUNDS, PYTEST_WARMUP, QUICK_ROUNDS = 300, 20, 5


@contextlib.contextmanager
def open_backend(
    name: str, env: str = DEFAULT_ENV, num_envs: int = DEFAULT_NUM_ENVS, env_kwargs: dict[str, Any] | None = None
) -> Iterator[Any]:
    """A vector env of ``num_envs`` copies of ``env`` for one backend (closed on exit)."""
    with contextlib.ExitStack() as stack:
        if name.startswith("fastenv"):
            counts = [num_envs // 2, num_envs - num_envs // 2] if name.endswith("2srv") else [num_envs]
            spin = {"spin_us": 0} if name.endswith("-spin0") else {}
            name = name.removesuffix("-spin0")
            workers = ["--workers", name[len("fastenv-w") :]] if name.startswith("fastenv-w") else []
            addresses = [
                stack.enter_context(
                    ServerProcess(
                        env, ["--num-envs", str(count), *workers], env_kwargs=env_kwargs, ready_timeout=TIMEOUT_S
                    )
                ).address
                for count in counts
            ]
            transport = "tcp" if name == "fastenv-tcp" else "shm"
            yield stack.enter_context(FastVectorEnv(addresses, timeout=TIMEOUT_S, transport=transport, **spin))
        elif name == "gym-async":
            envs = AsyncVectorEnv([resolve_target(env, env_kwargs)] * num_envs, shared_memory=True)
            stack.callback(envs.close)
            yield envs
        elif name == "gym-sync":
            envs = SyncVectorEnv([resolve_target(env, env_kwargs)] * num_envs)
            stack.callback(envs.close)
            yield envs
        else:
            raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def fixed_actions(envs: Any) -> Any:
    """One batch of actions, the same for every backend (the batched space sampled with seed 0)."""
    space = envs.action_space
    space.seed(0)
    return space.sample()


def _cpu_s() -> float:
    """User + system CPU seconds of this process and all its descendants (servers, workers)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def measure(envs: Any, steps: int, warmup: int = 50) -> dict[str, float]:
    """Time ``steps`` batched steps after ``warmup``; rates, latency percentiles and CPU per step."""
    actions = fixed_actions(envs)
    envs.reset(seed=0)
    for _ in range(warmup):
        envs.step(actions)
    samples = np.empty(steps, dtype=np.int64)
    clock = time.perf_counter_ns
    cpu0, wall0 = _cpu_s(), clock()
    for index in range(steps):
        start = clock()
        envs.step(actions)
        samples[index] = clock() - start
    wall, cpu = (clock() - wall0) / 1e9, _cpu_s() - cpu0
    summary = summarize(samples)
    return {
        "batch_steps_per_s": steps / wall,
        "env_steps_per_s": steps * envs.num_envs / wall,
        "p50_us": summary.p50_us,
        "p99_us": summary.p99_us,
        "cpu_us": cpu / steps * 1e6,
    }


# --------------------------------------------------------------------------- pytest-benchmark


@pytest.fixture(scope="module", params=BACKENDS)
def vector_env(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """One backend's vector env over 16 CartPole-v1, reset once."""
    with open_backend(request.param) as envs:
        envs.reset(seed=0)
        yield request.param, envs


def test_vector_step(benchmark: Any, vector_env: tuple[str, Any], bench_quick: bool) -> None:
    backend, envs = vector_env
    rounds, warmup = (QUICK_ROUNDS, 1) if bench_quick else (PYTEST_ROUNDS, PYTEST_WARMUP)
    benchmark.group = f"vector-step-{DEFAULT_NUM_ENVS}x{DEFAULT_ENV}"
    benchmark.extra_info.update({"backend": backend, "num_envs": envs.num_envs})
    benchmark.pedantic(envs.step, args=(fixed_actions(envs),), rounds=rounds, warmup_rounds=warmup, iterations=1)


# --------------------------------------------------------------------------- the table


def run(
    env: str,
    num_envs: int,
    steps: int,
    repeats: int,
    backends: list[str],
    log: Callable[[str], None] = print,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Measure every backend ``repeats`` times; keep the repeat with the median env steps/s."""
    results = {}
    for name in backends:
        with open_backend(name, env, num_envs, env_kwargs) as envs:
            runs = sorted((measure(envs, steps) for _ in range(repeats)), key=lambda r: r["env_steps_per_s"])
            results[name] = runs[len(runs) // 2]
        log(f"  {name}: {results[name]['env_steps_per_s']:,.0f} env steps/s")
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table; the last column is env steps/s relative to ``gym-async``."""
    base = results.get(BASELINE, {}).get("env_steps_per_s")
    lines = [
        "| backend | env steps/s | batch steps/s | p50 µs | p99 µs | CPU µs/step | vs gym-async |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ratio = f"{r['env_steps_per_s'] / base:.2f}x" if base else "n/a"
        lines.append(
            f"| {name} | {r['env_steps_per_s']:,.0f} | {r['batch_steps_per_s']:,.0f} | {r['p50_us']:.0f} | "
            f"{r['p99_us']:.0f} | {r['cpu_us']:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def run_interleaved(
    env: str,
    num_envs: int,
    steps: int,
    repeats: int,
    backends: list[str],
    env_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Like :func:`run`, with every backend open at once and the repeats taken in turns (A B C, A B C, ...).

    On a shared or virtual machine whose speed drifts, each backend then sees
    the same stretches of time; the repeat with the median env steps/s is kept.
    """
    with contextlib.ExitStack() as stack:
        opened = {name: stack.enter_context(open_backend(name, env, num_envs, env_kwargs)) for name in backends}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
        for _ in range(repeats):
            for name, envs in opened.items():
                runs[name].append(measure(envs, steps))
    results = {}
    for name in backends:
        ordered = sorted(runs[name], key=lambda r: r["env_steps_per_s"])
        results[name] = ordered[len(ordered) // 2]
        log(f"  {name}: {results[name]['env_steps_per_s']:,.0f} env steps/s")
    return results


def env_step_us(env_kwargs: dict[str, Any], steps: int = 2000) -> float:
    """One :class:`CostEnv` step in this process, µs (the median of 5 runs)."""
    make = resolve_target(COST_ENV, env_kwargs)
    one = make()
    one.reset(seed=0)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            one.step(1)
        runs.append((time.perf_counter() - start) / steps * 1e6)
    return sorted(runs)[len(runs) // 2]


def workers_table(num_envs: int, steps: int, repeats: int, log: Callable[[str], None] = print) -> str:
    """The ``--workers-table`` comparison (see the module docstring): markdown, targets checked at the end."""
    labels = {
        "gym-sync": "gymnasium SyncVectorEnv (in-process)",
        "gym-async": "gymnasium AsyncVectorEnv (shared_memory)",
        "fastenv-shm": "fastenv, 1 server, envs in turn (no --workers)",
        "fastenv-w1": "fastenv, 1 server, --workers 1",
        "fastenv-w2": "fastenv, 1 server, --workers 2",
        "fastenv-w2-spin0": "fastenv, 1 server, --workers 2, client spin_us=0",
    }
    rows: dict[str, list[str]] = {name: [] for name in WORKER_BACKENDS}
    header = ["backend"]
    verdicts = []
    for label, kwargs in COST_POINTS:
        cost = env_step_us(kwargs, 200 if kwargs["step_us"] else 20000)
        log(f"{num_envs} x {label} ({cost:.1f} µs a step in-process):")
        point_steps = steps if not kwargs["step_us"] else max(10, steps // 10)
        results = run_interleaved(COST_ENV, num_envs, point_steps, repeats, list(WORKER_BACKENDS), kwargs, log)
        base = results["gym-sync"]["env_steps_per_s"]
        header += [f"{label} ({cost:.1f} µs) env steps/s", "vs Sync"]
        for name in WORKER_BACKENDS:
            rate = results[name]["env_steps_per_s"]
            rows[name] += [f"{rate:,.0f}", f"{rate / base:.2f}x"]
        fastenv_rows = [name for name in WORKER_BACKENDS if name.startswith("fastenv")]
        best = max(fastenv_rows, key=lambda name: results[name]["env_steps_per_s"])
        ratio = results[best]["env_steps_per_s"] / base
        goal = TARGETS[label]
        verdicts.append(
            f"- {label}: target >= {goal:.1f}x SyncVectorEnv; best fastenv row: {labels[best]}, {ratio:.2f}x "
            f"({'met' if ratio >= goal else 'NOT met'})"
        )
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += [f"| {labels[name]} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines += ["", f"{num_envs} envs, {cpus} usable CPUs, medians of {repeats} interleaved repeat(s).", *verdicts]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default=DEFAULT_ENV, help="serve target / Gymnasium id (default: CartPole-v1)")
    parser.add_argument("--num-envs", type=int, default=DEFAULT_NUM_ENVS)
    parser.add_argument("--steps", type=int, default=2000, help="timed batched steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test); also FASTENV_BENCH_QUICK=1")
    parser.add_argument(
        "--workers-table",
        action="store_true",
        help="16 cheap / costly envs: fastenv with and without --workers against Sync/AsyncVectorEnv",
    )
    parser.add_argument(
        "--pool-table",
        action="store_true",
        help="16 uneven envs: the async pool (send/recv) against step, SB3 SubprocVecEnv and PufferLib",
    )
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("FASTENV_BENCH_QUICK", "") not in ("", "0"):
        args.steps, args.repeats = 20, 1
    if args.pool_table:
        from benchmarks.bench_vector_pool import pool_table

        print(pool_table(args.num_envs, args.steps if args.steps < 300 else 300, args.repeats))
        return 0
    if args.workers_table:
        print(workers_table(args.num_envs, args.steps, args.repeats))
        return 0
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    print(f"{args.num_envs} x {args.env}, {args.steps} batched steps x {args.repeats} repeats, {os.cpu_count()} CPUs")
    results = run(args.env, args.num_envs, args.steps, args.repeats, backends)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
