"""Helpers of the fault suite: client processes to kill, and a server's resources.

Routes (:class:`~tests.routes.Route`) are those of the conformance suite, less
``shm-python``: faults do not depend on the doorbell's backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

from tests.polling import wait_until
from tests.routes import COUNTER, Route

ROUTES = ("shm", "shm-env-thread", "tcp", "tcp-env-thread", "control", "control-auth")
SHM_SEGMENT = "/dev/shm/fastenv-"


# ---------------------------------------------------------------- client processes

CLIENT_SCRIPT = """
import json, sys, time
import fastenv
address, options, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if mode == "handshakes":  # open and close sessions until killed
    print("ready", flush=True)
    while True:
        fastenv.FastRemoteEnv(address, timeout=20, **options).close()
env = fastenv.FastRemoteEnv(address, timeout=20, **options)
env.reset()
print("ready", flush=True)
if mode == "idle":
    time.sleep(600)
while True:  # mid-step: slow steps, so a kill lands inside one most of the time
    env.step(-5)
"""


@contextlib.contextmanager
def client_process(route: Route, mode: str) -> Iterator[subprocess.Popen[str]]:
    """A child process driving ``route`` (``mode``: ``stepping``, ``idle`` or ``handshakes``), ready when yielded."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, route.address, json.dumps(route.client_options()), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = _readline(process, timeout=30)
        assert line.strip() == "ready", f"client did not start: {line!r}"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, or '' after ``timeout`` seconds."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


# ---------------------------------------------------------------- resources


@dataclass(frozen=True)
class Usage:
    """What a server process holds, and the machine's shared memory."""

    fds: int
    threads: int
    segment_mappings: int  # mappings of fastenv shared-memory segments
    shmem_kib: int  # the machine's Shmem (/proc/meminfo)

    @classmethod
    def of(cls, pid: int) -> Usage:
        process = psutil.Process(pid)
        mappings = 0
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if SHM_SEGMENT in line:
                    mappings += 1
        return cls(process.num_fds(), process.num_threads(), mappings, _shmem_kib())

    def within(self, baseline: Usage, bound: Usage) -> bool:
        """Whether each figure is at most ``baseline`` plus ``bound``."""
        return all(
            getattr(self, field) <= getattr(baseline, field) + getattr(bound, field)
            for field in ("fds", "threads", "segment_mappings", "shmem_kib")
        )


def _shmem_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    return 0


def settled_usage(pid: int, baseline: Usage, bound: Usage, timeout: float) -> tuple[bool, Usage]:
    """Wait until the server's usage is back within ``bound`` of ``baseline``; (whether it is, the last usage)."""
    last = [Usage.of(pid)]

    def settled() -> bool:
        last[0] = Usage.of(pid)
        return last[0].within(baseline, bound)

    ok = wait_until(settled, timeout, interval=0.1)
    return ok, last[0]


def env_flag(name: str, default: float = 0.0) -> float:
    """A number from the environment (0 when unset)."""
    value = os.environ.get(name, "")
    return float(value) if value else default


__all__ = [
    "COUNTER",
    "ROUTES",
    "Route",
    "Usage",
    "client_process",
    "env_flag",
    "settled_usage",
    "wait_until",
]
