"""The tables ``fastenv-bench`` prints, built as :class:`fastenv.bench.render.Table` (rendered elsewhere).

- :func:`comparison_table`: one payload, one row per transport: medians across
  repeats of p50 / p90 / p99 / max round trip, steps/s, MB/s, client CPU per
  step, and p50 relative to the reference row.
- :func:`targets_table`: the issue's targets, PASS / MISS / n/a.
- :func:`sweep_table`: ``--sweep``: MB/s per transport (rows) and payload (columns).
- :func:`scaling_table`: ``--scaling``: aggregate steps/s per transport and count,
  speedup over the transport's smallest count and efficiency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastenv.bench.floors import MemcpyReference
from fastenv.bench.render import Column, Note, Table, render
from fastenv.bench.results import (
    PayloadResults,
    Row,
    ScalingRow,
    reference,
    scaling_baselines,
)
from fastenv.bench.runner import FASTENV_TRANSPORTS, FLOOR_TRANSPORTS
from fastenv.bench.targets import Target

__all__ = [
    "comparison_table",
    "format_memcpy",
    "format_table",
    "scaling_table",
    "sweep_table",
    "targets_table",
]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _rate(value: float) -> str:
    """A rate with about three significant digits (MB/s spans 0.001 to 10,000)."""
    if math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"


def comparison_table(rows: Sequence[Row], *, nbytes: int | None = None, title: str | None = None) -> Table:
    """One payload's rows: medians across repeats (MB/s only when ``nbytes`` per observation is given)."""
    ref = reference(rows)
    columns = [Column("transport", "left"), Column("n"), Column("p50 µs"), Column("p50 ±%"), Column("p90 µs"),
               Column("p99 µs"), Column("max µs"), Column("steps/s")]  # fmt: skip
    if nbytes is not None:
        columns.append(Column("MB/s"))
    columns += [Column("CPU µs/step"), Column("p50 / ref")]
    table = Table(columns, title=title)
    for row in rows:
        medians = row.medians
        if row.status != "ok" or medians is None:
            table.rows.append(Note(row.transport, f"{row.status}: {row.error or ''}".strip()))
            continue
        p50 = medians["p50_us"]
        ratio = p50.median / ref.p50 if ref is not None and ref.p50 > 0 else math.nan
        cells = [
            row.transport,
            f"{int(medians['count'].median)}",
            _fmt(p50.median),
            _fmt(50 * p50.relative, 0),
            _fmt(medians["p90_us"].median),
            _fmt(medians["p99_us"].median),
            _fmt(medians["max_us"].median),
            _fmt(medians["steps_per_s"].median, 0),
        ]
        if nbytes is not None:
            cells.append(_rate(row.mb_per_s(nbytes)))
        cells += [_fmt(medians["cpu_us"].median), f"{ratio:,.2f}x" if not math.isnan(ratio) else "-"]
        table.rows.append(cells)
    if ref is not None:
        kind = "fastest fastenv row" if ref.transport in FASTENV_TRANSPORTS else "fastest row; no fastenv row ran"
        table.footnotes.append(
            f"ref = {ref.transport} ({kind}); n = timed steps per run; "
            "±% = half the p50 range across repeats"
        )
    if nbytes is not None:
        table.footnotes.append(f"MB/s = observation bytes ({nbytes:,} B) × steps/s (closed loop, one client)")
    names = {row.transport for row in rows}
    if "gym-async" in names:
        table.footnotes.append("gym-async = Gymnasium AsyncVectorEnv(shared_memory=True), 1 env: its own shm + pipes")
    if names & set(FLOOR_TRANSPORTS):
        table.footnotes.append(
            "shm-pingpong-* = floors: env step + np.copyto into shared memory, client reads views "
            "(action in, observation out, nothing else)"
        )
    return table


def format_table(rows: Sequence[Row], fmt: str = "plain", *, nbytes: int | None = None) -> str:
    """:func:`comparison_table` rendered in ``fmt`` (``plain``, ``markdown`` or ``rich``)."""
    return render(comparison_table(rows, nbytes=nbytes), fmt)


def format_memcpy(reference: MemcpyReference) -> str:
    """The memcpy reference line."""
    return (
        f"memcpy ({reference.payload} observation, {reference.nbytes:,} B, in-process np.copyto, "
        f"n={reference.cached.count}): cached re-copy p50 {_fmt(reference.cached.p50_us)} µs, "
        f"fresh source p50 {_fmt(reference.fresh.p50_us)} µs"
    )


def targets_table(targets: Sequence[Target]) -> Table:
    """The targets as a table: status, what is compared, the limit and the measured value."""
    table = Table([Column("status", "left"), Column("target", "left"), Column("limit"), Column("measured")],
                  title="targets")  # fmt: skip
    for target in targets:
        op = "≤" if target.at_most else "≥"
        if target.unit == "µs":
            limit, measured = f"{op} {target.limit:g} µs", f"{_fmt(target.measured)} µs"
        else:
            limit, measured = f"{op} {target.limit:g}x", f"{target.measured:.2f}x"
        table.rows.append([target.status, target.formula, limit, "-" if math.isnan(target.measured) else measured])
    return table


def sweep_table(sections: Sequence[PayloadResults]) -> Table:
    """MB/s (observation bytes × steps/s) per transport and payload, payloads by size."""
    ordered = sorted(sections, key=lambda s: s.nbytes)
    table = Table([Column("transport", "left")] + [Column(s.payload) for s in ordered],
                  title="MB/s by payload (observation bytes × steps/s)")  # fmt: skip
    transports = list(dict.fromkeys(row.transport for s in ordered for row in s.rows))
    for transport in transports:
        cells = [transport]
        for section in ordered:
            row = next((r for r in section.rows if r.transport == transport), None)
            if row is None or row.status != "ok" or not row.runs:
                cells.append("-" if row is None else row.status)
            else:
                cells.append(_rate(row.mb_per_s(section.nbytes)))
        table.rows.append(cells)
    table.footnotes.append("observation sizes: " + ", ".join(f"{s.payload} {s.nbytes:,} B" for s in ordered))
    return table


def scaling_table(rows: Sequence[ScalingRow], *, label: str = "clients", cpu_count: int | None = None) -> Table:
    """Aggregate steps/s per (transport, count): spread across repeats, per-client rate and latency, speedup."""
    base = scaling_baselines(rows)
    table = Table(
        [Column("transport", "left"), Column(label), Column("steps"), Column("steps/s"), Column("±%"),
         Column("per client"), Column("p50 µs"), Column("p99 µs"), Column("speedup"), Column("efficiency")],
    )  # fmt: skip
    for row in rows:
        if row.status != "ok" or not row.points:
            table.rows.append(Note(row.transport, f"{label}={row.count} {row.status}: {row.error or ''}".strip()))
            continue
        rate = row.metric("steps_per_s")
        first = base.get(row.transport)
        speedup = rate.median / first.steps_per_s if first is not None and first.steps_per_s > 0 else math.nan
        efficiency = speedup * first.count / row.count if first is not None else math.nan
        table.rows.append(
            [
                row.transport,
                str(row.count),
                f"{int(row.metric('steps').median):,}",
                _fmt(rate.median, 0),
                _fmt(50 * rate.relative, 0),
                _fmt(row.metric("per_client_steps_per_s").median, 0),
                _fmt(row.metric("p50_us").median),
                _fmt(row.metric("p99_us").median),
                f"{speedup:.2f}x" if not math.isnan(speedup) else "-",
                f"{100 * efficiency:.0f}%" if not math.isnan(efficiency) else "-",
            ]
        )
    table.footnotes.append(
        f"steps/s = all clients' timed steps / (last end - first start); per client = the median client's own "
        f"rate; p50 = median of the clients' p50s; p99 = the worst client's p99; speedup over the transport's "
        f"smallest {label} count; efficiency = speedup / ({label} / smallest); ±% = half the range across repeats"
    )
    if cpu_count is not None:
        table.footnotes.append(f"cpus = {cpu_count}: the server and every client process share them")
    return table
