"""Live server metrics for Prometheus (``fastenv serve --metrics-port N``) and ``fastenv top``.

Recording is cheap enough for every call: each call is counted, one in
:data:`SAMPLE_EVERY` is timed into fixed-bucket histograms kept here (a
bisect and two additions), and Prometheus reads them, with the session table
and the server's counters, only when it scrapes (:class:`ServerCollector`).
Nothing is recorded when the server has no metrics port.

Each call is timed twice: **env time**, inside the env's method, and
**fastenv time**, the rest of what the server spent on it from the moment
its route handed it over to the moment its reply was written (the control
lease and env lock, a hop to the env's thread, packing the reply).

Metrics (all prefixed ``fastenv_``): ``sessions{transport,role}``,
``calls_total{method}``, ``errors_total{kind}``,
``env_seconds{method}`` and ``overhead_seconds{method,transport}``
(histograms), ``server_events_total{event}`` (requests, protocol and env
errors, reaped and resumed sessions), ``deadline_misses_total``; with
``--record``, the recorder's counters: ``recording_records_total{outcome}``
(``written`` or ``dropped``), ``recording_bytes_total``,
``recording_queue_records`` and ``recording_failed`` (1 once a disk error
ended the recording).
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable, Iterator
from types import MethodType
from typing import Any

from fastenv.errors import MissingDependency

#: Histogram bucket bounds, seconds: 1 µs to 10 s.
BUCKETS = (
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 10.0,
)
_perf_ns = time.perf_counter_ns
SAMPLE_EVERY = 64  # calls per timed call (every call is counted)


class LatencyHistogram:
    """Counts of durations in :data:`BUCKETS` (plus one for longer ones), their sum and count."""

    __slots__ = ("counts", "count", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: ``(upper bound, count at or below it)``, ending with ``+Inf``."""
        running, out = 0, []
        for bound, count in zip((*BUCKETS, float("inf")), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out

    def quantile(self, q: float) -> float:
        """An estimate of quantile ``q`` (the upper bound of the bucket it falls in)."""
        if not self.count:
            return 0.0
        rank, running = q * self.count, 0
        for bound, count in zip((*BUCKETS, BUCKETS[-1]), self.counts):
            running += count
            if running >= rank:
                return bound
        return BUCKETS[-1]


class ServerMetrics:
    """What a server records for its metrics (one per server; calls from any thread, under the GIL)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.env_time: dict[str, LatencyHistogram] = collections.defaultdict(LatencyHistogram)
        self.overhead: dict[tuple[str, str], LatencyHistogram] = collections.defaultdict(LatencyHistogram)
        self.deadline_misses = 0

    def timed(self, execute: Callable[[str, tuple, dict], tuple[bool, Any]], session: Any) -> Executor:
        """``execute`` for ``session``'s calls, counted and sampled for timing (see :class:`TimedExecutor`)."""
        return TimedExecutor(self, execute, session).call


Executor = Callable[[str, tuple, dict], tuple[bool, Any]]


class TimedExecutor:
    """Counts every call of a session (and its errors) and times one in :data:`SAMPLE_EVERY` of each method.

    Its :meth:`call` is the session's executor. A timed call's env time is
    what the dispatcher measured around the env's method (``session.env_ns``,
    measured while ``session.timed`` is set); the route calls :func:`replied`
    once the reply is written, and the call's overhead is its time since the
    route handed it over, less its env time. The method's call count is the
    sampling counter, so an untimed call costs one dictionary update beyond
    the call itself, and the histograms' percentiles stay unbiased.
    """

    def __init__(self, metrics: ServerMetrics, execute: Executor, session: Any):
        self._metrics = metrics
        self._execute = execute
        self._session = session
        self._current: tuple[str, int, int] | None = None  # (method, began ns, env ns) of a timed call

    def call(self, name: str, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """Run one call through the session's executor, counted (and timed, one in :data:`SAMPLE_EVERY`)."""
        calls = self._metrics.calls
        count = calls[name] = calls.get(name, 0) + 1
        if count % SAMPLE_EVERY:
            ok, value = self._execute(name, args, kwargs)
        else:
            session = self._session
            session.timed, session.env_ns = True, 0
            began = _perf_ns()
            try:
                ok, value = self._execute(name, args, kwargs)
            finally:
                session.timed = False
            if session.env_ns:
                self._metrics.env_time[name].observe(session.env_ns / 1e9)
            self._current = (name, began, session.env_ns)
        if not ok and isinstance(value, dict):
            self._metrics.errors[str(value.get("kind"))] += 1
        return ok, value

    def replied(self) -> None:
        """The reply to the last call is written: record the call's overhead."""
        current, self._current = self._current, None
        if current is not None:
            name, began, env_ns = current
            self._metrics.overhead[(name, self._session.plane)].observe(max(0, _perf_ns() - began - env_ns) / 1e9)


def replied(execute: Any) -> None:
    """Tell a :class:`TimedExecutor` its call's reply is written (nothing for any other executor)."""
    if type(execute) is MethodType:
        timer = execute.__self__
        if type(timer) is TimedExecutor and timer._current is not None:  # a timed call (one in SAMPLE_EVERY)
            timer.replied()


class ServerCollector:
    """A Prometheus collector reading a server's metrics, sessions and counters when scraped.

    Args:
        metrics: what the server recorded.
        sessions: the open sessions (each with ``plane`` and ``role``).
        events: the server's counters (``requests``, ``protocol_errors``, ...).
        recorder: the server's :class:`~fastenv.recording.Recorder`, if it records.
    """

    def __init__(
        self,
        metrics: ServerMetrics,
        sessions: Callable[[], Iterator[Any]],
        events: dict[str, int],
        recorder: Any | None = None,
    ) -> None:
        self._metrics = metrics
        self._sessions = sessions
        self._events = events
        self._recorder = recorder

    def collect(self) -> Iterator[Any]:
        """The metric families (prometheus_client's collector protocol)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        metrics = self._metrics
        sessions = GaugeMetricFamily("fastenv_sessions", "open sessions", labels=["transport", "role"])
        counted = collections.Counter((session.plane, session.role) for session in self._sessions())
        for (plane, role), count in sorted(counted.items()):
            sessions.add_metric([plane, role], count)
        yield sessions
        calls = CounterMetricFamily("fastenv_calls", "calls served, by method", labels=["method"])
        for method, count in sorted(metrics.calls.items()):
            calls.add_metric([method], count)
        yield calls
        errors = CounterMetricFamily("fastenv_errors", "calls answered with an error, by kind", labels=["kind"])
        for kind, count in sorted(metrics.errors.items()):
            errors.add_metric([kind], count)
        yield errors
        events = CounterMetricFamily("fastenv_server_events", "server counters", labels=["event"])
        for event, count in sorted(self._events.items()):
            events.add_metric([event], count)
        yield events
        yield CounterMetricFamily("fastenv_deadline_misses", "fallbacks applied for late steps", value=metrics.deadline_misses)
        env = HistogramMetricFamily("fastenv_env_seconds", "time in the env's method", labels=["method"])
        for method, histogram in sorted(metrics.env_time.items()):
            env.add_metric([method], histogram.cumulative(), histogram.total)
        yield env
        overhead = HistogramMetricFamily(
            "fastenv_overhead_seconds", "server time on a call outside the env", labels=["method", "transport"]
        )
        for (method, plane), histogram in sorted(metrics.overhead.items()):
            overhead.add_metric([method, plane], histogram.cumulative(), histogram.total)
        yield overhead
        if self._recorder is not None:
            yield from _recording_families(self._recorder)


def _recording_families(recorder: Any) -> Iterator[Any]:
    """The recorder's counters, read as they are now."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    records = CounterMetricFamily(
        "fastenv_recording_records", "calls the recorder wrote or dropped (queue full, disk failed)", labels=["outcome"]
    )
    records.add_metric(["written"], recorder.recorded)
    records.add_metric(["dropped"], recorder.dropped)
    yield records
    yield CounterMetricFamily("fastenv_recording_bytes", "bytes written to the recording", value=recorder.bytes_written)
    yield GaugeMetricFamily("fastenv_recording_queue_records", "calls waiting for the writer", value=recorder.queued)
    failed = int(recorder.failure is not None)
    yield GaugeMetricFamily("fastenv_recording_failed", "1 once a disk error ended the recording", value=failed)


class MetricsEndpoint:
    """Serves a collector over HTTP for Prometheus (``/metrics``) until :meth:`close`.

    Needs ``pip install "fastenv[metrics]"`` (prometheus_client).
    """

    def __init__(self, collector: ServerCollector, port: int, host: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as exc:
            raise MissingDependency('--metrics-port needs prometheus_client: pip install "fastenv[metrics]"') from exc
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(collector)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._server.server_port
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop serving (idempotent)."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(5)
