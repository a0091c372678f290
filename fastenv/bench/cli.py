"""``fastenv-bench`` (also ``fastenv bench``): step round trips of fastenv against its baselines.

Example::

    fastenv-bench --payload small --steps 2000 --repeat 3
    fastenv-bench --payload camera --steps 300 --json out.json --plot out.png
    fastenv-bench --sweep --steps 300 --format markdown --plot sweep.png
    fastenv-bench --scaling clients --counts 1,2,4 --steps 2000
    fastenv-bench --scaling envs --counts 1,4,16 --steps 500 --plot envs.png
    fastenv-bench --scaling envs --quick --format markdown

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
reference time for the payload, then the performance targets
(:mod:`fastenv.bench.targets`) computed from this run, each PASS, MISS or n/a.
Then, unless ``--no-breakdown``, each fastenv row's p50 split into encode,
transport, env step and decode (:mod:`fastenv.bench.breakdown`: encode,
decode and env step are measured in this process on the same values, the
transport is the remainder).
Every server process runs with the same allocator setting (``--malloc``, see
:mod:`fastenv.bench.malloc`).

Modes:

- default: one payload (``--payload``), one table.
- ``--sweep [P1,P2,...]``: the same for several payloads (default
  :data:`~fastenv.bench.workloads.SWEEP_PAYLOADS`, 16 B to 1.8 MB), one table
  each, then MB/s per transport and payload.
- ``--scaling AXIS``: aggregate steps/s against ``--counts`` (see
  :mod:`fastenv.bench.scaling`): ``clients`` (client processes on one
  per-client server; fastenv rows) or ``envs`` (envs per server, one
  ``FastVectorEnv`` client, with ``--workers auto`` and as an async pool,
  beside Gymnasium's ``AsyncVectorEnv`` and ``SyncVectorEnv`` as
  ``gym-async`` / ``gym-sync``, SB3's ``SubprocVecEnv`` and PufferLib's
  vectorizer). ``--sweep`` runs several payloads, one table each (the
  ``costly`` and ``uneven`` envs are made for this axis).
- ``--quick``: a smoke run (few steps, the axis's quick counts and payloads).

Output: tables on stdout (``--format``: ``rich`` on a terminal, ``plain``
otherwise, or ``markdown``; see :mod:`fastenv.bench.render`); progress on
stderr (:mod:`fastenv.bench.progress`; ``--no-progress``); ``--json PATH``
(``-``: stdout, and the tables go to stderr); ``--plot PATH``: a PNG
(:mod:`fastenv.bench.plot`, needs ``fastenv[plot]``).
The command's flags are declared in :mod:`fastenv.bench.options`; what it
prints and writes once the runs are done is in :mod:`fastenv.bench.report`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from fastenv.bench import malloc, plot
from fastenv.bench.axes import AXES
from fastenv.bench.breakdown import (
    BreakdownRow,
    InProcessCosts,
    breakdown_rows,
    measure_costs,
    median_costs,
    planes_of,
)
from fastenv.bench.memcpy import memcpy_reference
from fastenv.bench.options import parse_args
from fastenv.bench.progress import Progress, open_progress
from fastenv.bench.render import default_format, emit
from fastenv.bench.report import (
    plot_sections,
    print_section,
    row_targets,
    run_config,
    scaling_rates,
    write_json,
)
from fastenv.bench.results import (
    SCHEMA,
    PayloadResults,
    Row,
    ScalingRow,
    comparison_report,
    machine_info,
    scaling_report,
    scaling_sweep_report,
    sweep_report,
)
from fastenv.bench.runner import run_transport
from fastenv.bench.scaling import run_point
from fastenv.bench.tables import format_table, scaling_table, sweep_table
from fastenv.bench.timing import TransportMismatch
from fastenv.bench.workloads import observation_nbytes
from fastenv.errors import FastEnvError

__all__ = [
    "SCHEMA",
    "Row",
    "format_table",
    "machine_info",
    "main",
    "parse_args",
    "run",
    "run_breakdown",
    "run_scaling",
]


# --------------------------------------------------------------------------
# Comparison (one payload, or a sweep)
# --------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """``Type: first line`` plus the last line when they differ (a child's traceback ends there)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = type(exc).__name__
    if lines:
        text += f": {lines[0]}"
        if len(lines) > 1:
            text += f" ... {lines[-1]}"
    return text


def _rotations(names: Sequence[str], repeats: int) -> Iterator[tuple[int, list[str]]]:
    """``(repeat, names in that repeat's order)``: the order rotates by one each repeat."""
    order = list(names)
    for repeat in range(repeats):
        shift = repeat % len(order)
        yield repeat, order[shift:] + order[:shift]


def run(args: argparse.Namespace, payload: str | None = None, progress: Progress | None = None) -> list[Row]:
    """Run every transport ``args.repeat`` times on ``payload`` (default ``args.payload``), interleaved."""
    payload = args.payload if payload is None else payload
    server_env = malloc.environment(args.malloc)
    malloc.apply(server_env)  # the measuring process too
    rows = {name: Row(name) for name in args.transports}
    for repeat, order in _rotations(args.transports, args.repeat):
        for name in order:
            row = rows[name]
            if row.status != "ok":
                continue
            label = f"{name} {payload}" + (f" [{repeat + 1}/{args.repeat}]" if args.repeat > 1 else "")
            if progress is not None:
                progress.start(label)
            try:
                row.runs.append(
                    run_transport(
                        name,
                        payload,
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
            if progress is not None:
                progress.finish(label, row.status)
    return list(rows.values())


def run_breakdown(
    args: argparse.Namespace, payload: str, rows: Sequence[Row], progress: Progress | None = None
) -> list[BreakdownRow]:
    """Split each measured fastenv row's p50 of ``payload`` (see :mod:`fastenv.bench.breakdown`).

    Measures each data plane's in-process costs ``args.repeat`` times
    (``args.steps`` samples, ``args.warmup`` untimed steps, capped by
    ``args.max_seconds``) and takes the median; planes whose rows did not run
    are skipped, and a plane that cannot be measured gives its rows an error.
    """
    p50 = {row.transport: row.p50 for row in rows if row.status == "ok" and row.runs}
    measured_planes = planes_of(list(p50))
    costs: dict[str, InProcessCosts | BaseException] = {}
    for plane in planes_of(args.transports):
        runs: list[InProcessCosts] = []
        failure: BaseException | None = None
        for repeat in range(args.repeat):
            label = f"breakdown {plane} {payload}" + (f" [{repeat + 1}/{args.repeat}]" if args.repeat > 1 else "")
            if progress is not None:
                progress.start(label)
            status = "skipped"  # no row of this plane ran, or an earlier repeat failed
            if plane in measured_planes and failure is None:
                try:
                    runs.append(measure_costs(payload, plane, args.steps, args.warmup, max_seconds=args.max_seconds))
                    status = "ok"
                except (FastEnvError, OSError) as exc:
                    failure, status = exc, "unavailable"
            if progress is not None:
                progress.finish(label, status)
        if failure is not None:
            costs[plane] = failure
        elif runs:
            costs[plane] = median_costs(runs)
    return breakdown_rows(p50, costs)


def _compare(args: argparse.Namespace, fmt: str, out: TextIO) -> tuple[list[PayloadResults], dict[str, Any]]:
    payloads = list(args.sweep) if args.sweep is not None else [args.payload]
    sizes = {payload: observation_nbytes(payload) for payload in payloads}
    what = ",".join(payloads) if args.sweep is not None else f"{args.payload} ({sizes[args.payload]:,} B)"
    out.write(
        f"{'payloads' if args.sweep is not None else 'payload'}={what} steps={args.steps} warmup={args.warmup} "
        f"repeat={args.repeat} cpus={os.cpu_count()} malloc={args.malloc}\n"
    )
    out.flush()
    sections: list[PayloadResults] = []
    planes = len(planes_of(args.transports)) if args.breakdown else 0
    total = len(payloads) * args.repeat * (len(args.transports) + planes)
    with open_progress(total, disabled=args.no_progress) as progress:
        for payload in payloads:
            rows = run(args, payload, progress)
            memcpy = memcpy_reference(payload, copies=args.steps)
            breakdown = run_breakdown(args, payload, rows, progress) if args.breakdown else None
            sections.append(PayloadResults(payload, sizes[payload], rows, memcpy, row_targets(payload, rows, memcpy),
                                           breakdown))  # fmt: skip
    for i, section in enumerate(sections):
        if args.sweep is not None:
            if i:
                out.write("\n")
            print_section(section, fmt, out, title=f"payload {section.payload} ({section.nbytes:,} B)")
        else:
            print_section(section, fmt, out)
    if args.sweep is not None:
        out.write("\n")
        emit(sweep_table(sections), fmt, out)
    config = run_config(args)
    report = sweep_report(config, sections) if args.sweep is not None else comparison_report(config, sections[0])
    return sections, report


# --------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------


def run_scaling(
    args: argparse.Namespace, progress: Progress | None = None, payload: str | None = None
) -> list[ScalingRow]:
    """Every (transport, count) point of ``args.scaling`` on ``payload`` (default ``args.payload``),
    ``args.repeat`` times, transports interleaved."""
    axis = AXES[args.scaling]
    payload = args.payload if payload is None else payload
    server_env = malloc.environment(args.malloc)
    rows = {(name, count): ScalingRow(name, count) for name in args.transports for count in args.counts}
    for repeat, order in _rotations(args.transports, args.repeat):
        for name in order:
            for count in args.counts:
                row = rows[name, count]
                if row.status != "ok":
                    continue
                label = f"{name} {axis.label}={count}" + (f" {payload}" if args.sweep is not None else "")
                label += f" [{repeat + 1}/{args.repeat}]" if args.repeat > 1 else ""
                if progress is not None:
                    progress.start(label)
                try:
                    row.points.append(
                        run_point(axis, count, name, payload, args.steps, args.warmup,
                                  max_seconds=args.max_seconds, timeout=args.timeout, server_env=server_env)
                    )  # fmt: skip
                except TransportMismatch as exc:
                    row.status, row.error = "mismatch", str(exc)
                except (FastEnvError, OSError, ImportError) as exc:
                    row.status, row.error = "unavailable", _one_line(exc)
                if progress is not None:
                    progress.finish(label, row.status)
    return list(rows.values())


def _scale(args: argparse.Namespace, fmt: str, out: TextIO) -> tuple[list[ScalingRow], dict[str, Any]]:
    axis = AXES[args.scaling]
    payloads = list(args.sweep) if args.sweep is not None else [args.payload]
    out.write(
        f"scaling={axis.name} counts={','.join(map(str, args.counts))} "
        f"{'payloads' if args.sweep is not None else 'payload'}={','.join(payloads)} steps={args.steps} "
        f"warmup={args.warmup} repeat={args.repeat} cpus={os.cpu_count()} malloc={args.malloc}\n"
    )
    out.flush()
    total = len(payloads) * args.repeat * len(args.transports) * len(args.counts)
    with open_progress(total, disabled=args.no_progress) as progress:
        sections = {payload: run_scaling(args, progress, payload) for payload in payloads}
    for i, (payload, rows) in enumerate(sections.items()):
        title = f"payload {payload}" if args.sweep is not None else None
        if i:
            out.write("\n")
        emit(scaling_table(rows, axis=axis, cpu_count=os.cpu_count(), title=title), fmt, out)
    if args.sweep is None:
        rows = sections[args.payload]
        return rows, scaling_report(run_config(args), rows, reference=axis.reference)
    every = [row for rows in sections.values() for row in rows]
    return every, scaling_sweep_report(run_config(args), sections, reference=axis.reference)


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, prog: str = "fastenv-bench") -> int:
    """Entry point of ``fastenv-bench``; returns the exit status (1: a transport returned wrong data)."""
    args = parse_args(argv, prog)
    out = sys.stderr if args.json == "-" else sys.stdout
    fmt = args.format or default_format(out)
    try:
        if args.plot:
            plot.require_matplotlib()  # before minutes of measuring, not after
    except FastEnvError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    statuses: list[str]
    if args.scaling is not None:
        scaling_rows, report = _scale(args, fmt, out)
        statuses = [row.status for row in scaling_rows]
    else:
        sections, report = _compare(args, fmt, out)
        statuses = [row.status for section in sections for row in section.rows]
    if args.json:
        write_json(report, args.json)
    code = 1 if "mismatch" in statuses else 0
    if args.plot:
        try:
            if args.scaling is not None:
                axis = AXES[args.scaling]
                plot.plot_scaling(scaling_rates(scaling_rows), args.plot, axis_label=axis.label,
                                  title=f"fastenv-bench --scaling {axis.name}: {args.payload}, {os.cpu_count()} CPUs",
                                  rate_label=axis.rate_label)  # fmt: skip
            else:
                plot_sections(sections, args.plot)
        except ValueError as exc:
            print(f"{prog}: no plot: {exc}", file=sys.stderr, flush=True)
        except (OSError, FastEnvError) as exc:
            print(f"{prog}: error: could not write the plot: {exc}", file=sys.stderr, flush=True)
            return max(code, 2)
        else:
            print(f"plot written to {args.plot}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
