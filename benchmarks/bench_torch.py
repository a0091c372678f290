"""torch tensors against numpy arrays: the same payloads, both ways, on each transport.

Usage::

    python benchmarks/bench_torch.py
    python benchmarks/bench_torch.py --steps 3000 --repeat 5 --transports shm,tcp

Serves ``fastenv.examples:VectorEnv`` and ``CameraEnv`` (frames it allocates)
and their torch twins (:mod:`fastenv.examples.torch_payloads`: the same
bytes, as tensors in and out), steps each from a client with the same
action as an array or a tensor, and prints the p50 round trip (median of
``--repeat`` interleaved runs) and the torch/numpy ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from benchmarks.steps import step_p50_us
from fastenv.server_process import ServerProcess

TIMEOUT_S = 30.0
NEVER = 2**31 - 1
PAYLOADS = {  # name: (numpy target, torch target, kwargs, action size)
    "small": ("fastenv.examples:VectorEnv", "fastenv.examples.torch_payloads:TorchVectorEnv", {"max_steps": NEVER}, 4),
    "camera": (
        "fastenv.examples:CameraEnv",
        "fastenv.examples.torch_payloads:TorchCameraEnv",
        {"max_steps": NEVER, "reply_arrays": False},
        20,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed steps of the small payload (camera: a tenth)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transports", default="shm,tcp")
    args = parser.parse_args(argv)
    servers: dict[tuple[str, str], ServerProcess] = {}
    for payload, (numpy_target, torch_target, kwargs, _) in PAYLOADS.items():
        if payload == "camera":
            kwargs = {**kwargs, "reply_arrays": False}
        servers[(payload, "numpy")] = ServerProcess(numpy_target, [], env_kwargs=kwargs)
        servers[(payload, "torch")] = ServerProcess(
            torch_target, [], env_kwargs={key: value for key, value in kwargs.items() if key != "reply_arrays"}
        )
    transports = args.transports.split(",")
    runs: dict[tuple[str, str, str], list[float]] = {}
    try:
        for server in servers.values():
            server.start()
        for _ in range(args.repeat):
            for transport in transports:
                for payload, (_, _, _, action_dim) in PAYLOADS.items():
                    action = np.random.default_rng(1234).uniform(-1, 1, action_dim).astype(np.float32)
                    steps = args.steps if payload == "small" else max(10, args.steps // 10)
                    for kind, sent in (("numpy", action), ("torch", torch.from_numpy(action))):
                        address = servers[(payload, kind)].address
                        runs.setdefault((transport, payload, kind), []).append(
                            step_p50_us(address, transport, sent, steps, warmup=max(20, steps // 10))
                        )
    finally:
        for server in servers.values():
            server.stop()
    print(f"step round trip p50 (µs), median of {args.repeat} interleaved runs")
    print("| transport | payload | numpy p50 µs | torch p50 µs | torch / numpy |")
    print("|---|---|---:|---:|---:|")
    for transport in transports:
        for payload in PAYLOADS:
            numpy_p50 = statistics.median(runs[(transport, payload, "numpy")])
            torch_p50 = statistics.median(runs[(transport, payload, "torch")])
            print(f"| {transport} | {payload} | {numpy_p50:.1f} | {torch_p50:.1f} | {torch_p50 / numpy_p50:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
