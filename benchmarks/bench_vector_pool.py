"""The async pool against synchronous stepping on uneven envs, with SB3's and PufferLib's vectorizers as peers.

Usage::

    python benchmarks/bench_vector.py --pool-table [--quick]
    python benchmarks/bench_vector_pool.py [--quick] [--num-envs 16] [--step-us 100] [--spread 10]

The env is ``fastenv.bench.cost_env:CostEnv`` made uneven: env ``i`` of 16
busy-waits ``step_us * spread ** (i / 15)`` per step (100 µs to 1 ms by
default: a 10x spread), so with two workers of contiguous slices one worker
has far more to do than the other. Rows, all over the same 16 envs:

* ``gym-sync``: ``gymnasium.vector.SyncVectorEnv`` in this process;
* ``sb3-subproc``: Stable-Baselines3's ``SubprocVecEnv`` (a process per env);
* ``puffer-mp-sync`` / ``puffer-mp-async``: PufferLib's ``Multiprocessing``
  vectorizer, 2 workers, ``batch_size`` N (synchronous) and N/2 (the first
  worker done) — skipped, and said so, when ``pufferlib`` does not import;
* ``fastenv-w2-step``: ``fastenv serve --num-envs N --workers 2``, Gymnasium ``step``;
* ``fastenv-w2-pool``: the same server, ``FastVectorEnv(batch_size=N/2)``:
  ``send`` the returned envs' actions, ``recv`` the next N/2.

One timed *batch step* is a ``step`` (N env steps) or a ``send`` + ``recv``
(``batch_size`` env steps). Reported: env steps/s (medians of ``--repeats``
interleaved repeats), p50 / p99 of one batch step, and the checks: the pool
at least 1.5x the synchronous fastenv ``step`` in env steps/s, and its p99 at
most 3x its p50.
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
from gymnasium.vector import SyncVectorEnv

from fastenv.bench.stats import summarize
from fastenv.bench.vector_peers import PufferVector, Sb3Vector, peer_missing
from fastenv.bench.workloads import Workload
from fastenv.server_process import ServerProcess
from fastenv.target import resolve_target
from fastenv.vector import FastVectorEnv

COST_ENV = "fastenv.bench.cost_env:CostEnv"
BACKENDS = ("gym-sync", "sb3-subproc", "puffer-mp-sync", "puffer-mp-async", "fastenv-w2-step", "fastenv-w2-pool")
LABELS = {
    "gym-sync": "gymnasium SyncVectorEnv (in-process)",
    "sb3-subproc": "SB3 SubprocVecEnv (a process per env)",
    "puffer-mp-sync": "PufferLib Multiprocessing, 2 workers, batch N",
    "puffer-mp-async": "PufferLib Multiprocessing, 2 workers, batch N/2",
    "fastenv-w2-step": "fastenv --workers 2, step (synchronous)",
    "fastenv-w2-pool": "fastenv --workers 2, send/recv pool, batch N/2",
}
SPEEDUP_TARGET, TAIL_TARGET = 1.5, 3.0
TIMEOUT_S = 60.0


class _Stepper:
    """One backend as the timing loop sees it: ``start()`` once, then ``cycle()`` = one batch step."""

    def __init__(self, cycle: Callable[[], None], per_cycle: int, start: Callable[[], None]) -> None:
        self.cycle, self.per_cycle, self.start = cycle, per_cycle, start


@contextlib.contextmanager
def open_backend(name: str, num_envs: int, env_kwargs: dict[str, Any]) -> Iterator[_Stepper]:
    """A started backend over ``num_envs`` uneven CostEnvs (closed on exit)."""
    actions = np.ones(num_envs, np.int64)
    half = num_envs // 2
    with contextlib.ExitStack() as stack:
        if name == "gym-sync":
            envs = SyncVectorEnv([resolve_target(COST_ENV, env_kwargs)] * num_envs)
            stack.callback(envs.close)
            yield _Stepper(lambda: envs.step(actions), num_envs, lambda: envs.reset(seed=0))
        elif name == "sb3-subproc":
            venv = Sb3Vector(Workload(name, COST_ENV, env_kwargs), num_envs)
            stack.callback(venv.close)
            yield _Stepper(lambda: venv.step(actions), num_envs, lambda: venv.reset(seed=0))
        elif name.startswith("puffer"):
            batch = num_envs if name.endswith("sync") else half
            puffer = PufferVector(Workload(name, COST_ENV, env_kwargs), num_envs, batch_size=batch, num_workers=2)
            stack.callback(puffer.close)
            sent = np.ones(batch, np.int64)
            yield _Stepper(lambda: puffer.step(sent), batch, lambda: puffer.reset(seed=0))
        elif name.startswith("fastenv"):
            server = stack.enter_context(
                ServerProcess(
                    COST_ENV,
                    ["--num-envs", str(num_envs), "--workers", "2"],
                    env_kwargs=env_kwargs,
                    ready_timeout=TIMEOUT_S,
                )
            )
            if name.endswith("step"):
                envs = stack.enter_context(FastVectorEnv(server.address, timeout=TIMEOUT_S))
                yield _Stepper(lambda: envs.step(actions), num_envs, lambda: envs.reset(seed=0))
            else:
                pool = stack.enter_context(FastVectorEnv(server.address, batch_size=half, timeout=TIMEOUT_S))
                sent = np.ones(half, np.int64)

                def cycle_pool() -> None:
                    pool.send(sent)
                    pool.recv()

                def start_pool() -> None:
                    with contextlib.suppress(Exception):  # a repeat: collect what is still in flight
                        while True:
                            pool.recv()
                    pool.async_reset(seed=0)
                    pool.recv()

                yield _Stepper(cycle_pool, half, start_pool)
        else:
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def measure(stepper: _Stepper, cycles: int, warmup: int = 10) -> dict[str, float]:
    """Time ``cycles`` batch steps after ``warmup``: env steps/s and the p50 / p99 of one batch step."""
    stepper.start()
    for _ in range(warmup):
        stepper.cycle()
    samples = np.empty(cycles, dtype=np.int64)
    clock = time.perf_counter_ns
    began = clock()
    for index in range(cycles):
        start = clock()
        stepper.cycle()
        samples[index] = clock() - start
    wall = (clock() - began) / 1e9
    summary = summarize(samples)
    return {"env_steps_per_s": cycles * stepper.per_cycle / wall, "p50_us": summary.p50_us, "p99_us": summary.p99_us}


def pool_table(
    num_envs: int = 16,
    cycles: int = 300,
    repeats: int = 3,
    step_us: float = 100.0,
    spread: float = 10.0,
    log: Callable[[str], None] = print,
) -> str:
    """The table (markdown), with the two checks and the peers that were skipped."""
    env_kwargs = {"step_us": step_us, "spread": spread, "levels": num_envs}
    backends = list(BACKENDS)
    notes = []
    missing = peer_missing("puffer-mp")
    if missing is not None:
        backends = [name for name in backends if not name.startswith("puffer")]
        notes.append(f"- PufferLib rows skipped: {missing}.")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
    with contextlib.ExitStack() as stack:
        opened = {}
        for name in list(backends):
            try:
                opened[name] = stack.enter_context(open_backend(name, num_envs, env_kwargs))
            except Exception as exc:  # a peer that cannot start is reported, not fatal
                notes.append(f"- {LABELS[name]} skipped: {type(exc).__name__}: {exc}")
                backends.remove(name)
        for _ in range(repeats):
            for name, stepper in opened.items():
                runs[name].append(measure(stepper, cycles))
    results = {}
    for name in backends:
        ordered = sorted(runs[name], key=lambda r: r["env_steps_per_s"])
        results[name] = ordered[len(ordered) // 2]
        log(f"  {name}: {results[name]['env_steps_per_s']:,.0f} env steps/s")
    base = results["gym-sync"]["env_steps_per_s"]
    lines = [
        "| backend | env steps/s | vs SyncVectorEnv | p50 µs (batch step) | p99 µs | p99/p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {LABELS[name]} | {r['env_steps_per_s']:,.0f} | {r['env_steps_per_s'] / base:.2f}x | "
            f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['p99_us'] / r['p50_us']:.2f} |"
        )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines += [
        "",
        f"{num_envs} uneven CostEnvs ({step_us:g} µs to {step_us * spread:g} µs a step), {cpus} usable CPUs, "
        f"{cycles} batch steps, medians of {repeats} interleaved repeat(s).",
    ]
    if "fastenv-w2-pool" in results and "fastenv-w2-step" in results:
        pool, step = results["fastenv-w2-pool"], results["fastenv-w2-step"]
        speedup = pool["env_steps_per_s"] / step["env_steps_per_s"]
        tail = pool["p99_us"] / pool["p50_us"]
        lines.append(
            f"- pool vs synchronous step: {speedup:.2f}x env steps/s (target >= {SPEEDUP_TARGET}x: "
            f"{'met' if speedup >= SPEEDUP_TARGET else 'NOT met'})"
        )
        lines.append(
            f"- pool p99 / p50 of one batch step: {tail:.2f} (target <= {TAIL_TARGET}: "
            f"{'met' if tail <= TAIL_TARGET else 'NOT met'})"
        )
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--cycles", type=int, default=300, help="timed batch steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-us", type=float, default=100.0, help="the cheapest env's step cost")
    parser.add_argument("--spread", type=float, default=10.0, help="dearest / cheapest step cost")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test); also FASTENV_BENCH_QUICK=1")
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("FASTENV_BENCH_QUICK", "") not in ("", "0"):
        args.cycles, args.repeats = 20, 1
    print(pool_table(args.num_envs, args.cycles, args.repeats, args.step_us, args.spread))
    return 0


if __name__ == "__main__":
    sys.exit(main())
