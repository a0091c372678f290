"""torch tensors against numpy arrays: the same payloads, both ways, on each transport.

Usage::

    python benchmarks/bench_torch.py
    python benchmarks/bench_torch.py --steps 3000 --repeat 5 --transports shm,tcp

Two families, each served as numpy and as torch, stepped from a client with
the same action as an array or a tensor; the p50 round trip (median of
``--repeat`` interleaved runs) and the torch/numpy ratio:

- the example envs ``fastenv.examples:VectorEnv`` and ``CameraEnv`` (frames
  it allocates) against their torch twins
  (:mod:`fastenv.examples.torch_payloads`), which convert the action and
  observations themselves, as a user's wrapper would;
- :class:`~fastenv.examples.torch_payloads.FixedPayloadEnv`, the same
  payloads returned with no env work at all, so only fastenv's handling of
  arrays and tensors differs.
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

NEVER = 2**31 - 1
FIXED = "fastenv.examples.torch_payloads:FixedPayloadEnv"
# family -> payload -> kind -> (target, env kwargs); every payload's action has ACTION_SIZES[payload] floats
FAMILIES: dict[str, dict[str, dict[str, tuple[str, dict]]]] = {
    "example envs (their torch twins convert actions and observations)": {
        "small": {
            "numpy": ("fastenv.examples:VectorEnv", {"max_steps": NEVER}),
            "torch": ("fastenv.examples.torch_payloads:TorchVectorEnv", {"max_steps": NEVER}),
        },
        "camera": {
            "numpy": ("fastenv.examples:CameraEnv", {"max_steps": NEVER, "reply_arrays": False}),
            "torch": ("fastenv.examples.torch_payloads:TorchCameraEnv", {"max_steps": NEVER}),
        },
    },
    "fixed payloads (no env work: only fastenv differs)": {
        payload: {kind: (FIXED, {"kind": kind, "payload": payload}) for kind in ("numpy", "torch")}
        for payload in ("small", "camera")
    },
}
ACTION_SIZES = {"small": 4, "camera": 20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed steps of the small payload (camera: a tenth)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transports", default="shm,tcp")
    args = parser.parse_args(argv)
    servers = {
        (family, payload, kind): ServerProcess(target, [], env_kwargs=kwargs)
        for family, payloads in FAMILIES.items()
        for payload, kinds in payloads.items()
        for kind, (target, kwargs) in kinds.items()
    }
    transports = args.transports.split(",")
    runs: dict[tuple[str, str, str, str], list[float]] = {}
    try:
        for server in servers.values():
            server.start()
        for _ in range(args.repeat):
            for transport in transports:
                for (family, payload, kind), server in servers.items():
                    action = np.random.default_rng(1234).uniform(-1, 1, ACTION_SIZES[payload]).astype(np.float32)
                    sent = torch.from_numpy(action) if kind == "torch" else action
                    steps = args.steps if payload == "small" else max(10, args.steps // 10)
                    runs.setdefault((family, transport, payload, kind), []).append(
                        step_p50_us(server.address, transport, sent, steps, warmup=max(20, steps // 10))
                    )
    finally:
        for server in servers.values():
            server.stop()
    for family, payloads in FAMILIES.items():
        print(f"\n{family}: step round trip p50 (µs), median of {args.repeat} interleaved runs")
        print("| transport | payload | numpy p50 µs | torch p50 µs | torch / numpy |")
        print("|---|---|---:|---:|---:|")
        for transport in transports:
            for payload in payloads:
                numpy_p50 = statistics.median(runs[(family, transport, payload, "numpy")])
                torch_p50 = statistics.median(runs[(family, transport, payload, "torch")])
                print(f"| {transport} | {payload} | {numpy_p50:.1f} | {torch_p50:.1f} | {torch_p50 / numpy_p50:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
