"""What ``fastenv-bench`` makes of finished runs: targets, the JSON config and file, printed sections, plots.

The measuring is in :mod:`fastenv.bench.cli`; the JSON documents are built by
:mod:`fastenv.bench.results` and the tables by :mod:`fastenv.bench.tables`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from fastenv.bench import malloc, plot
from fastenv.bench.memcpy import MemcpyReference
from fastenv.bench.render import emit
from fastenv.bench.results import PayloadResults, Row, ScalingRow, comparison_report
from fastenv.bench.tables import breakdown_table, comparison_table, format_memcpy, targets_table
from fastenv.bench.targets import Target, evaluate, format_targets
from fastenv.bench.workloads import observation_nbytes

__all__ = [
    "build_report",
    "plot_sections",
    "print_section",
    "row_targets",
    "run_config",
    "scaling_rates",
    "write_json",
]


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


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``config`` of the JSON documents: what ``args`` asked for, with the servers' environment."""
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
    return comparison_report(run_config(args), PayloadResults(args.payload, nbytes, list(rows), memcpy, list(targets)))


def print_section(section: PayloadResults, fmt: str, out: TextIO, *, title: str | None = None) -> None:
    """One payload's comparison table, then its memcpy reference, targets and breakdown, in ``fmt``."""
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


def plot_sections(sections: Sequence[PayloadResults], path: str) -> None:
    """Draw the latency distributions of ``sections`` (and MB/s against size for several) to ``path``."""
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


def scaling_rates(rows: Sequence[ScalingRow]) -> Mapping[str, Mapping[int, float]]:
    """``{transport: {count: steps/s}}`` of the rows that ran."""
    rates: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.status == "ok" and row.points:
            rates.setdefault(row.transport, {})[row.count] = row.steps_per_s
    return rates


def write_json(report: Mapping[str, Any], path: str) -> None:
    """Write ``report`` as indented JSON to ``path`` (``-``: stdout)."""
    if path == "-":
        json.dump(report, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, allow_nan=False)
        handle.write("\n")
