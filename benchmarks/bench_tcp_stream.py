"""TCP data plane vs. the network floor and pyzmq, on loopback, in one run.

Usage::

    python benchmarks/bench_tcp_stream.py                 # the table
    python benchmarks/bench_tcp_stream.py --chunk-sweep   # also: 16 MB throughput per chunk size
    python benchmarks/bench_tcp_stream.py --compression lz4

The server side runs in a separate process (multiprocessing, spawn) and serves
three things at once, each measured in turn:

* ``raw``: a plain TCP socket; the client sends an 8-byte size N, the server
  ``sendall``s N bytes from a preallocated buffer and the client ``recv_into``s
  them into a preallocated buffer in 1 MiB chunks -- the network floor;
* ``plane``: :class:`fastenv.tcp.TcpServerWorker` behind a
  :class:`fastenv.tcp.TcpDataListener`, driven by
  :class:`fastenv.tcp.TcpClientPlane` (codec + framing; fresh arrays per reply);
* ``zmq``: pyzmq REQ/REP with in-band pickle of the whole value.

Workloads: a 16 MB uint8 observation (throughput), a camera step (two
480x640x3 uint8 frames + 20 float32, ~1.8 MB, Gymnasium 5-tuple) and a small
step (4 float32). The request is always a small ``("step", (action,), {})``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import socket
import statistics
import struct
import sys
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import zmq

from fastenv import codec
from fastenv.tcp import (
    TcpClientPlane,
    TcpDataListener,
    TcpServerWorker,
    connect_data_stream,
)

BIG = 16 * 1024 * 1024
RAW_CHUNK = 1 << 20
TIMEOUT_S = 30.0
SIZE = struct.Struct("<Q")


def _values() -> dict[str, object]:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    camera_obs = {"left": frame, "right": frame[::-1].copy(), "proprio": rng.standard_normal(20).astype(np.float32)}
    return {
        "big": rng.integers(0, 256, BIG, dtype=np.uint8),
        "camera": (camera_obs, -0.5, False, False, {"frame": 1}),
        "small": (np.arange(4, dtype=np.float32), 1.0, False, False, {}),
    }


CAMERA_BYTES = 2 * 480 * 640 * 3 + 20 * 4


# --------------------------------------------------------------------------- server process


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionError("closed")
        data += part
    return data


def _raw_server(listener: socket.socket, stop: threading.Event) -> None:
    payload = memoryview(np.random.default_rng(1).integers(0, 256, BIG + 1, dtype=np.uint8))
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while True:
                    (n,) = SIZE.unpack(_recv_exact(conn, SIZE.size))
                    conn.sendall(payload[:n])
            except (ConnectionError, OSError):
                pass


def _zmq_server(port_out: list, ready: threading.Event, stop: threading.Event) -> None:
    values = _values()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port_out.append(sock.bind_to_random_port("tcp://127.0.0.1"))
    ready.set()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if not poller.poll(100):
            continue
        name, _args, _kwargs = pickle.loads(sock.recv())
        sock.send(pickle.dumps(values[name], protocol=pickle.HIGHEST_PROTOCOL))
    sock.close(0)
    ctx.term()


def server_main(conn, compression: str | None) -> None:
    """Child process: raw, plane and zmq servers until the parent says stop."""
    values = _values()
    stop = threading.Event()
    workers: list[TcpServerWorker] = []

    def execute(name: str, args: tuple, kwargs: dict) -> tuple[bool, object]:
        return True, values[name]

    def on_connection(token: bytes, sock: socket.socket) -> bool:
        chunk = int(token.rstrip(b"\0").decode() or 0) or None
        worker = TcpServerWorker(
            sock,
            execute,
            limits=codec.DEFAULT_LIMITS,
            max_message_bytes=1 << 31,
            compression=compression,
            **({"chunk_size": chunk} if chunk else {}),
        )
        worker.start()
        workers.append(worker)
        return True

    raw = socket.create_server(("127.0.0.1", 0))
    raw_thread = threading.Thread(target=_raw_server, args=(raw, stop), daemon=True)
    raw_thread.start()
    zmq_port: list[int] = []
    zmq_ready = threading.Event()
    zmq_thread = threading.Thread(target=_zmq_server, args=(zmq_port, zmq_ready, stop), daemon=True)
    zmq_thread.start()
    zmq_ready.wait(TIMEOUT_S)
    with TcpDataListener("127.0.0.1", on_connection=on_connection) as listener:
        conn.send({"raw": raw.getsockname()[1], "plane": listener.port, "zmq": zmq_port[0]})
        conn.recv()  # the parent's "stop"
        stop.set()
        for worker in workers:
            worker.stop()
    raw.close()
    zmq_thread.join(TIMEOUT_S)


# --------------------------------------------------------------------------- client measurements


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_fetch(sock: socket.socket, n: int, into: memoryview) -> None:
    sock.sendall(SIZE.pack(n))
    done = 0
    while done < n:
        got = sock.recv_into(into[done : min(n, done + RAW_CHUNK)])
        if not got:
            raise ConnectionError("raw server closed")
        done += got


def timed(fn, repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def open_plane(port: int, chunk: int | None) -> TcpClientPlane:
    token = str(chunk or "").encode().ljust(16, b"\0")
    sock = connect_data_stream("127.0.0.1", port, token, TIMEOUT_S)
    return TcpClientPlane(sock, lambda: None, compression=None, **({"chunk_size": chunk} if chunk else {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="16 MB transfers per measurement")
    parser.add_argument("--steps", type=int, default=500, help="round trips per latency measurement")
    parser.add_argument("--chunk-sweep", action="store_true", help="16 MB throughput for chunk sizes 64 KiB..4 MiB")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (methods alternate)")
    parser.add_argument("--compression", default=None, help="server-side reply compression (lz4, zstd)")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(child, args.compression), daemon=True)
    proc.start()
    if not parent.poll(60):
        raise SystemExit("server process did not start")
    ports = parent.recv()
    action = ("step", (np.zeros(20, np.float32),), {})
    try:
        raw = socket.create_connection(("127.0.0.1", ports["raw"]), timeout=TIMEOUT_S)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sink = memoryview(np.empty(BIG + 1, np.uint8))
        plane = open_plane(ports["plane"], None)
        ok, value = plane.call(("camera",) + action[1:], TIMEOUT_S, "step")
        assert ok and value[0]["left"].shape == (480, 640, 3) and value[0]["left"].flags.writeable
        zctx = zmq.Context()
        req = zctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(f"tcp://127.0.0.1:{ports['zmq']}")

        def zmq_call(name: str) -> object:
            req.send(pickle.dumps((name,) + action[1:], protocol=pickle.HIGHEST_PROTOCOL))
            if not req.poll(int(TIMEOUT_S * 1000)):
                raise TimeoutError("zmq server did not answer")
            return pickle.loads(req.recv())

        cases = {
            ("raw", "big"): lambda: raw_fetch(raw, BIG, sink),
            ("raw_fresh", "big"): lambda: raw_fetch(raw, BIG, memoryview(np.empty(BIG, np.uint8))),
            ("plane", "big"): lambda: plane.call(("big", (), {}), TIMEOUT_S, "big"),
            ("zmq", "big"): lambda: zmq_call("big"),
            ("raw", "camera"): lambda: raw_fetch(raw, CAMERA_BYTES, sink),
            ("raw_fresh", "camera"): lambda: raw_fetch(raw, CAMERA_BYTES, memoryview(np.empty(CAMERA_BYTES, np.uint8))),
            ("plane", "camera"): lambda: plane.call(("camera",) + action[1:], TIMEOUT_S, "step"),
            ("zmq", "camera"): lambda: zmq_call("camera"),
            ("raw", "small"): lambda: raw_fetch(raw, 1, sink),
            ("plane", "small"): lambda: plane.call(("small",) + action[1:], TIMEOUT_S, "step"),
            ("zmq", "small"): lambda: zmq_call("small"),
        }
        counts = {"big": args.repeats, "camera": args.steps, "small": args.steps * 4}
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
        # Interleave the methods in rounds so that a noisy neighbour or a
        # frequency change hits all of them alike.
        for _ in range(args.rounds):
            for key, fn in cases.items():
                samples[key] += timed(fn, max(1, counts[key[1]] // args.rounds), warmup=2)
        sweep = []
        if args.chunk_sweep:
            planes = {chunk: open_plane(ports["plane"], chunk) for chunk in (64 << 10, 256 << 10, 1 << 20, 4 << 20)}
            swept: dict[int, list[float]] = {chunk: [] for chunk in planes}
            for _ in range(args.rounds):
                for chunk, p in planes.items():
                    swept[chunk] += timed(lambda p=p: p.call(("big", (), {}), TIMEOUT_S, "big"),
                                          max(1, args.repeats // args.rounds), warmup=1)
            for chunk, p in planes.items():
                sweep.append((chunk, BIG / statistics.median(swept[chunk]) / 1e6))
                p.close()
        raw.close()
        plane.close()
        req.close()
        zctx.term()
    finally:
        parent.send("stop")
        proc.join(TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
    raw_big, plane_big, zmq_big = (samples[(m, "big")] for m in ("raw", "plane", "zmq"))
    raw_cam, plane_cam, zmq_cam = (samples[(m, "camera")] for m in ("raw", "plane", "zmq"))
    fresh_big, fresh_cam = samples[("raw_fresh", "big")], samples[("raw_fresh", "camera")]
    # The floor is the faster of the two raw variants (which one wins depends on the
    # allocator and page placement; on some machines a fresh buffer is faster).
    floor_big = min(raw_big, fresh_big, key=statistics.median)
    floor_cam = min(raw_cam, fresh_cam, key=statistics.median)
    raw_small, plane_small, zmq_small = (samples[(m, "small")] for m in ("raw", "plane", "zmq"))

    def mbps(samples: list[float]) -> float:
        return BIG / statistics.median(samples) / 1e6

    def us(samples: list[float], q: float = 0.5) -> str:
        return f"{_p(samples, q) * 1e6:9.1f}"

    print(f"loopback, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"pyzmq {zmq.__version__}, compression={args.compression}")
    print()
    print(f"16 MB observation (median of {len(plane_big)}, interleaved)   MB/s   % of raw floor")
    print(f"  raw socket, recv_into preallocated buffer  {mbps(raw_big):8.0f}   {mbps(raw_big) / mbps(floor_big):5.0%}")
    print(f"  raw socket, recv_into fresh np.empty       {mbps(fresh_big):8.0f}   {mbps(fresh_big) / mbps(floor_big):5.0%}")
    print(f"  TcpClientPlane / TcpServerWorker           {mbps(plane_big):8.0f}   {mbps(plane_big) / mbps(floor_big):5.0%}")
    print(f"  pyzmq REQ/REP in-band pickle               {mbps(zmq_big):8.0f}   {mbps(zmq_big) / mbps(floor_big):5.0%}")
    if sweep:
        print()
        print("plane chunk size sweep (16 MB, interleaved)   MB/s   % of raw floor")
        for chunk, rate in sweep:
            print(f"  chunk {chunk >> 10:5d} KiB                          {rate:8.0f}   {rate / mbps(floor_big):5.0%}")
    print()
    print(f"round trip (µs, {len(plane_small)} small / {len(plane_cam)} camera)      p50       p99    x floor")
    print(f"  camera {CAMERA_BYTES / 1e6:.2f} MB raw, preallocated     {us(raw_cam)} {us(raw_cam, .99)}")
    print(f"  camera raw, fresh np.empty            {us(fresh_cam)} {us(fresh_cam, .99)}")
    cam_ratio = _p(plane_cam, .5) / _p(floor_cam, .5)
    print(f"  camera TcpClientPlane                 {us(plane_cam)} {us(plane_cam, .99)}   {cam_ratio:5.2f}")
    print(f"  camera pyzmq in-band pickle           {us(zmq_cam)} {us(zmq_cam, .99)}   {_p(zmq_cam, .5) / _p(floor_cam, .5):5.2f}")
    print(f"  small raw socket ping-pong (1 byte)   {us(raw_small)} {us(raw_small, .99)}")
    print(f"  small TcpClientPlane (4 float32 step) {us(plane_small)} {us(plane_small, .99)}")
    print(f"  small pyzmq pickle (4 float32 step)   {us(zmq_small)} {us(zmq_small, .99)}")
    print()
    print("targets:")
    print(f"  16 MB throughput >= 80% of raw:           {mbps(plane_big) / mbps(floor_big):.0%}")
    print(f"  camera p50 <= 1.5x raw transfer:          {cam_ratio:.2f}x")
    print(f"  camera p50 >= 3x faster than pyzmq:       {_p(zmq_cam, .5) / _p(plane_cam, .5):.2f}x faster")
    print(f"  small p50 <= 0.6x pyzmq REQ/REP pickle:   {_p(plane_small, .5) / _p(zmq_small, .5):.2f}x")


if __name__ == "__main__":
    main()
