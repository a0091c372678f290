"""Doorbell ping-pong latency between two processes.

Usage::

    python benchmarks/bench_doorbell.py --round-trips 20000
    python benchmarks/bench_doorbell.py --sweep            # spin_us sweep (native)

Two processes share one ``multiprocessing.shared_memory`` segment holding two
doorbells (``ping`` rung by the parent, ``pong`` by the child) and a payload
word.  Each round trip: the parent writes a payload, rings ``ping`` and waits
on ``pong``; the child waits on ``ping``, reads the payload, writes payload+1,
rings ``pong``.  Modes:

* ``native``  -- :class:`fastenv.shm.Doorbell` on the C extension (spin, then futex);
* ``python``  -- the same Doorbell on the pure-Python fallback (spin, then sleeps);
* ``busy``    -- the floor: both sides spin in a Python loop on a held
  ``memoryview`` of the counter word, no library calls, no sleeping.

Reported: p50 / p99 round trip in microseconds and CPU time (both processes,
user+system) per round trip.  Every figure in one table comes from one run on
one machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.shared_memory import SharedMemory

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastenv.shm import futex
from fastenv.shm.doorbell import Doorbell

PING, PONG, PAYLOAD = 0, 64, 128  # separate cache lines
SEGMENT_SIZE = 4096
TIMEOUT_S = 10.0


def _cpu() -> float:
    return time.process_time()  # user + system of this process, ns resolution


def _busy_wait(word: memoryview, seen: int, deadline: float) -> int:
    n = 0
    while True:
        value = word[0]
        if value != seen:
            return value
        n += 1
        if n & 0xFFFF == 0 and time.monotonic() > deadline:
            raise TimeoutError("busy-wait timed out")


def _child(
    name: str, mode: str, spin_us: int | None, total: int, work_us: int, conn
) -> None:
    shm = SharedMemory(name=name)
    try:
        buf = shm.buf
        payload = buf[PAYLOAD : PAYLOAD + 4].cast("I")
        if mode == "busy":
            ping = buf[PING : PING + 4].cast("I")
            pong = buf[PONG : PONG + 4].cast("I")
            conn.send("ready")
            cpu0 = _cpu()
            seen = 0
            for _ in range(total):
                seen = _busy_wait(ping, seen, time.monotonic() + TIMEOUT_S)
                payload[0] = payload[0] + 1
                pong[0] = (pong[0] + 1) & 0xFFFFFFFF
            cpu = _cpu() - cpu0
            ping.release()
            pong.release()
        else:
            ping_bell = Doorbell(buf, PING, backend=mode, spin_us=spin_us)
            pong_bell = Doorbell(buf, PONG, backend=mode, spin_us=spin_us)
            conn.send("ready")
            cpu0 = _cpu()
            seen = 0
            for _ in range(total):
                seen = ping_bell.wait(seen, TIMEOUT_S)
                if work_us:
                    end = time.perf_counter() + work_us * 1e-6
                    while time.perf_counter() < end:
                        pass
                payload[0] = payload[0] + 1
                pong_bell.ring()
            cpu = _cpu() - cpu0
            del ping_bell, pong_bell
        payload.release()
        conn.send(cpu)
    finally:
        shm.close()


def run_one(
    mode: str,
    round_trips: int,
    warmup: int,
    spin_us: int | None = None,
    work_us: int = 0,
) -> dict[str, float]:
    """Ping-pong ``warmup + round_trips`` times; return latency and CPU figures."""
    ctx = mp.get_context("spawn")
    shm = SharedMemory(create=True, size=SEGMENT_SIZE)
    try:
        buf = shm.buf
        buf[:SEGMENT_SIZE] = bytes(SEGMENT_SIZE)
        total = warmup + round_trips
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(
            target=_child,
            args=(shm.name, mode, spin_us, total, work_us, child_conn),
            daemon=True,
        )
        proc.start()
        try:
            if not parent_conn.poll(60):
                raise TimeoutError("child did not start")
            assert parent_conn.recv() == "ready"
            samples = [0] * round_trips
            payload = buf[PAYLOAD : PAYLOAD + 4].cast("I")
            clock = time.perf_counter_ns
            if mode == "busy":
                ping = buf[PING : PING + 4].cast("I")
                pong = buf[PONG : PONG + 4].cast("I")
                seen = 0
                for i in range(total):
                    if i == warmup:
                        cpu0 = _cpu()
                    t0 = clock()
                    payload[0] = payload[0] + 1
                    ping[0] = (ping[0] + 1) & 0xFFFFFFFF
                    seen = _busy_wait(pong, seen, time.monotonic() + TIMEOUT_S)
                    if i >= warmup:
                        samples[i - warmup] = clock() - t0
                ping.release()
                pong.release()
            else:
                ping_bell = Doorbell(buf, PING, backend=mode, spin_us=spin_us)
                pong_bell = Doorbell(buf, PONG, backend=mode, spin_us=spin_us)
                seen = 0
                for i in range(total):
                    if i == warmup:
                        cpu0 = _cpu()
                    t0 = clock()
                    payload[0] = payload[0] + 1
                    ping_bell.ring()
                    seen = pong_bell.wait(seen, TIMEOUT_S)
                    if i >= warmup:
                        samples[i - warmup] = clock() - t0
                del ping_bell, pong_bell
            parent_cpu = _cpu() - cpu0
            ok = payload[0] == 2 * total
            payload.release()
            if not parent_conn.poll(TIMEOUT_S):
                raise TimeoutError("child did not report")
            child_cpu = parent_conn.recv()
        finally:
            proc.join(TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
    finally:
        shm.close()
        shm.unlink()
    if not ok:
        raise AssertionError("payload mismatch")
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1e3,
        "p99_us": samples[int(len(samples) * 0.99)] / 1e3,
        "mean_us": sum(samples) / len(samples) / 1e3,
        "cpu_us_per_rt": (parent_cpu + child_cpu) / round_trips * 1e6,
    }


def _row(label: str, r: dict[str, float]) -> str:
    return (
        f"{label:<24} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {r['mean_us']:>9.1f}"
        f" {r['cpu_us_per_rt']:>12.1f}"
    )


HEADER = f"{'mode':<24} {'p50 us':>9} {'p99 us':>9} {'mean us':>9} {'CPU us/RT':>12}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument(
        "--modes",
        default="native,python,busy",
        help="comma-separated: native,python,busy",
    )
    parser.add_argument(
        "--spin-us", type=int, default=None, help="override the spin budget"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="native only: sweep spin_us over --sweep-values, with an idle and a busy peer",
    )
    parser.add_argument("--sweep-values", default="0,2,5,10,20,50,100")
    parser.add_argument(
        "--work-us",
        type=int,
        default=200,
        help="peer work per round trip in the sweep's 2nd pass",
    )
    args = parser.parse_args(argv)

    print(f"futex backend info: {futex.backend_info()}")
    print(
        f"cpus: {os.cpu_count()}, round trips: {args.round_trips} (+{args.warmup} warm-up)"
    )
    if args.sweep:
        for work in (0, args.work_us):
            print(f"\nnative Doorbell, peer work {work} us per round trip")
            print(HEADER)
            for spin in (int(v) for v in args.sweep_values.split(",")):
                r = run_one(
                    "native", args.round_trips, args.warmup, spin_us=spin, work_us=work
                )
                print(_row(f"spin_us={spin}", r), flush=True)
        return 0

    print(HEADER)
    for mode in args.modes.split(","):
        if mode == "native" and futex.native_backend is None:
            print(f"{mode:<24} skipped: extension not built")
            continue
        r = run_one(mode, args.round_trips, args.warmup, spin_us=args.spin_us)
        label = {
            "native": "Doorbell native",
            "python": "Doorbell python",
            "busy": "busy-wait (floor)",
        }
        print(_row(label.get(mode, mode), r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
