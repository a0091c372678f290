"""``fastenv-bench`` (also ``fastenv bench``): step round trips of fastenv against its baselines.

Example::

    fastenv-bench --payload small --steps 2000 --repeat 3
    fastenv-bench --payload camera --steps 300 --json out.json --plot out.png
    fastenv-bench --sweep --steps 300 --format markdown --plot sweep.png
    fastenv-bench --scaling clients --counts 1,2,4 --steps 2000
    fastenv-bench --scaling envs --counts 1,4,16 --steps 500 --plot envs.png

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
  ``FastVectorEnv`` client, beside Gymnasium's ``AsyncVectorEnv`` and
  ``SyncVectorEnv`` as ``gym-async`` / ``gym-sync``).

Output: tables on stdout (``--format``: ``rich`` on a terminal, ``plain``
otherwise, or ``markdown``; see :mod:`fastenv.bench.render`); progress on
stderr (:mod:`fastenv.bench.progress`; ``--no-progress``); ``--json PATH``
(``-``: stdout, and the tables go to stderr); ``--plot PATH``: a PNG
(:mod:`fastenv.bench.plot`, needs ``fastenv[plot]``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

from fastenv.bench import malloc, plot
from fastenv.bench.breakdown import (
    BreakdownRow,
    InProcessCosts,
    breakdown_rows,
    measure_costs,
    median_costs,
    planes_of,
)
from fastenv.bench.floors import MemcpyReference, memcpy_reference
from fastenv.bench.progress import Progress, open_progress
from fastenv.bench.render import FORMATS, default_format, emit
from fastenv.bench.results import (
    SCHEMA,
    PayloadResults,
    Row,
    ScalingRow,
    comparison_report,
    machine_info,
    scaling_report,
    sweep_report,
)
from fastenv.bench.runner import (
    TRANSPORTS,
    TransportMismatch,
    run_transport,
)
from fastenv.bench.scaling import AXES, SCALING_TRANSPORTS, run_point
from fastenv.bench.tables import (
    breakdown_table,
    comparison_table,
    format_memcpy,
    format_table,
    scaling_table,
    sweep_table,
    targets_table,
)
from fastenv.bench.targets import Target, evaluate, format_targets
from fastenv.bench.workloads import (
    PAYLOADS,
    SWEEP_PAYLOADS,
    get_workload,
    observation_nbytes,
)
from fastenv.errors import FastEnvError

__all__ = [
    "SCHEMA",
    "Row",
    "build_parser",
    "build_report",
    "format_table",
    "machine_info",
    "main",
    "parse_args",
    "row_targets",
    "run",
    "run_breakdown",
    "run_scaling",
]

#: Every name ``--transports`` knows (some run only on a ``--scaling`` axis, see parse_args).
_KNOWN_TRANSPORTS: tuple[str, ...] = tuple(dict.fromkeys((*TRANSPORTS, *SCALING_TRANSPORTS)))


def _transport_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no transport given")
    unknown = [name for name in names if name not in _KNOWN_TRANSPORTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown transport(s) {', '.join(unknown)}; choose from {', '.join(_KNOWN_TRANSPORTS)}"
        )
    return list(dict.fromkeys(names))


def _payload(text: str) -> str:
    try:
        get_workload(text)
    except KeyError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None
    return text


def _payload_list(text: str) -> list[str]:
    names = [_payload(name.strip()) for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no payload given")
    return list(dict.fromkeys(names))


def _count_list(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be integers >= 1, got {text!r}")
    return sorted(set(counts))


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


def build_parser(prog: str = "fastenv-bench") -> argparse.ArgumentParser:
    """The ``fastenv-bench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure env step round trips over fastenv and baseline transports.",
    )
    parser.add_argument(
        "--transports",
        type=_transport_list,
        default=None,
        help=f"comma-separated list (default: all but gym-sync, which runs only with --scaling envs; "
        f"with --scaling: the axis's, see --scaling): {','.join(_KNOWN_TRANSPORTS)}",
    )
    parser.add_argument(
        "--payload",
        type=_payload,
        default="small",
        help=f"workload: {', '.join(PAYLOADS)} or camera-<H>x<W> (default: small)",
    )
    parser.add_argument(
        "--sweep",
        type=_payload_list,
        nargs="?",
        const=list(SWEEP_PAYLOADS),
        metavar="PAYLOADS",
        help=f"run every payload of a comma-separated list (default: {','.join(SWEEP_PAYLOADS)}); "
        "adds an MB/s table (and a throughput panel with --plot)",
    )
    parser.add_argument(
        "--scaling",
        choices=list(AXES),
        help="instead of the comparison: aggregate steps/s against --counts on this axis. "
        "clients: concurrent client processes, each with its own env on one per-client server "
        f"(default transports {','.join(AXES['clients'].default_transports)}); "
        "envs: N envs per server (fastenv serve --num-envs N), one FastVectorEnv client, env steps/s, beside "
        "Gymnasium's AsyncVectorEnv(N, shared_memory=True) and SyncVectorEnv(N) "
        f"(default transports {','.join(AXES['envs'].default_transports)})",
    )
    parser.add_argument(
        "--counts",
        type=_count_list,
        default=None,
        help="--scaling counts, comma-separated (default: "
        + "; ".join(f"{name}: {','.join(map(str, axis.default_counts))}" for name, axis in AXES.items())
        + ")",
    )
    parser.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the comparison, split each fastenv row's p50 into encode, transport, env step and decode "
        "(encode/decode/env measured in this process on the same values, transport the remainder; default: on)",
    )
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
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="table format (default: rich when stdout is a terminal, plain otherwise)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (default: a bar on a terminal, one line per run otherwise)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write results and machine info as JSON ('-': to stdout, tables to stderr)"
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help='also draw a PNG: latency distributions, MB/s against size with --sweep, steps/s with --scaling '
        '(needs matplotlib: pip install "fastenv[plot]")',
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = "fastenv-bench") -> argparse.Namespace:
    """Parse ``fastenv-bench`` arguments (exits with status 2 on a bad one)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.scaling is not None:
        axis = AXES[args.scaling]
        if args.sweep is not None:
            parser.error("--sweep and --scaling do not combine")
        if args.transports is None:
            args.transports = list(axis.default_transports)
        if args.counts is None:
            args.counts = list(axis.default_counts)
        others = [name for name in args.transports if name not in axis.transports]
        if others:
            parser.error(
                f"--scaling {axis.name} runs {', '.join(axis.transports)} only, not {', '.join(others)}"
            )
    else:
        if args.transports is None:
            args.transports = list(TRANSPORTS)
        others = [name for name in args.transports if name not in TRANSPORTS]
        if others:
            parser.error(f"{', '.join(others)} run(s) only with --scaling envs")
        if args.counts is not None:
            parser.error("--counts needs --scaling")
    return args


# --------------------------------------------------------------------------
# Comparison (one payload, or a sweep)
# --------------------------------------------------------------------------


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


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {
        "transports": list(args.transports),
        "payload": args.payload,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "max_seconds": args.max_seconds,
        "malloc": args.malloc,
        "server_env": malloc.environment(args.malloc),
        "breakdown": bool(args.breakdown) and args.scaling is None,
    }
    if args.sweep is not None:
        config["payloads"] = list(args.sweep)
        del config["payload"]
    if args.scaling is not None:
        config.update(axis=args.scaling, counts=list(args.counts))
    return config


def build_report(
    args: argparse.Namespace,
    rows: Sequence[Row],
    memcpy: MemcpyReference | None = None,
    targets: Sequence[Target] = (),
) -> dict[str, Any]:
    """The JSON document of one payload: schema tag, machine, config, reference, results, memcpy, targets."""
    nbytes = memcpy.nbytes if memcpy is not None else observation_nbytes(args.payload)
    return comparison_report(_config(args), PayloadResults(args.payload, nbytes, list(rows), memcpy, list(targets)))


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


def _print_section(section: PayloadResults, fmt: str, out: TextIO, *, title: str | None = None) -> None:
    emit(comparison_table(section.rows, nbytes=section.nbytes, title=title), fmt, out)
    if section.memcpy is not None:
        separator = "" if fmt == "plain" else "\n"  # a Markdown list would swallow the next line
        out.write(separator + format_memcpy(section.memcpy) + "\n")
    if fmt == "plain":
        out.write(format_targets(section.targets) + "\n")
    elif section.targets:
        out.write("\n")
        emit(targets_table(section.targets), fmt, out)
    if section.breakdown:
        out.write("\n")
        emit(breakdown_table(section.breakdown), fmt, out)
    out.flush()


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
            _print_section(section, fmt, out, title=f"payload {section.payload} ({section.nbytes:,} B)")
        else:
            _print_section(section, fmt, out)
    if args.sweep is not None:
        out.write("\n")
        emit(sweep_table(sections), fmt, out)
    config = _config(args)
    report = sweep_report(config, sections) if args.sweep is not None else comparison_report(config, sections[0])
    return sections, report


def _plot_comparison(sections: Sequence[PayloadResults], path: str) -> None:
    latencies = {s.payload: {row.transport: row.rtt_us() for row in s.rows if row.runs} for s in sections}
    throughput: dict[str, dict[str, float]] = {}
    for section in sections:
        for row in section.rows:
            if row.status == "ok" and row.runs:
                throughput.setdefault(row.transport, {})[section.payload] = row.mb_per_s(section.nbytes)
    plot.plot_comparison(
        latencies,
        path,
        nbytes={s.payload: s.nbytes for s in sections},
        throughput=throughput if len(sections) > 1 else None,
        title=f"fastenv-bench, {os.cpu_count()} CPUs",
    )


# --------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------


def run_scaling(args: argparse.Namespace, progress: Progress | None = None) -> list[ScalingRow]:
    """Every (transport, count) point of ``args.scaling``, ``args.repeat`` times, transports interleaved."""
    axis = AXES[args.scaling]
    server_env = malloc.environment(args.malloc)
    rows = {(name, count): ScalingRow(name, count) for name in args.transports for count in args.counts}
    for repeat, order in _rotations(args.transports, args.repeat):
        for name in order:
            for count in args.counts:
                row = rows[name, count]
                if row.status != "ok":
                    continue
                label = f"{name} {axis.label}={count}" + (f" [{repeat + 1}/{args.repeat}]" if args.repeat > 1 else "")
                if progress is not None:
                    progress.start(label)
                try:
                    row.points.append(
                        run_point(axis, count, name, args.payload, args.steps, args.warmup,
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
    out.write(
        f"scaling={axis.name} counts={','.join(map(str, args.counts))} payload={args.payload} steps={args.steps} "
        f"warmup={args.warmup} repeat={args.repeat} cpus={os.cpu_count()} malloc={args.malloc}\n"
    )
    out.flush()
    total = args.repeat * len(args.transports) * len(args.counts)
    with open_progress(total, disabled=args.no_progress) as progress:
        rows = run_scaling(args, progress)
    emit(scaling_table(rows, axis=axis, cpu_count=os.cpu_count()), fmt, out)
    return rows, scaling_report(_config(args), rows, reference=axis.reference)


def _scaling_rates(rows: Sequence[ScalingRow]) -> Mapping[str, Mapping[int, float]]:
    rates: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.status == "ok" and row.points:
            rates.setdefault(row.transport, {})[row.count] = row.steps_per_s
    return rates


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _write_json(report: Mapping[str, Any], path: str) -> None:
    if path == "-":
        json.dump(report, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, allow_nan=False)
        handle.write("\n")


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
        _write_json(report, args.json)
    code = 1 if "mismatch" in statuses else 0
    if args.plot:
        try:
            if args.scaling is not None:
                axis = AXES[args.scaling]
                plot.plot_scaling(_scaling_rates(scaling_rows), args.plot, axis_label=axis.label,
                                  title=f"fastenv-bench --scaling {axis.name}: {args.payload}, {os.cpu_count()} CPUs",
                                  rate_label=axis.rate_label)  # fmt: skip
            else:
                _plot_comparison(sections, args.plot)
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
