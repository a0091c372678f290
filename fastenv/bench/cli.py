"""``fastenv-bench``: step round-trip latency of fastenv against its baselines.

Example::

    fastenv-bench --payload small --steps 2000 --repeat 3
    python -m fastenv.bench.cli --payload camera --steps 300 --json out.json

Every transport serves the same example env from its own server process on
this machine; repeats are interleaved (each repeat runs every transport, in a
rotated order) and the table reports medians across repeats. The last column
is each row's p50 divided by the fastest fastenv row's p50 (or the fastest
row's, when no fastenv row ran). A transport that cannot start is listed as
unavailable; one that returns a wrong observation fails the run (exit code 1).

Rows: ``fastenv-shm`` / ``fastenv-shm-py`` / ``fastenv-tcp`` (see
:mod:`fastenv.bench.runner`), ``gym-async`` (Gymnasium's ``AsyncVectorEnv``,
its own shared memory + pipes), the socket and pipe baselines
(:mod:`fastenv.bench.baselines`) and the shared-memory ping-pong floors
(:mod:`fastenv.bench.floors`). Under the table: the in-process ``np.copyto``
reference time for the payload, then the issue's targets
(:mod:`fastenv.bench.targets`) computed from this run, each PASS, MISS or n/a.
Every server process runs with the same allocator setting (``--malloc``, see
:mod:`fastenv.bench.malloc`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from fastenv.bench import malloc
from fastenv.bench.floors import MemcpyReference, memcpy_reference
from fastenv.bench.runner import (
    FASTENV_TRANSPORTS,
    FLOOR_TRANSPORTS,
    TRANSPORTS,
    RunResult,
    TransportMismatch,
    run_transport,
)
from fastenv.bench.stats import Spread, median_summary
from fastenv.bench.targets import Target, evaluate, format_targets
from fastenv.bench.workloads import PAYLOADS
from fastenv.errors import FastEnvError

__all__ = ["Row", "format_table", "machine_info", "main", "parse_args", "row_targets"]

SCHEMA = "fastenv-bench/2"


def _transport_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no transport given")
    unknown = [name for name in names if name not in TRANSPORTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown transport(s) {', '.join(unknown)}; choose from {', '.join(TRANSPORTS)}"
        )
    return list(dict.fromkeys(names))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``fastenv-bench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fastenv-bench",
        description="Measure env step round trips over fastenv and baseline transports.",
    )
    parser.add_argument(
        "--transports",
        type=_transport_list,
        default=list(TRANSPORTS),
        help=f"comma-separated list (default: all): {','.join(TRANSPORTS)}",
    )
    parser.add_argument("--payload", choices=list(PAYLOADS), default="small", help="workload (default: small)")
    parser.add_argument("--steps", type=_positive_int, default=1000, help="timed steps per run (default: 1000)")
    parser.add_argument(
        "--warmup", type=_non_negative_int, default=10, help="untimed, verified steps per run (default: 10)"
    )
    parser.add_argument("--repeat", type=_positive_int, default=1, help="interleaved repeats (default: 1)")
    parser.add_argument(
        "--max-seconds",
        type=_positive_float,
        default=15.0,
        help="wall-time cap on one run's timed loop, so seed-pickle (~90 ms/step) ends (default: 15)",
    )
    parser.add_argument(
        "--timeout", type=_positive_float, default=30.0, help="server start and request timeout in s (default: 30)"
    )
    parser.add_argument(
        "--malloc",
        choices=malloc.MODES,
        default="steady",
        help="allocator setting of every process (default: steady; see fastenv.bench.malloc)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write results and machine info as JSON")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``fastenv-bench`` arguments (exits with status 2 on a bad one)."""
    return build_parser().parse_args(argv)


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU count, OS, Python, numpy and pyzmq versions."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical = None
    try:
        from fastenv import __version__ as fastenv_version
    except ImportError:  # pragma: no cover
        fastenv_version = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": physical,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "fastenv": fastenv_version,
    }


@dataclass
class Row:
    """One transport's runs across repeats, or why it has none."""

    transport: str
    runs: list[RunResult] = field(default_factory=list)
    status: str = "ok"  # "ok", "unavailable" or "mismatch"
    error: str | None = None

    @property
    def medians(self) -> dict[str, Spread] | None:
        """Per-metric spreads across repeats (``None`` without runs)."""
        return dict(median_summary([run.summary for run in self.runs])) if self.runs else None

    @property
    def p50(self) -> float:
        medians = self.medians
        return medians["p50_us"].median if medians else math.nan


def _reference(rows: Sequence[Row]) -> Row | None:
    """The fastest fastenv row, else the fastest row; ``None`` when nothing ran."""
    measured = [row for row in rows if row.status == "ok" and row.runs]
    preferred = [row for row in measured if row.transport in FASTENV_TRANSPORTS] or measured
    return min(preferred, key=lambda row: row.p50, default=None)


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain aligned text table of medians across repeats."""
    reference = _reference(rows)
    headers = ["transport", "n", "p50 µs", "p50 ±%", "p99 µs", "steps/s", "CPU µs/step", "p50 / ref"]
    lines: list[list[str]] = []
    for row in rows:
        medians = row.medians
        if row.status != "ok" or medians is None:
            lines.append([row.transport, f"{row.status}: {row.error or ''}".strip()])
            continue
        p50 = medians["p50_us"]
        ratio = p50.median / reference.p50 if reference is not None and reference.p50 > 0 else math.nan
        lines.append(
            [
                row.transport,
                f"{int(medians['count'].median)}",
                _fmt(p50.median),
                _fmt(50 * p50.relative, 0),
                _fmt(medians["p99_us"].median),
                _fmt(medians["steps_per_s"].median, 0),
                _fmt(medians["cpu_us"].median),
                f"{ratio:.2f}x" if not math.isnan(ratio) else "-",
            ]
        )
    widths = [len(h) for h in headers]
    for line in lines:
        if len(line) == len(headers):
            widths = [max(w, len(cell)) for w, cell in zip(widths, line)]

    def render(cells: Sequence[str]) -> str:
        if len(cells) != len(headers):  # an unavailable row: name, then the reason
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        out = [f"{cells[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out)

    text = [render(headers), "  ".join("-" * w for w in widths)] + [render(line) for line in lines]
    if reference is not None:
        if reference.transport in FASTENV_TRANSPORTS:
            kind = "fastest fastenv row"
        else:
            kind = "fastest row; no fastenv row ran"
        text.append(
            f"ref = {reference.transport} ({kind}); n = timed steps per run; "
            "±% = half the p50 range across repeats"
        )
    names = {row.transport for row in rows}
    if "gym-async" in names:
        text.append("gym-async = Gymnasium AsyncVectorEnv(shared_memory=True), 1 env: its own shm + pipes")
    if names & set(FLOOR_TRANSPORTS):
        text.append(
            "shm-pingpong-* = floors: env step + np.copyto into shared memory, client reads views "
            "(action in, observation out, nothing else)"
        )
    return "\n".join(text)


def format_memcpy(reference: MemcpyReference) -> str:
    """The memcpy reference line."""
    return (
        f"memcpy ({reference.payload} observation, {reference.nbytes:,} B, in-process np.copyto, "
        f"n={reference.cached.count}): cached re-copy p50 {_fmt(reference.cached.p50_us)} µs, "
        f"fresh source p50 {_fmt(reference.fresh.p50_us)} µs"
    )


def row_targets(payload: str, rows: Sequence[Row], reference: MemcpyReference | None) -> list[Target]:
    """The issue's targets for ``payload`` from the rows' medians and the memcpy reference."""
    p50: dict[str, float] = {}
    p99: dict[str, float] = {}
    for row in rows:
        medians = row.medians
        if row.status == "ok" and medians is not None:
            p50[row.transport] = medians["p50_us"].median
            p99[row.transport] = medians["p99_us"].median
    memcpy_us = None
    if reference is not None:
        memcpy_us = {"cached": reference.cached.p50_us, "fresh": reference.fresh.p50_us}
    return evaluate(payload, p50, p99, memcpy_us)


def _clean(value: Any) -> Any:
    """Replace non-finite floats by ``None`` so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def build_report(
    args: argparse.Namespace,
    rows: Sequence[Row],
    memcpy: MemcpyReference | None = None,
    targets: Sequence[Target] = (),
) -> dict[str, Any]:
    """The JSON document: schema tag, machine, config, reference, one entry per transport, memcpy, targets."""
    reference = _reference(rows)
    results = []
    for row in rows:
        medians = row.medians
        ratio = None
        if medians is not None and reference is not None and reference.p50 > 0:
            ratio = medians["p50_us"].median / reference.p50
        results.append(
            {
                "transport": row.transport,
                "payload": args.payload,
                "status": row.status,
                "error": row.error,
                "median": {k: s.as_dict() for k, s in medians.items()} if medians else None,
                "p50_ratio_to_reference": ratio,
                "runs": [run.as_dict() for run in row.runs],
            }
        )
    return _clean(
        {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "config": {
                "transports": list(args.transports),
                "payload": args.payload,
                "steps": args.steps,
                "warmup": args.warmup,
                "repeat": args.repeat,
                "max_seconds": args.max_seconds,
                "malloc": args.malloc,
                "server_env": malloc.environment(args.malloc),
            },
            "reference": reference.transport if reference is not None else None,
            "results": results,
            "memcpy": memcpy.as_dict() if memcpy is not None else None,
            "targets": [target.as_dict() for target in targets],
        }
    )


def _one_line(exc: BaseException) -> str:
    """``Type: first line`` plus the last line when they differ (a child's traceback ends there)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = type(exc).__name__
    if lines:
        text += f": {lines[0]}"
        if len(lines) > 1:
            text += f" ... {lines[-1]}"
    return text


def run(args: argparse.Namespace) -> list[Row]:
    """Run every transport ``args.repeat`` times, interleaved, rotating the order each repeat."""
    server_env = malloc.environment(args.malloc)
    malloc.apply(server_env)  # the measuring process too
    rows = {name: Row(name) for name in args.transports}
    order = list(args.transports)
    for repeat in range(args.repeat):
        shift = repeat % len(order)
        for name in order[shift:] + order[:shift]:
            row = rows[name]
            if row.status != "ok":
                continue
            try:
                row.runs.append(
                    run_transport(
                        name,
                        args.payload,
                        args.steps,
                        args.warmup,
                        max_seconds=args.max_seconds,
                        timeout=args.timeout,
                        server_env=server_env,
                    )
                )
            except TransportMismatch as exc:
                row.status, row.error = "mismatch", str(exc)
            except (FastEnvError, OSError, ImportError) as exc:
                row.status, row.error = "unavailable", _one_line(exc)
            print(f"  [{repeat + 1}/{args.repeat}] {name}: {row.status}", file=sys.stderr, flush=True)
    return list(rows.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastenv-bench``; returns the exit status."""
    args = parse_args(argv)
    print(
        f"payload={args.payload} steps={args.steps} warmup={args.warmup} repeat={args.repeat} "
        f"cpus={os.cpu_count()} malloc={args.malloc}",
        flush=True,
    )
    rows = run(args)
    memcpy = memcpy_reference(args.payload, copies=args.steps)
    targets = row_targets(args.payload, rows, memcpy)
    print(format_table(rows))
    print(format_memcpy(memcpy))
    print(format_targets(targets))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(build_report(args, rows, memcpy, targets), handle, indent=2, allow_nan=False)
            handle.write("\n")
    return 1 if any(row.status == "mismatch" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
