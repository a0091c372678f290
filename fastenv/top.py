"""``fastenv top HOST:PORT``: a running server's metrics, live in a terminal (see :mod:`fastenv.metrics`)."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

from fastenv.errors import MissingDependency

REFRESH_S = 1.0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``top`` command to the ``fastenv`` parser."""
    top = commands.add_parser(
        "top",
        help="show a server's live metrics (fastenv serve --metrics-port)",
        description="Read a fastenv server's Prometheus metrics every second and show them.",
    )
    top.add_argument("address", metavar="HOST:PORT", help="the server's metrics address")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument("--interval", type=float, default=REFRESH_S, help="seconds between refreshes")
    top.set_defaults(handler=run)


def scrape(address: str, timeout: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples a metrics endpoint serves: ``{sample name: [(labels, value), ...]}``."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as exc:
        raise MissingDependency('fastenv top needs prometheus_client: pip install "fastenv[metrics]"') from exc
    url = address if address.startswith("http") else f"http://{address}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode("utf-8")
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Quantile ``q`` of a cumulative histogram ``[(upper bound, count), ...]`` (the bucket's bound)."""
    if not buckets or buckets[-1][1] == 0:
        return 0.0
    rank = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= rank:
            return bound
    return buckets[-1][0]


def _histograms(samples: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], list]:
    found: dict[tuple[str, ...], list] = defaultdict(list)
    for labels, value in samples.get(f"{name}_bucket", []):
        bound = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        found[tuple(labels[key] for key in keys)].append((bound, value))
    return {key: sorted(points) for key, points in found.items()}


def render(samples: dict[str, Any], previous: dict[str, Any] | None, elapsed: float) -> str:
    """A text snapshot of the samples (rates against ``previous``, taken ``elapsed`` seconds earlier)."""
    lines = []
    sessions = samples.get("fastenv_sessions", [])
    described = ", ".join(f"{int(v)} {l['transport']}/{l['role']}" for l, v in sessions) or "none"
    lines.append(f"sessions: {described}")
    misses = sum(value for _, value in samples.get("fastenv_deadline_misses_total", []))
    errors = ", ".join(f"{l['kind']} {int(v)}" for l, v in samples.get("fastenv_errors_total", [])) or "none"
    lines.append(f"deadline misses: {int(misses)}    errors: {errors}")
    recording = _recording(samples)
    if recording:
        lines.append(recording)
    before = {l["method"]: v for l, v in (previous or {}).get("fastenv_calls_total", [])}
    env = _histograms(samples, "fastenv_env_seconds", ("method",))
    overhead = _histograms(samples, "fastenv_overhead_seconds", ("method", "transport"))
    lines.append(f"{'method':<16}{'calls':>10}{'calls/s':>10}{'env p50':>10}{'env p99':>10}{'fastenv p50':>13}")
    for labels, count in sorted(samples.get("fastenv_calls_total", []), key=lambda item: -item[1]):
        method = labels["method"]
        rate = (count - before.get(method, count)) / elapsed if previous and elapsed > 0 else 0.0
        env_buckets = env.get((method,), [])
        own = [points for (name, _), points in overhead.items() if name == method]
        lines.append(
            f"{method:<16}{int(count):>10}{rate:>10.0f}{_us(quantile(env_buckets, 0.5)):>10}"
            f"{_us(quantile(env_buckets, 0.99)):>10}{_us(quantile(own[0], 0.5) if own else 0.0):>13}"
        )
    return "\n".join(lines)


def _recording(samples: dict[str, Any]) -> str:
    """The recorder's line (empty when the server does not record)."""
    records = {labels["outcome"]: int(value) for labels, value in samples.get("fastenv_recording_records_total", [])}
    if not records:
        return ""
    size = sum(value for _, value in samples.get("fastenv_recording_bytes_total", []))
    queued = sum(value for _, value in samples.get("fastenv_recording_queue_records", []))
    failed = any(value for _, value in samples.get("fastenv_recording_failed", []))
    return (
        f"recording: {records.get('written', 0)} written, {records.get('dropped', 0)} dropped, "
        f"{size / 1e6:.1f} MB, {int(queued)} queued{'    FAILED (disk error)' if failed else ''}"
    )


def _us(seconds: float) -> str:
    return "-" if not seconds else ("≥10s" if seconds == float("inf") else f"≤{seconds * 1e6:.0f}µs")


def run(args: argparse.Namespace) -> int:
    """Show the metrics until interrupted (or once)."""
    previous, taken = None, time.monotonic()
    try:
        while True:
            samples, now = scrape(args.address), time.monotonic()
            text = render(samples, previous, now - taken)
            if args.once:
                print(text)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + f"fastenv top {args.address}\n\n" + text + "\n")
            sys.stdout.flush()
            previous, taken = samples, now
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
