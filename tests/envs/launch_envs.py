"""Envs for the launch tests: one that leaves processes in the server's process group."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np

_CHILD = """
import signal, sys, time
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


class SpawningEnv:
    """Starts a child process in the server's process group and never stops it.

    ``ignore_term=True``: the child ignores SIGTERM, so only SIGKILL ends it.
    ``get_state()`` names the server's and the child's pids.
    """

    def __init__(self, ignore_term: bool = False) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, "ignore-term" if ignore_term else "default"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._child.stdout is not None
        self._child.stdout.readline()  # its signal disposition is in place

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.ones(2, dtype=np.float32), 1.0, False, False, {}

    def get_state(self) -> dict[str, int]:
        return {"server_pid": os.getpid(), "child_pid": self._child.pid}

    def close(self) -> None:
        """Leaves the child running on purpose: the launcher must end the whole group."""
