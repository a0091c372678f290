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

With ``--device cuda:0`` a third table serves the fixed payloads as tensors
on that device (the server stages them to pinned host memory each step) to a
client that sends its action from the device and places what it receives
there (``FastRemoteEnv(..., device=...)``), against host tensors.
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
    parser.add_argument("--device", default=None, help="also serve the fixed payloads as tensors on this device")
    parser.add_argument("--device-only", action="store_true", help="with --device: only the device table")
    args = parser.parse_args(argv)
    if args.device_only and args.device is None:
        parser.error("--device-only needs --device")
    families = {} if args.device_only else dict(FAMILIES)
    if args.device is not None:
        families[f"fixed payloads, host tensors against tensors on {args.device}"] = {
            payload: {
                "numpy": (FIXED, {"kind": "torch", "payload": payload}),
                "torch": (FIXED, {"kind": "torch", "payload": payload, "device": args.device}),
            }
            for payload in ("small", "camera")
        }
    servers = {
        (family, payload, kind): ServerProcess(target, [], env_kwargs=kwargs)
        for family, payloads in families.items()
        for payload, kinds in payloads.items()
        for kind, (target, kwargs) in kinds.items()
    }
    transports = args.transports.split(",")
    runs: dict[tuple[str, str, str, str], list[float]] = {}
    device_servers = [
        server for (family, _, kind), server in servers.items() if family not in FAMILIES and kind == "torch"
    ]
    try:
        for server in servers.values():
            server.start()
        for _ in range(args.repeat):
            for transport in transports:
                for (family, payload, kind), server in servers.items():
                    action = np.random.default_rng(1234).uniform(-1, 1, ACTION_SIZES[payload]).astype(np.float32)
                    sent = torch.from_numpy(action) if kind == "torch" or family not in FAMILIES else action
                    options = {}
                    if server in device_servers:  # sent from the device, received onto it
                        sent, options = sent.to(args.device), {"device": args.device}
                    steps = args.steps if payload == "small" else max(10, args.steps // 10)
                    runs.setdefault((family, transport, payload, kind), []).append(
                        step_p50_us(server.address, transport, sent, steps, warmup=max(20, steps // 10), **options)
                    )
    finally:
        for server in servers.values():
            server.stop()
    for family, payloads in families.items():
        first, second = ("numpy", "torch") if family in FAMILIES else ("host tensors", f"{args.device} tensors")
        print(f"\n{family}: step round trip p50 (µs), median of {args.repeat} interleaved runs")
        print(f"| transport | payload | {first} p50 µs | {second} p50 µs | ratio |")
        print("|---|---|---:|---:|---:|")
        for transport in transports:
            for payload in payloads:
                numpy_p50 = statistics.median(runs[(family, transport, payload, "numpy")])
                torch_p50 = statistics.median(runs[(family, transport, payload, "torch")])
                print(f"| {transport} | {payload} | {numpy_p50:.1f} | {torch_p50:.1f} | {torch_p50 / numpy_p50:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
