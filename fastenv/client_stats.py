"""Client-side statistics: call round trips, and one-way delays corrected for the hosts' clock offset.

Every call's round trip is kept (the last :data:`KEPT` of them). One-way
delays need the two hosts' clocks: a ping carries the server's wall-clock
times of receiving it and of answering, and the clock offset is estimated
as NTP does, from the ping whose round trip was shortest (the one least
disturbed by queueing, on a path assumed symmetric). Each direction's delay
is then clamped at zero: an offset estimated on a slightly asymmetric path
can never make a delay negative.
"""

from __future__ import annotations

import statistics
import time
from array import array
from dataclasses import dataclass

KEPT = 4096  # round trips kept for the percentiles


class RoundTrips:
    """The latest :data:`KEPT` round trips, in seconds (a ring: recording costs one store)."""

    def __init__(self) -> None:
        self._times = array("d", bytes(8 * KEPT))
        self.count = 0

    def record(self, seconds: float) -> None:
        """Keep one round trip."""
        self._times[self.count % KEPT] = seconds
        self.count += 1

    def latest(self) -> list[float]:
        """The kept round trips, oldest first."""
        kept = min(self.count, KEPT)
        start = self.count % KEPT if self.count > KEPT else 0
        return [self._times[(start + i) % KEPT] for i in range(kept)]


@dataclass(frozen=True)
class PingTimes:
    """One ping's four wall-clock times, nanoseconds: sent and answered (client), received and answered (server)."""

    sent: int
    received: int
    replied: int
    returned: int

    @property
    def delay(self) -> int:
        """The round trip less the server's own time."""
        return (self.returned - self.sent) - (self.replied - self.received)

    @property
    def offset(self) -> float:
        """The server's clock minus the client's, if the path were symmetric."""
        return ((self.received - self.sent) + (self.replied - self.returned)) / 2


@dataclass(frozen=True)
class ClientStats:
    """What a client measured (seconds).

    Attributes:
        calls: calls measured in all.
        round_trip_p50, round_trip_p90, round_trip_p99, round_trip_max: percentiles of
            the latest calls' round trips (from the client's call to its return).
        clock_offset: the server's clock minus this host's, estimated from the pings.
        one_way_up, one_way_down: median one-way delays of the pings, client to server
            and back, corrected for the clock offset; never negative.
        pings: pings the one-way delays come from.
    """

    calls: int
    round_trip_p50: float
    round_trip_p90: float
    round_trip_p99: float
    round_trip_max: float
    clock_offset: float
    one_way_up: float
    one_way_down: float
    pings: int


def summarize(round_trips: RoundTrips, pings: list[PingTimes]) -> ClientStats:
    """The statistics of ``round_trips`` and ``pings`` (see :class:`ClientStats`)."""
    latest = sorted(round_trips.latest())

    def percentile(q: float) -> float:
        return latest[min(len(latest) - 1, int(q * len(latest)))] if latest else 0.0

    offset = min(pings, key=lambda ping: ping.delay).offset if pings else 0.0
    ups = [max(0.0, ping.received - ping.sent - offset) for ping in pings]
    downs = [max(0.0, ping.returned - ping.replied + offset) for ping in pings]
    return ClientStats(
        calls=round_trips.count,
        round_trip_p50=percentile(0.5),
        round_trip_p90=percentile(0.9),
        round_trip_p99=percentile(0.99),
        round_trip_max=latest[-1] if latest else 0.0,
        clock_offset=offset / 1e9,
        one_way_up=statistics.median(ups) / 1e9 if ups else 0.0,
        one_way_down=statistics.median(downs) / 1e9 if downs else 0.0,
        pings=len(pings),
    )


def wall_ns() -> int:
    """Wall-clock nanoseconds (what both ends of a ping compare)."""
    return time.time_ns()
