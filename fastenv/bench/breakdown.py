"""Where a fastenv step round trip goes: encode, transport, env step, decode (``fastenv-bench --breakdown``).

The client and server are not instrumented. Instead, the bench process redoes
in-process, on the same values, the work a fastenv row's round trip contains
besides moving bytes, times each part, and attributes the rest of the
measured round trip to the transport:

- **env**: the workload's env, reset with the row's seed and stepped with
  the action the request decodes to (the same action every step), timed per
  ``step`` call.
- **encode** / **decode**: what the data plane does to the request
  ``("step", (action,), {})`` and to the reply (that step's result):

  - ``shm`` (``fastenv-shm``, ``fastenv-shm-py``): the plane's compiled
    layouts (:class:`fastenv.shm.layouts.LayoutSender` /
    :class:`~fastenv.shm.layouts.LayoutReceiver`, see :mod:`fastenv.layout`)
    in a real shared-memory arena of the plane's shape: the client packs the
    request into the request region, the server reads it back as copies (the
    env may keep the action), the server packs the reply into the next reply
    slot (slots in turn), and the client reads it back as views (the rows'
    ``copy=False``). A message whose structure has
    no layout (and the first of each kind, which announces the layout) goes
    through the general codec into the arena, as on the plane. The env's
    :func:`fastenv.reply_array` arrays are lent from the reply slot as the
    worker lends them, so an env that renders into them is timed rendering
    into the slot, and the reply encode skips their copy.
  - ``tcp`` (``fastenv-tcp``): the stream's encoder and decoder
    (:mod:`fastenv.tcp.layouts`): compiled layouts once the structure
    repeats (the first message of each kind announces it through the general
    codec), decoded from owned ``uint8`` buffers (where the stream's
    ``recv_into`` leaves them).

  encode = request encode + reply encode; decode = request decode + reply
  decode (each side's read includes the envelope header).
- **transport** = the row's measured round-trip p50 minus env, encode and
  decode, clamped at 0: the doorbell or the socket (and the copies into and
  out of it), both sides' call handling (client API, server dispatch, env
  lock) and thread wake-ups.

Each in-process part is the median over steps of its per-step time minus the
clock's own cost (the median of an empty :func:`time.perf_counter_ns`
bracket). Medians of parts need not add up to the median round trip; on a
noisy machine the in-process parts can exceed it, and transport then reads 0.

This module holds the results and the timing loop; the planes' in-process
encode / decode paths are in :mod:`fastenv.bench.breakdown_paths`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv.bench.breakdown_paths import PlanePath, open_path
from fastenv.bench.workloads import get_workload, observations_equal, snapshot
from fastenv.errors import FastEnvError

__all__ = [
    "PARTS",
    "PLANES",
    "PLANE_METHODS",
    "BreakdownFailed",
    "BreakdownRow",
    "InProcessCosts",
    "breakdown_rows",
    "clock_overhead_ns",
    "measure_costs",
    "median_costs",
    "planes_of",
]

#: The parts of a round trip, in the order a step goes through them.
PARTS: tuple[str, ...] = ("encode", "transport", "env", "decode")
#: The data plane of each fastenv row.
PLANES: dict[str, str] = {"fastenv-shm": "shm", "fastenv-shm-py": "shm", "fastenv-tcp": "tcp"}
#: How each plane encodes (for the table's footnote and the JSON).
PLANE_METHODS: dict[str, str] = {
    "shm": "compiled layout (fastenv.layout) in a shared-memory arena",
    "tcp": "compiled layout (fastenv.tcp.layouts): packed scalars + raw array buffers",
}


class BreakdownFailed(FastEnvError):
    """The in-process measurement could not run, or its decoded reply differs from the env's result."""


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class InProcessCosts:
    """Medians (µs) of the in-process parts of one plane's round trip on one payload.

    ``encode_us`` / ``decode_us`` are medians of the per-step sums of request
    and reply; the ``request_*`` / ``reply_*`` fields are each side's own
    median. ``general_messages`` counts timed messages that went through the
    general codec instead of a compiled layout (0 in steady state).
    ``samples`` counts timed steps over all ``repeats`` (see :func:`median_costs`).
    """

    payload: str
    plane: str
    samples: int
    env_us: float
    encode_us: float
    decode_us: float
    request_encode_us: float
    reply_encode_us: float
    request_decode_us: float
    reply_decode_us: float
    clock_overhead_ns: float
    general_messages: int = 0
    repeats: int = 1

    @property
    def method(self) -> str:
        """How the plane encodes: ``layout``, ``codec`` or ``layout+codec`` (shm with fallbacks)."""
        if self.general_messages == 0:
            return "layout"
        return "codec" if self.general_messages >= 2 * self.samples else "layout+codec"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus :attr:`method`."""
        return {
            "payload": self.payload,
            "plane": self.plane,
            "method": self.method,
            "samples": self.samples,
            "env_us": self.env_us,
            "encode_us": self.encode_us,
            "decode_us": self.decode_us,
            "request_encode_us": self.request_encode_us,
            "reply_encode_us": self.reply_encode_us,
            "request_decode_us": self.request_decode_us,
            "reply_decode_us": self.reply_decode_us,
            "clock_overhead_ns": self.clock_overhead_ns,
            "general_messages": self.general_messages,
            "repeats": self.repeats,
        }


@dataclass(frozen=True)
class BreakdownRow:
    """One fastenv row's round-trip p50 split into :data:`PARTS`, or why it has no split."""

    transport: str
    rtt_p50_us: float
    costs: InProcessCosts | None = None
    error: str | None = None

    @property
    def transport_us(self) -> float:
        """The remainder: p50 minus env, encode and decode, at least 0 (``nan`` without costs)."""
        if self.costs is None:
            return math.nan
        rest = self.rtt_p50_us - self.costs.env_us - self.costs.encode_us - self.costs.decode_us
        return max(0.0, rest)

    def parts_us(self) -> dict[str, float]:
        """µs per part, in :data:`PARTS` order (``nan`` without costs)."""
        costs = self.costs
        if costs is None:
            return {part: math.nan for part in PARTS}
        return {"encode": costs.encode_us, "transport": self.transport_us, "env": costs.env_us,
                "decode": costs.decode_us}  # fmt: skip

    def percent(self) -> dict[str, float]:
        """Each part as a percentage of the round-trip p50."""
        if not self.rtt_p50_us > 0:
            return {part: math.nan for part in PARTS}
        return {part: 100 * value / self.rtt_p50_us for part, value in self.parts_us().items()}

    def as_dict(self) -> dict[str, Any]:
        """``{transport, rtt_p50_us, parts: {part: {us, percent}}, in_process, error}``."""
        percent = self.percent()
        return {
            "transport": self.transport,
            "plane": PLANES.get(self.transport),
            "rtt_p50_us": self.rtt_p50_us,
            "parts": {part: {"us": us, "percent": percent[part]} for part, us in self.parts_us().items()},
            "in_process": self.costs.as_dict() if self.costs is not None else None,
            "error": self.error,
        }


def median_costs(runs: Sequence[InProcessCosts]) -> InProcessCosts:
    """One plane's costs across repeats: the median of each part, samples and fallbacks summed.

    Raises:
        ValueError: no runs, or runs of different payloads or planes.
    """
    if not runs:
        raise ValueError("median_costs() needs at least one run")
    first = runs[0]
    if any((run.payload, run.plane) != (first.payload, first.plane) for run in runs):
        raise ValueError("median_costs() needs runs of one payload and plane")

    def median(name: str) -> float:
        return float(np.median([getattr(run, name) for run in runs]))

    return InProcessCosts(
        payload=first.payload,
        plane=first.plane,
        samples=sum(run.samples for run in runs),
        env_us=median("env_us"),
        encode_us=median("encode_us"),
        decode_us=median("decode_us"),
        request_encode_us=median("request_encode_us"),
        reply_encode_us=median("reply_encode_us"),
        request_decode_us=median("request_decode_us"),
        reply_decode_us=median("reply_decode_us"),
        clock_overhead_ns=median("clock_overhead_ns"),
        general_messages=sum(run.general_messages for run in runs),
        repeats=sum(run.repeats for run in runs),
    )


def breakdown_rows(
    p50_us: Mapping[str, float], costs: Mapping[str, InProcessCosts | BaseException]
) -> list[BreakdownRow]:
    """One :class:`BreakdownRow` per fastenv row of ``p50_us`` (``{row: median p50}``), in its order.

    ``costs`` maps a plane (:data:`PLANES`) to its measured costs or to the
    exception that stopped the measurement (the row then carries the error).
    """
    out = []
    for transport, p50 in p50_us.items():
        plane = PLANES.get(transport)
        if plane is None or plane not in costs:
            continue
        measured = costs[plane]
        if isinstance(measured, BaseException):
            out.append(BreakdownRow(transport, p50, error=f"{type(measured).__name__}: {measured}"))
        else:
            out.append(BreakdownRow(transport, p50, measured))
    return out


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def clock_overhead_ns(clock: Callable[[], int] = time.perf_counter_ns, samples: int = 2000) -> float:
    """The median time between two back-to-back ``clock()`` readings (what an empty bracket measures)."""
    gaps = np.empty(samples, dtype=np.int64)
    for i in range(samples):
        start = clock()
        gaps[i] = clock() - start
    return float(np.median(gaps))


def _median_us(samples_ns: np.ndarray, overhead_ns: float) -> float:
    return float(np.median(np.clip(samples_ns - overhead_ns, 0, None))) / 1e3


def measure_costs(
    payload: str,
    plane: str,
    samples: int,
    warmup: int = 10,
    *,
    max_seconds: float | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> InProcessCosts:
    """Time the env step and ``plane``'s encode/decode of ``payload``'s step in this process.

    Runs ``warmup`` untimed steps (the first ones announce the layouts, as on
    the plane), then up to ``samples`` timed ones (fewer when ``max_seconds``
    runs out). Every step: encode the request, decode it, step the env with
    the decoded action, encode the result, decode it; the last decoded reply
    is checked against the env's result.

    Raises:
        KeyError: unknown payload or plane.
        ValueError: ``samples`` below 1 or ``warmup`` below 0.
        BreakdownFailed: the decoded reply differs from the env's result.
        OSError: no shared memory here (``shm``).
    """
    if samples < 1 or warmup < 0:
        raise ValueError(f"need samples >= 1 and warmup >= 0, got samples={samples} warmup={warmup}")
    workload = get_workload(payload)
    env, action = workload.make_env(), workload.make_action()
    try:
        env.reset(seed=workload.seed)
        body = ("step", (action,), {})
        probe = workload.make_env()
        try:
            probe.reset(seed=workload.seed)
            reply_example = probe.step(action)
        finally:
            probe.close()
        overhead = clock_overhead_ns(clock)
        with open_path(plane, body, reply_example) as path:
            return _measure(path, plane, payload, env, body, samples, warmup, overhead, max_seconds, clock)
    finally:
        env.close()


def _measure(
    path: PlanePath,
    plane: str,
    payload: str,
    env: Any,
    body: Any,
    samples: int,
    warmup: int,
    overhead: float,
    max_seconds: float | None,
    clock: Callable[[], int],
) -> InProcessCosts:
    times = np.zeros((5, samples), dtype=np.int64)  # request encode, request decode, env, reply encode, reply decode
    deadline: int | None = None
    timed = 0
    general_before = 0
    result: Any = None
    got: Any = None
    for step in range(warmup + samples):
        seq = step + 1
        if step == warmup:
            general_before = path.general_messages
            if max_seconds is not None:
                deadline = clock() + int(max_seconds * 1e9)
        t0 = clock()
        path.encode_request(seq, body)
        t1 = clock()
        path.deliver()
        t2 = clock()
        request = path.decode_request(seq)
        path.start_call(seq)
        t3 = clock()
        result = env.step(*request[1], **request[2])
        t4 = clock()
        path.encode_reply(seq, result)
        t5 = clock()
        path.deliver()
        t6 = clock()
        got = path.decode_reply(seq)
        t7 = clock()
        if step >= warmup:
            times[:, timed] = (t1 - t0, t3 - t2, t4 - t3, t5 - t4, t7 - t6)
            timed += 1
            if deadline is not None and t7 >= deadline:
                break
    if not observations_equal(snapshot(got), snapshot(result)):
        raise BreakdownFailed(f"{plane}: the decoded reply differs from the env's result ({payload})")
    del got, result
    times = times[:, :timed]
    encode, decode = times[0] + times[3], times[1] + times[4]
    return InProcessCosts(
        payload=payload,
        plane=plane,
        samples=timed,
        env_us=_median_us(times[2], overhead),
        encode_us=_median_us(encode, 2 * overhead),
        decode_us=_median_us(decode, 2 * overhead),
        request_encode_us=_median_us(times[0], overhead),
        reply_encode_us=_median_us(times[3], overhead),
        request_decode_us=_median_us(times[1], overhead),
        reply_decode_us=_median_us(times[4], overhead),
        clock_overhead_ns=overhead,
        general_messages=path.general_messages - general_before,
    )


def planes_of(transports: Sequence[str]) -> list[str]:
    """The data planes behind ``transports`` (fastenv rows only), each once, in order."""
    return list(dict.fromkeys(PLANES[t] for t in transports if t in PLANES))
