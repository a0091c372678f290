"""What moving tensors between a GPU and host memory costs, piece by piece (needs a CUDA device).

Usage::

    python benchmarks/bench_cuda_staging.py
    python benchmarks/bench_cuda_staging.py --device cuda:0 --repeat 2000

Times, in this process, the primitives a served GPU env and a client with
``device=`` use, on a small message (six 64-float tensors) and a camera
message (two 480x640x3 uint8 frames): fastenv's staging of a message to
pinned host memory (one synchronisation) and its placement of received host
tensors on the device, against torch's plain per-tensor copies
(``tensor.cpu()``, ``tensor.to(device)``). p50 µs of ``--repeat`` calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from fastenv import codec
from fastenv.staging import staged, to_device
from fastenv.tensors import map_tensors


def p50_us(call: Callable[[], Any], repeat: int, synchronise: bool) -> float:
    """The p50 of ``repeat`` timed calls (µs), each followed by a device synchronisation when asked."""
    for _ in range(max(10, repeat // 10)):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        began = time.perf_counter_ns()
        call()
        if synchronise:
            torch.cuda.synchronize()
        times.append(time.perf_counter_ns() - began)
    return statistics.median(times) / 1000


def messages(device: str) -> dict[str, dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    frame = (480, 640, 3)
    host = {
        "small": {
            f"obs{index}": torch.randn(64, generator=generator) for index in range(6)
        },
        "camera": {
            side: torch.randint(0, 256, frame, dtype=torch.uint8, generator=generator)
            for side in ("left", "right")
        },
    }
    return {
        name: {"host": message, "device": map_tensors(message, lambda t: t.to(device))}
        for name, message in host.items()
    }


def calls(
    on_device: Any, host: Any, device: str
) -> dict[str, tuple[Callable[[], Any], bool]]:
    """What is timed: ``what -> (call, synchronise after it)``."""
    return {
        "staged (fastenv: pinned copies, one synchronisation)": (
            lambda: staged(on_device),
            False,
        ),
        "codec.encode of the device message": (lambda: codec.encode(on_device), False),
        "per tensor .cpu() (torch, a synchronisation each)": (
            lambda: map_tensors(on_device, lambda t: t.cpu()),
            False,
        ),
        "to_device (fastenv: placement of received tensors)": (
            lambda: to_device(host, device),
            True,
        ),
        "per tensor .to(device) (torch, blocking)": (
            lambda: map_tensors(host, lambda t: t.to(device)),
            True,
        ),
        "per tensor .to(device, non_blocking=True) from pageable memory": (
            lambda: map_tensors(host, lambda t: t.to(device, non_blocking=True)),
            True,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--repeat", type=int, default=1000)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    device = args.device
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}: p50 µs of {args.repeat} calls"
    )
    print("| message | what | p50 µs |")
    print("|---|---|---:|")
    for name, forms in messages(device).items():
        for what, (call, synchronise) in calls(
            forms["device"], forms["host"], device
        ).items():
            print(f"| {name} | {what} | {p50_us(call, args.repeat, synchronise):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
