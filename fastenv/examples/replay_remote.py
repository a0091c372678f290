"""A batched simulator served remotely, its states replayed locally: Isaac Sim's split on one host.

1. Starts ``fastenv serve fastenv.examples.isaac_shape:make_env --env-thread main``
   (the Isaac Lab-shaped env of :mod:`fastenv.examples.isaac_shape`; an
   Isaac Sim server would run on the simulator's main thread the same way),
   unless ``--connect`` names a server already running.
2. Drives it through :meth:`fastenv.FastVectorEnv.batched` (Gymnasium's
   ``VectorEnv``, one call per step for every row) with random actions,
   fetching the scene state (``get_state()``, nested dataclasses of tensors)
   after every step.
3. Replays the received states in a local instance of the env: restores each
   with ``set_state()`` and compares the state it reads back and the
   observations it computes with what the server sent; then, from each
   state, steps with the same actions and compares the next step's rewards,
   flags and (rows not reset by the step: resets draw from the server's
   generator) states and observations.

Prints a summary ending in ``max abs difference = 0`` when everything
matches bit for bit (exit status 0; 1 otherwise). The served env and the
local replay may run on different devices (``--server-device``,
``--device``): what travelled must still be exact, but a step re-simulated
on another device may differ in the last bits of a float (its kernels
round differently), so then re-simulated values pass within
:data:`CROSS_DEVICE_TOLERANCE`.

Usage::

    python -m fastenv.examples.replay_remote
    python -m fastenv.examples.replay_remote --steps 200 --num-envs 256 --autoreset-mode next_step --backend numpy
    python -m fastenv.examples.replay_remote --connect HOST:PORT --transport tcp
    python -m fastenv.examples.replay_remote --server-device cuda:0 --device cuda:0
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import fastenv
from fastenv.examples.isaac_shape import AUTORESET_MODES, TARGET, IsaacShapeEnv

# How far a step re-simulated on another device may differ: float32 kernels round differently on a GPU.
CROSS_DEVICE_TOLERANCE = 1e-5
from fastenv.server_process import ServerProcess


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, array)`` for every array or tensor in ``value`` (dicts, tuples and dataclasses walked)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}[{index}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from leaves(getattr(value, field.name), f"{path}.{field.name}" if path else field.name)
    else:
        yield path, value


def max_abs_difference(a: Any, b: Any, rows: np.ndarray | None = None) -> float:
    """The largest absolute difference between two nested values (``inf`` if their structure, types,
    dtypes or shapes differ); ``rows`` (a bool mask) compares only those rows of every array."""
    ours, theirs = list(leaves(a)), list(leaves(b))
    if [path for path, _ in ours] != [path for path, _ in theirs]:
        return float("inf")
    if type(a) is not type(b):
        return float("inf")
    worst = 0.0
    for (_, x), (_, y) in zip(ours, theirs):
        if type(x) is not type(y):
            return float("inf")
        x, y = _numpy(x), _numpy(y)
        if x.dtype != y.dtype or x.shape != y.shape:
            return float("inf")
        if rows is not None and x.ndim:
            x, y = x[rows], y[rows]
        if x.size:
            worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()))
    return worst


@dataclasses.dataclass
class Recording:
    """What the client received: the states and observations after the reset and every step."""

    env_kwargs: dict[str, Any]
    transport: str
    states: list[Any] = dataclasses.field(default_factory=list)
    observations: list[Any] = dataclasses.field(default_factory=list)
    actions: list[Any] = dataclasses.field(default_factory=list)
    steps: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)  # (reward, terminated, truncated, extras)
    seconds: float = 0.0
    device: str = "cpu"  # the served env's


def drive(address: str, steps: int, seed: int, transport: str, timeout: float) -> Recording:
    """Step the served env ``steps`` times with random actions, fetching its state after each step."""
    with fastenv.FastVectorEnv.batched(address, transport=transport, timeout=timeout) as envs:
        env_kwargs = {
            "num_envs": envs.num_envs,
            "num_dof": envs.get_attr("num_dof"),
            "max_episode_length": envs.get_attr("max_episode_length"),
            "autoreset_mode": envs.get_attr("autoreset_mode"),
            "backend": envs.get_attr("backend"),
        }
        as_tensor = None
        if env_kwargs["backend"] == "torch":
            import torch

            as_tensor = torch.from_numpy
        record = Recording(env_kwargs, envs.transport, device=envs.get_attr("device"))
        envs.action_space.seed(seed)
        began = time.perf_counter()
        obs, _ = envs.reset(seed=seed)
        record.observations.append(obs)
        record.states.append(envs.call("get_state"))
        for _ in range(steps):
            actions = envs.action_space.sample()
            if as_tensor is not None:
                actions = as_tensor(actions)
            obs, reward, terminated, truncated, extras = envs.step(actions)
            record.actions.append(actions)
            record.observations.append(obs)
            record.steps.append((reward, terminated, truncated, extras))
            record.states.append(envs.call("get_state"))
        record.seconds = time.perf_counter() - began
    return record


def replay(record: Recording, device: str | None = None) -> dict[str, Any]:
    """Restore every received state in a local env and compare; re-simulate every step from its state."""
    local = IsaacShapeEnv(**record.env_kwargs, device=device)
    restored = observed = resimulated = 0.0
    for state, obs in zip(record.states, record.observations):
        local.set_state(state)
        restored = max(restored, max_abs_difference(local.get_state(), state))
        observed = max(observed, max_abs_difference(local.get_observations(), obs))
    ended = terminated_rows = 0
    for index, (actions, (reward, terminated, truncated, extras)) in enumerate(zip(record.actions, record.steps)):
        local.set_state(record.states[index])
        ours = local.step(actions)
        after = record.states[index + 1]
        kept = _numpy(after.time) > 0  # rows the step did not reset (a reset draws from the server's generator)
        resimulated = max(
            resimulated,
            max_abs_difference(ours[1:4], (reward, terminated, truncated)),
            max_abs_difference(ours[0], record.observations[index + 1], kept),
            max_abs_difference(local.get_state(), after, kept),
        )
        if "final_obs" in extras:  # same-step autoreset: the done rows' last observations
            done = _numpy(extras["final_mask"])
            resimulated = max(resimulated, max_abs_difference(ours[4]["final_obs"], extras["final_obs"], done))
        ended += int(np.count_nonzero(_numpy(terminated) | _numpy(truncated)))
        terminated_rows += int(np.count_nonzero(_numpy(terminated)))
    return {
        "restored": restored,
        "observed": observed,
        "resimulated": resimulated,
        "ended": ended,
        "terminated": terminated_rows,
        "max": max(restored, observed, resimulated),
        "device": local.device,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps to drive remotely (default: 100)")
    parser.add_argument("--num-envs", type=int, default=64, help="rows of the served env (default: 64)")
    parser.add_argument("--max-episode-length", type=int, default=40, help="steps before truncation (default: 40)")
    parser.add_argument("--autoreset-mode", choices=tuple(AUTORESET_MODES), default="same_step")
    parser.add_argument("--backend", choices=("torch", "numpy"), default=None, help="default: torch if installed")
    parser.add_argument("--transport", choices=("auto", "shm", "tcp"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on the server's start and every call")
    parser.add_argument("--device", default=None, help="torch device of the local replay (default: cpu)")
    parser.add_argument("--server-device", default=None, help="torch device of the served env (default: cpu)")
    parser.add_argument("--connect", metavar="ADDRESS", default=None, help="drive this running server instead")
    args = parser.parse_args(argv)
    backend = args.backend
    if backend is None:
        try:
            import torch  # noqa: F401
        except ImportError:
            backend = "numpy"
        else:
            backend = "torch"

    server = None
    address = args.connect
    if address is None:
        env_kwargs = {
            "num_envs": args.num_envs,
            "max_episode_length": args.max_episode_length,
            "autoreset_mode": args.autoreset_mode,
            "backend": backend,
        }
        if args.server_device is not None:
            env_kwargs["device"] = args.server_device
        server = ServerProcess(TARGET, ["--env-thread", "main"], env_kwargs=env_kwargs, ready_timeout=args.timeout)
        address = server.start()
    try:
        record = drive(address, args.steps, args.seed, args.transport, args.timeout)
    finally:
        if server is not None:
            server.stop()
    report = replay(record, args.device)

    kwargs = record.env_kwargs
    rate = kwargs["num_envs"] * args.steps / record.seconds if record.seconds else float("nan")
    print(
        f"drove {args.steps} steps x {kwargs['num_envs']} rows ({kwargs['autoreset_mode']} autoreset, "
        f"{kwargs['backend']} backend) over {record.transport}: {rate:,.0f} env steps/s with a state fetch per step"
    )
    print(
        f"  row episodes ended: {report['ended']} ({report['terminated']} terminated, "
        f"{report['ended'] - report['terminated']} truncated)"
    )
    print(f"  states restored locally:               max abs difference {report['restored']:g}")
    print(f"  observations of the restored states:   max abs difference {report['observed']:g}")
    print(f"  steps re-simulated from the states:    max abs difference {report['resimulated']:g}")
    print(f"replayed {len(record.states)} states: max abs difference = {report['max']:g}")
    if record.device == report["device"]:
        return 0 if report["max"] == 0 else 1
    print(f"  (served on {record.device}, replayed on {report['device']}: re-simulated steps pass "
          f"within {CROSS_DEVICE_TOLERANCE:g})")
    exact = report["restored"] == 0 and report["observed"] == 0
    return 0 if exact and report["resimulated"] <= CROSS_DEVICE_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
