"""The tables ``fastenv-bench`` prints, built as :class:`fastenv.bench.render.Table` (rendered elsewhere).

- :func:`comparison_table`: one payload, one row per transport: medians across
  repeats of p50 / p90 / p99 / max round trip, steps/s, MB/s, client and
  server CPU per step, and p50 relative to the reference row.
- :func:`targets_table`: the performance targets, PASS / MISS / n/a.
- :func:`sweep_table`: ``--sweep``: MB/s per transport (rows) and payload (columns).
- :func:`scaling_table`: ``--scaling``: aggregate steps/s per transport and count,
  speedup over the transport's smallest count and efficiency (``--scaling
  envs``: env steps/s and the ratio to ``gym-async`` at the same count).
- :func:`breakdown_table`: each fastenv row's p50 split into encode,
  transport, env step and decode (µs and % of the p50).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastenv.bench.axes import AXES, Axis
from fastenv.bench.breakdown import PARTS, PLANE_METHODS, PLANES, BreakdownRow
from fastenv.bench.memcpy import MemcpyReference
from fastenv.bench.render import Column, Note, Table, render
from fastenv.bench.results import (
    PayloadResults,
    Row,
    ScalingRow,
    reference,
    scaling_baselines,
    scaling_ratio,
)
from fastenv.bench.runner import FASTENV_TRANSPORTS, FLOOR_TRANSPORTS
from fastenv.bench.targets import Target

__all__ = [
    "breakdown_table",
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
    columns += [Column("client CPU µs/step"), Column("server CPU µs/step"), Column("p50 / ref")]
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
        server_cpu = medians["server_cpu_us"].median if "server_cpu_us" in medians else None
        cells += [_fmt(medians["cpu_us"].median), _fmt(server_cpu), f"{ratio:,.2f}x" if not math.isnan(ratio) else "-"]
        table.rows.append(cells)
    if ref is not None:
        kind = "fastest fastenv row" if ref.transport in FASTENV_TRANSPORTS else "fastest row; no fastenv row ran"
        table.footnotes.append(
            f"ref = {ref.transport} ({kind}); n = timed steps per run; "
            "±% = half the p50 range across repeats"
        )
    table.footnotes.append(
        "client CPU = this process (all threads) per step; server CPU = the server process (and its children) "
        "over the timed loop / timed steps; - = no separate server process"
    )
    if nbytes is not None:
        table.footnotes.append(f"MB/s = observation bytes ({nbytes:,} B) × steps/s (closed loop, one client)")
    names = {row.transport for row in rows}
    if "gym-async" in names:
        table.footnotes.append("gym-async = Gymnasium AsyncVectorEnv(shared_memory=True), 1 env: its own shm + pipes")
    if any(name.startswith("shm-pingpong-") for name in names & set(FLOOR_TRANSPORTS)):
        table.footnotes.append(
            "shm-pingpong-* = floors: env step + np.copyto into shared memory, client reads views "
            "(action in, observation out, nothing else)"
        )
    if "tcp-raw" in names:
        table.footnotes.append(
            "tcp-raw = network floor: raw bytes over 127.0.0.1 TCP (TCP_NODELAY, fixed-size length header, "
            "recv_into preallocated numpy buffers in 1 MiB chunks); action bytes in, observation bytes out, "
            "no structure, no codec"
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


def scaling_table(
    rows: Sequence[ScalingRow], *, axis: Axis | str = "clients", cpu_count: int | None = None, title: str | None = None
) -> Table:
    """Aggregate steps/s per (transport, count): spread across repeats, latency, speedup, and the axis's extras.

    ``axis`` (an :class:`~fastenv.bench.axes.Axis` or its name) names the
    count column and decides the rest: a "per client" column where a point
    has several clients, headers in batch steps for a vector env, and a
    ``vs REFERENCE`` column (steps/s over the reference transport's at the
    same count) where the axis has a reference that ran.
    """
    axis = AXES[axis] if isinstance(axis, str) else axis
    label = axis.label
    base = scaling_baselines(rows)
    ref = axis.reference if any(r.transport == axis.reference and r.points for r in rows) else None
    calls = "steps" if axis.call == "step" else f"{axis.call}s"
    columns = [Column("transport", "left"), Column(label), Column(calls), Column("steps/s"), Column("±%")]
    if axis.per_client:
        columns.append(Column("per client"))
    prefix = "" if axis.call == "step" else f"{axis.call} "
    columns += [Column(f"{prefix}p50 µs"), Column(f"{prefix}p99 µs"), Column("speedup"), Column("efficiency")]
    if ref is not None:
        columns.append(Column(f"vs {ref}"))
    table = Table(columns, title=title)
    for row in rows:
        if row.status != "ok" or not row.points:
            table.rows.append(Note(row.transport, f"{label}={row.count} {row.status}: {row.error or ''}".strip()))
            continue
        rate = row.metric("steps_per_s")
        first = base.get(row.transport)
        speedup = rate.median / first.steps_per_s if first is not None and first.steps_per_s > 0 else math.nan
        efficiency = speedup * first.count / row.count if first is not None else math.nan
        cells = [row.transport, str(row.count), f"{int(row.metric('steps').median):,}", _fmt(rate.median, 0),
                 _fmt(50 * rate.relative, 0)]  # fmt: skip
        if axis.per_client:
            cells.append(_fmt(row.metric("per_client_steps_per_s").median, 0))
        cells += [
            _fmt(row.metric("p50_us").median),
            _fmt(row.metric("p99_us").median),
            f"{speedup:.2f}x" if not math.isnan(speedup) else "-",
            f"{100 * efficiency:.0f}%" if not math.isnan(efficiency) else "-",
        ]
        if ref is not None:
            ratio = scaling_ratio(rows, row, ref)
            cells.append(f"{ratio:.2f}x" if not math.isnan(ratio) else "-")
        table.rows.append(cells)
    if axis.per_client:
        table.footnotes.append(
            f"steps/s = all clients' timed steps / (last end - first start); per client = the median client's own "
            f"rate; p50 = median of the clients' p50s; p99 = the worst client's p99; speedup over the transport's "
            f"smallest {label} count; efficiency = speedup / ({label} / smallest); ±% = half the range across repeats"
        )
    else:
        table.footnotes.append(
            f"steps/s = env steps per second: timed {calls} × {label} / wall time of the timed loop; "
            f"{calls} = timed {axis.call} calls; p50 / p99 = one {axis.call} (all {label}); speedup over the "
            f"transport's smallest {label} count; efficiency = speedup / ({label} / smallest); "
            "±% = half the range across repeats"
        )
    if ref is not None:
        table.footnotes.append(f"vs {ref} = steps/s / {ref}'s steps/s at the same {label} count")
    table.footnotes += axis.notes()
    if cpu_count is not None:
        table.footnotes.append(f"cpus = {cpu_count}: the server and every client process share them")
    return table


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}%"


def breakdown_table(rows: Sequence[BreakdownRow], *, title: str | None = "round-trip breakdown (p50)") -> Table:
    """Each fastenv row's p50 round trip split into encode, transport, env and decode: µs and % of the p50."""
    headers = {"encode": "encode", "transport": "transport", "env": "env step", "decode": "decode"}
    columns = [Column("row", "left"), Column("p50 µs")]
    for part in PARTS:
        columns += [Column(f"{headers[part]} µs"), Column(f"{headers[part]} %")]
    table = Table(columns, title=title)
    samples: set[str] = set()
    methods: dict[str, str] = {}
    for row in rows:
        if row.costs is None:
            table.rows.append(Note(row.transport, f"unavailable: {row.error or ''}".strip()))
            continue
        repeats = row.costs.repeats
        samples.add(f"{row.costs.samples:,}" + (f" over {repeats} repeats, median of their medians" if repeats > 1 else ""))
        methods[row.costs.plane] = row.costs.method
        parts, percent = row.parts_us(), row.percent()
        cells = [row.transport, _fmt(row.rtt_p50_us)]
        for part in PARTS:
            cells += [_fmt(parts[part]), _percent(percent[part])]
        table.rows.append(cells)
    n = "; ".join(sorted(samples)) or "-"
    table.footnotes.append(
        f"encode, env step and decode: measured in this process on the same request and reply values "
        f"(median per step, n = {n}); transport = p50 - (encode + env step + decode), at least 0: "
        "doorbell or socket, both sides' call handling, wake-ups"
    )
    table.footnotes.append(
        "encode = client's request + server's reply, decode = server's request + client's reply; % of the row's p50"
    )
    for plane, method in methods.items():
        names = ", ".join(t for t, p in PLANES.items() if p == plane and any(r.transport == t for r in rows))
        text = f"{names}: {PLANE_METHODS[plane]}"
        if plane == "shm" and method != "layout":
            text += f" ({method}: timed messages without a fixed layout went through the general codec)"
        table.footnotes.append(text)
    return table
