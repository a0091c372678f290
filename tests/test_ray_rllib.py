"""The RLlib example trains PPO through fastenv servers placed on Ray (tiny settings, its own local Ray)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.rllib")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ray_rllib_ppo.py"


@pytest.mark.timeout(200)
def test_ppo_trains_through_fastenv_servers() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--iterations", "2", "--quick"],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env={name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"},  # a Ray of its own
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    iterations = re.findall(r"iteration (\d+): episode return mean ([\d.]+), env steps ([\d.]+)", result.stdout)
    assert [int(number) for number, _, _ in iterations] == [1, 2]
    assert float(iterations[-1][2]) > float(iterations[0][2]) > 0  # env steps were sampled through the servers
    assert result.stdout.count("servers: tcp://") == 1
