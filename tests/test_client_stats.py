"""Client statistics: percentiles of round trips, and one-way delays across hosts whose clocks differ."""

from __future__ import annotations

from fastenv.client_stats import KEPT, PingTimes, RoundTrips, summarize

MS = 1_000_000  # nanoseconds


def ping(sent: int, up: int, server_time: int, down: int, skew: int) -> PingTimes:
    received = sent + up + skew  # the server's clock reads `skew` ahead
    return PingTimes(sent, received, received + server_time, sent + up + server_time + down)


def test_one_way_delays_are_corrected_for_the_clock_offset_and_never_negative() -> None:
    skew = 5_000 * MS  # the server's clock is 5 s ahead
    pings = [ping(i * 100 * MS, 3 * MS + i * MS, MS // 10, 3 * MS, skew) for i in range(5)]
    stats = summarize(RoundTrips(), pings)
    assert abs(stats.clock_offset - 5.0) < 0.001  # found from the quickest ping
    assert abs(stats.one_way_up - 0.005) < 1e-6 and abs(stats.one_way_down - 0.003) < 1e-6
    asymmetric = [ping(0, 9 * MS, 0, MS, skew)]  # a one-sided path biases the estimate, never below zero
    lopsided = summarize(RoundTrips(), asymmetric)
    assert lopsided.one_way_up >= 0 and lopsided.one_way_down >= 0
    assert abs(lopsided.one_way_up + lopsided.one_way_down - 0.010) < 1e-6


def test_round_trip_percentiles_of_the_latest_calls() -> None:
    trips = RoundTrips()
    for i in range(KEPT + 100):
        trips.record(1.0 if i < 100 else (i % 100) / 1000)  # the first (slow) ones fall out of the ring
    stats = summarize(trips, [])
    assert stats.calls == KEPT + 100 and stats.round_trip_max < 0.1
    assert 0.045 <= stats.round_trip_p50 <= 0.055 and stats.round_trip_p99 >= 0.098
    assert summarize(RoundTrips(), []).round_trip_p50 == 0.0
