"""The autoreset mode a server declares (``fastenv serve TARGET --num-envs N --autoreset MODE``).

A plain ``FastVectorEnv(address)`` follows the declared mode, checked against
gymnasium.vector.SyncVectorEnv seed for seed on shared memory and TCP, with and
without ``--workers``; a shared server refuses another mode with a typed error,
a per-client one lets each client choose; the flag and the keyword are checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from fastenv import EnvServer
from fastenv.cli import build_parser
from fastenv.errors import AutoresetModeError, ControlDenied, IncompatibleEnvsError, ServerConfigError
from fastenv.vector import FastVectorEnv, VectorHost
from fastenv.vector.workers import TargetFactory

from assertions import against_sync

NESTED = f"{Path(__file__).parent / 'envs' / 'vector_envs.py'}:NestedEnv"
TIMEOUT = 30.0


def make_nested() -> Any:
    return TargetFactory(NESTED, {})()


def run_against_sync(envs: Any, mode: AutoresetMode, steps: int, seed: int = 3) -> int:
    """Step ``envs`` and a SyncVectorEnv in ``mode`` with the same seeds and actions; how many envs ended."""
    sync = SyncVectorEnv([make_nested] * envs.num_envs, autoreset_mode=mode)
    try:
        assert envs.metadata == sync.metadata
        return against_sync(envs, sync, steps, seed)
    finally:
        sync.close()


@pytest.mark.parametrize("workers", [None, "2"], ids=["in-server", "workers"])
@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_declared_same_step_matches_sync(serve, transport: str, workers: str | None) -> None:
    args = ["--num-envs", "3", "--autoreset", "same-step"] + (["--workers", workers] if workers else [])
    server = serve(NESTED, *args)  # shared mode: the declared mode is fixed
    client_transport = "auto" if transport == "shm" else "tcp"
    with FastVectorEnv(server.address, transport=client_transport, timeout=TIMEOUT) as envs:
        assert envs.transport == (transport,)
        assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        assert run_against_sync(envs, AutoresetMode.SAME_STEP, 40) > 3  # final_obs / final_info compared too
    with pytest.raises(AutoresetModeError, match="SAME_STEP autoreset.*--autoreset") as caught:
        FastVectorEnv(server.address, transport=client_transport, autoreset_mode="next_step", timeout=TIMEOUT)
    assert server.address in str(caught.value)
    assert isinstance(caught.value, IncompatibleEnvsError) and isinstance(caught.value, ControlDenied)
    with FastVectorEnv(server.address, autoreset_mode=AutoresetMode.SAME_STEP, timeout=TIMEOUT) as envs:
        assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP  # asking for the declared mode is fine


def test_per_client_declared_mode_is_each_clients_default(serve) -> None:
    declared = serve(NESTED, "--num-envs", "2", "--autoreset", "same-step", "--mode", "per-client")
    plain = serve(NESTED, "--num-envs", "2", "--mode", "per-client")
    with FastVectorEnv(declared.address, timeout=TIMEOUT) as envs:
        assert run_against_sync(envs, AutoresetMode.SAME_STEP, 20) > 0
    with FastVectorEnv(declared.address, autoreset_mode="next_step", timeout=TIMEOUT) as envs:
        assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        assert run_against_sync(envs, AutoresetMode.NEXT_STEP, 20) > 0
    both = [declared.address, plain.address]
    with pytest.raises(IncompatibleEnvsError, match="autoreset differently.*autoreset_mode="):
        FastVectorEnv(both, timeout=TIMEOUT)
    with FastVectorEnv(both, autoreset_mode="same_step", timeout=TIMEOUT) as envs:
        assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        assert run_against_sync(envs, AutoresetMode.SAME_STEP, 20) > 0


def test_declared_mode_on_the_host() -> None:
    with VectorHost([make_nested() for _ in range(2)]) as host:
        assert host.declare_autoreset_mode("same-step") == AutoresetMode.SAME_STEP.value
        assert host.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP and host.autoreset_fixed
        assert host.set_autoreset_mode("SameStep") == AutoresetMode.SAME_STEP.value
        with pytest.raises(AutoresetModeError, match="cannot switch to NEXT_STEP"):
            host.set_autoreset_mode("next_step")
        assert host.autoreset_mode is AutoresetMode.SAME_STEP
    with VectorHost([make_nested() for _ in range(2)]) as host:
        host.declare_autoreset_mode(AutoresetMode.SAME_STEP, fixed=False)
        assert host.set_autoreset_mode("next-step") == AutoresetMode.NEXT_STEP.value


def test_server_keyword_is_checked() -> None:
    def factory() -> Any:
        return gymnasium.make("CartPole-v1")

    with pytest.raises(ServerConfigError, match="not an autoreset mode"):
        EnvServer(factory=factory, num_envs=2, autoreset_mode="sometimes")
    with pytest.raises(ServerConfigError, match="supports: .next-step., .same-step."):
        EnvServer(factory=factory, num_envs=2, autoreset_mode="disabled")
    with pytest.raises(ServerConfigError, match="needs num_envs"):
        EnvServer(factory=factory, autoreset_mode="same-step")
    with EnvServer(factory=factory, num_envs=2, autoreset_mode="same-step") as server:
        server.start()
        with FastVectorEnv(server.address, timeout=TIMEOUT) as envs:
            assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP


def test_cli_flag() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "CartPole-v1", "--num-envs", "2", "--autoreset", "same-step"]).autoreset == (
        "same-step"
    )
    assert parser.parse_args(["serve", "CartPole-v1"]).autoreset is None
    for args, message in (
        (["--num-envs", "2", "--autoreset", "sometimes"], "invalid choice: 'sometimes'"),
        (["--autoreset", "same-step"], "needs num_envs"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "fastenv", "serve", "CartPole-v1", "--port", "0", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "fastenv: ready" not in done.stdout
