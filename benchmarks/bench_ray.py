"""fastenv on Ray against Ray's own ways of stepping remote envs, and the cost of losing a node.

Usage::

    python benchmarks/bench_ray.py            # 16 x CartPole-v1: throughput table, then the node-failure table
    python benchmarks/bench_ray.py --quick    # tiny run (CI)

Throughput (one local Ray instance, 16 envs, same actions, episodes end and
reset as in training):

* ``fastenv-ray``: :func:`fastenv.ray.place_servers` places 4 server actors of
  4 envs each; one :class:`fastenv.ray.RayVectorEnv` steps all 16 per call
  (shared memory to each server, as the probe decides on one host);
* ``ray-actors``: 16 plain Ray actors, one env each; a step is
  ``ray.get([actor.step.remote(a) for ...])`` (reset when an episode ends);
* ``rllib-remote-envs``: RLlib's own ``RemoteBaseEnv`` (what
  ``remote_worker_envs=True`` builds on the old API stack: an actor per env,
  ``poll()`` collects whichever envs are ready with ``ray.wait``,
  ``send_actions`` sends them their next action).

Node failure (a three-node ``ray.cluster_utils.Cluster`` on this machine, 4
servers of 4 envs spread over it): the node of one server is removed while
the vector env steps; reported are the seconds the step that met the failure
took (Ray noticing the node is gone, restarting the actor elsewhere, fastenv
reconnecting and resetting its envs), the env steps that could have run in
that time, and the episode steps discarded in the recreated envs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import ray

from fastenv.errors import FastEnvTimeout
from fastenv.ray import RECREATED_KEY, place_servers

ENV_ID = "CartPole-v1"
NUM_ENVS = 16
NUM_SERVERS = 4
TARGET_RATIO = 5.0
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


def _actions(steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(steps, NUM_ENVS))


# ---------------------------------------------------------------------- backends


def run_fastenv(steps: int) -> float:
    """Env steps/s of a RayVectorEnv over 4 placed servers of 4 envs."""
    actions = _actions(steps)
    placing = place_servers(ENV_ID, NUM_SERVERS, num_envs=NUM_ENVS // NUM_SERVERS, num_cpus=0.25, insecure=True)
    with placing as group, group.vector_env(timeout=60) as envs:
        envs.reset(seed=0)
        for row in actions[: steps // 10]:  # warm-up: layouts compiled, pages touched
            envs.step(row)
        started = time.perf_counter()
        for row in actions:
            envs.step(row)
        return NUM_ENVS * steps / (time.perf_counter() - started)


class _EnvActor:
    """One env in a Ray actor, reset when its episode ends."""

    def __init__(self, seed: int) -> None:
        self.env = gymnasium.make(ENV_ID)
        self.env.reset(seed=seed)

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        result = self.env.step(action)
        if result[2] or result[3]:
            self.env.reset()
        return result


def run_ray_actors(steps: int) -> float:
    """Env steps/s of 16 plain actors stepped with one ``ray.get`` per vector step."""
    actions = _actions(steps)
    remote = ray.remote(num_cpus=0)(_EnvActor)
    actors = [remote.remote(index) for index in range(NUM_ENVS)]  # type: ignore[attr-defined]
    try:
        for row in actions[: max(1, steps // 10)]:
            ray.get([actor.step.remote(int(a)) for actor, a in zip(actors, row)], timeout=60)
        started = time.perf_counter()
        for row in actions:
            ray.get([actor.step.remote(int(a)) for actor, a in zip(actors, row)], timeout=60)
        return NUM_ENVS * steps / (time.perf_counter() - started)
    finally:
        for actor in actors:
            ray.kill(actor)


def run_rllib_remote_envs(steps: int) -> float:
    """Env steps/s of RLlib's RemoteBaseEnv (an actor per env, polled with ray.wait)."""
    from ray.rllib.env.base_env import _DUMMY_AGENT_ID
    from ray.rllib.env.remote_base_env import RemoteBaseEnv

    env = RemoteBaseEnv(lambda index: gymnasium.make(ENV_ID), NUM_ENVS, multiagent=False, remote_env_batch_wait_ms=0)
    rng = np.random.default_rng(0)
    try:

        def run(total: int) -> None:
            done = 0
            while done < total:
                _, _, terminateds, truncateds, _, _ = env.poll()
                orders: dict[Any, Any] = {}
                for env_id in terminateds:
                    if terminateds[env_id]["__all__"] or truncateds[env_id]["__all__"]:
                        env.try_reset(env_id)
                    else:
                        orders[env_id] = {_DUMMY_AGENT_ID: int(rng.integers(0, 2))}
                    done += 1
                env.send_actions(orders)

        run(NUM_ENVS * max(1, steps // 10))
        started = time.perf_counter()
        run(NUM_ENVS * steps)
        return NUM_ENVS * steps / (time.perf_counter() - started)
    finally:
        env.stop()


# ---------------------------------------------------------------------- node failure


def run_node_failure(quick: bool) -> dict[str, float]:
    """Remove the node of one server mid-run; what the failure cost."""
    from ray.cluster_utils import Cluster

    store = 80 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "object_store_memory": store,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    try:
        nodes = [cluster.add_node(num_cpus=2, object_store_memory=store) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes(timeout=60)
        head = cluster.head_node.node_id
        per_server = NUM_ENVS // NUM_SERVERS
        placing = place_servers(
            ENV_ID, NUM_SERVERS, num_envs=per_server, num_cpus=0.5, insecure=True, heartbeat_interval=0.5
        )
        with placing as group, group.vector_env(timeout=60, heartbeat_interval=0.5) as envs:
            envs.reset(seed=0)
            lengths = np.zeros(NUM_ENVS, dtype=np.int64)
            rng = np.random.default_rng(0)
            warm = 100 if quick else 1000
            started = time.perf_counter()
            for _ in range(warm):
                _, _, terminations, truncations, _ = envs.step(rng.integers(0, 2, NUM_ENVS))
                lengths = np.where(terminations | truncations, 0, lengths + 1)
            rate = NUM_ENVS * warm / (time.perf_counter() - started)
            victim = next(index for index, node in enumerate(group.nodes) if node != head)
            victim_node = next(node for node in nodes if node.node_id == group.nodes[victim])
            removed = time.perf_counter()
            cluster.remove_node(victim_node, allow_graceful=False)
            while True:
                if time.perf_counter() - removed > 120:
                    raise FastEnvTimeout("the removed node's envs were not recreated within 120 s")
                before = lengths.copy()
                _, _, terminations, truncations, infos = envs.step(rng.integers(0, 2, NUM_ENVS))
                lengths = np.where(terminations | truncations, 0, lengths + 1)
                if RECREATED_KEY in infos:
                    recovered = time.perf_counter()
                    recreated = infos[RECREATED_KEY]
                    break
            return {
                "rate": rate,
                "seconds": recovered - removed,
                "failed_step": max(recovery.seconds for recovery in envs.recoveries),
                "steps_not_run": rate * (recovered - removed),
                "episode_steps_discarded": float(before[recreated].sum()),
                "envs_recreated": float(recreated.sum()),
            }
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---------------------------------------------------------------------- tables


def _throughput_table(rows: dict[str, float]) -> str:
    best_baseline = max(rows["ray-actors"], rows["rllib-remote-envs"])
    lines = [
        f"| backend ({NUM_ENVS} x {ENV_ID}) | env steps/s | vs best Ray baseline |",
        "|---|---:|---:|",
    ]
    for name, rate in rows.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / best_baseline:.1f}x |")
    ratio = rows["fastenv-ray"] / best_baseline
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    lines.append("")
    lines.append(f"target: fastenv-ray >= {TARGET_RATIO:g}x the better baseline: {ratio:.1f}x ({verdict})")
    return "\n".join(lines)


def _failure_table(cost: dict[str, float]) -> str:
    return "\n".join(
        [
            f"| node failure ({NUM_SERVERS} servers x {NUM_ENVS // NUM_SERVERS} envs, 3 nodes) | value |",
            "|---|---:|",
            f"| env steps/s before the failure | {cost['rate']:,.0f} |",
            f"| seconds from node removal to the envs recreated | {cost['seconds']:.2f} |",
            f"| of which the step that met the failure | {cost['failed_step']:.2f} |",
            f"| env steps that could have run meanwhile | {cost['steps_not_run']:,.0f} |",
            f"| envs recreated | {cost['envs_recreated']:.0f} |",
            f"| episode steps discarded in them | {cost['episode_steps_discarded']:.0f} |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run (CI)")
    parser.add_argument("--steps", type=int, default=None, help="vector steps for fastenv (baselines: a tenth)")
    parser.add_argument("--no-failure", action="store_true", help="skip the node-failure measurement")
    args = parser.parse_args(argv)
    steps = args.steps or (200 if args.quick else 3000)
    baseline_steps = max(20, steps // 10)

    ray.init(num_cpus=8, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    try:
        backends: list[tuple[str, Callable[[int], float], int]] = [
            ("fastenv-ray", run_fastenv, steps),
            ("ray-actors", run_ray_actors, baseline_steps),
            ("rllib-remote-envs", run_rllib_remote_envs, baseline_steps),
        ]
        rows = {name: run(count) for name, run, count in backends}
    finally:
        ray.shutdown()
    print(_throughput_table(rows))
    if not args.no_failure:
        print()
        print(_failure_table(run_node_failure(args.quick)))


if __name__ == "__main__":
    main()
