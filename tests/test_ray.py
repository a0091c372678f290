"""fastenv.ray on a real three-node Ray cluster on this machine (ray.cluster_utils.Cluster).

One cluster serves the whole module (starting one costs seconds). Placement
spread and packed, the vector env seed for seed against SyncVectorEnv (one
pair forced to TCP, the others on shared memory as the probe decides),
authentication, timeouts, a node removed mid-run with the recreated envs
reported, and a shutdown that leaves no process and no segment behind.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import psutil
import pytest
from gymnasium.vector import SyncVectorEnv

ray = pytest.importorskip("ray")
from assertions import same
from polling import wait_until
from ray.cluster_utils import Cluster

import fastenv
from fastenv.errors import AuthenticationRequired, FastEnvTimeout, ServerConfigError
from fastenv.ray import (
    RECREATED_KEY,
    PlacementError,
    PlacementTimeout,
    RayVectorEnv,
    place_servers,
)

pytestmark = pytest.mark.timeout(240)

NODE_CPUS = 2
OBJECT_STORE = 80 * 1024 * 1024
ENV_ID = "CartPole-v1"
# Ray marks a node dead after this many missed health checks of this period: short, so a removed node is noticed fast.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
CALL_TIMEOUT = 30.0
SLOW = f"{Path(__file__).parent / 'envs' / 'ray_envs.py'}:SlowCartPole"  # every client call; every placement


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node and two worker nodes on this machine, 2 logical CPUs each; the driver connected."""
    made = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": NODE_CPUS,
            "object_store_memory": OBJECT_STORE,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    try:
        for _ in range(2):
            made.add_node(num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE)
        ray.init(address=made.address, log_to_driver=False)
        made.wait_for_nodes(timeout=60)
        yield made
    finally:
        ray.shutdown()
        made.shutdown()


def _place(count: int, target: str = ENV_ID, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"num_envs": 2, "insecure": True, "timeout": CALL_TIMEOUT, "heartbeat_interval": 0.5}
    return place_servers(target, count, **{**options, **kwargs})


def _sync(num_envs: int) -> contextlib.closing[SyncVectorEnv]:
    """Gymnasium's reference vector env over the same envs, closed on exit."""
    return contextlib.closing(SyncVectorEnv([lambda: gymnasium.make(ENV_ID) for _ in range(num_envs)]))


def _node_ids(cluster: Cluster) -> set[str]:
    return {node.node_id for node in cluster.list_all_nodes()}


# ---------------------------------------------------------------------- placement


def test_spread_puts_each_server_on_its_own_node(cluster: Cluster) -> None:
    with _place(3, strategy="SPREAD") as group:
        assert len(set(group.nodes)) == 3 and set(group.nodes) <= _node_ids(cluster)
        node_ip = ray.util.get_node_ip_address()
        for location in group.servers:
            assert location.address.startswith(f"tcp://{location.node_ip}:") and location.node_ip == node_ip
            assert not location.restarted
        assert group.sessions() == (0, 0, 0)


def test_pack_puts_servers_on_one_node(cluster: Cluster) -> None:
    assert wait_until(lambda: ray.available_resources().get("CPU") == 3 * NODE_CPUS, timeout=30)
    with _place(2, strategy="PACK") as group:
        assert len(set(group.nodes)) == 1


def test_placement_beyond_the_cluster_times_out() -> None:
    started = time.monotonic()
    with pytest.raises(PlacementTimeout, match="was not ready within"):
        place_servers(ENV_ID, 1, resources={"no_such_resource": 1}, insecure=True, timeout=2)
    assert time.monotonic() - started < 15


def test_a_target_that_cannot_be_built_fails_placement(cluster: Cluster) -> None:
    with pytest.raises(PlacementError, match="NoSuchEnv"):
        place_servers("NoSuchEnv-v9", 1, insecure=True, timeout=CALL_TIMEOUT)


def test_serving_the_node_address_needs_auth_or_insecure() -> None:
    with pytest.raises(ServerConfigError, match="insecure=True"):
        place_servers(ENV_ID, 1)


def test_generated_keys_authenticate_the_clients(cluster: Cluster) -> None:
    with place_servers(ENV_ID, 1, num_envs=2, auth="generate", timeout=CALL_TIMEOUT) as group:
        assert group.client_auth is not None
        with group.vector_env(timeout=CALL_TIMEOUT) as envs:
            obs, _ = envs.reset(seed=0)
            assert obs.shape == (2, 4) and envs.transport == ("shm",)
        with pytest.raises(AuthenticationRequired):
            fastenv.FastRemoteEnv(group.addresses[0], connect_timeout=5)


# ---------------------------------------------------------------------- the vector env


@pytest.fixture(scope="module")
def group(cluster: Cluster) -> Iterator[Any]:
    """Three servers of two CartPoles each, spread over the three nodes (half a CPU each: room for the other tests)."""
    with _place(3, strategy="SPREAD", num_cpus=0.5) as made:
        yield made


def test_vector_env_matches_sync_vector_env(group: Any) -> None:
    """Same seeds, same actions, same values, autoreset included; server 1 forced to TCP, the others on shm."""
    with group.vector_env(transports={1: "tcp"}, timeout=CALL_TIMEOUT) as envs, _sync(6) as sync:
        assert isinstance(envs, RayVectorEnv) and envs.num_envs == 6
        assert envs.transport == ("shm", "tcp", "shm")
        assert "nonce" in envs.transport_reason[0] and "auto" in envs.transport_reason[0]
        same(envs.reset(seed=11), sync.reset(seed=11))
        sampler = sync.action_space
        sampler.seed(11)
        ended = 0
        for _ in range(400):
            actions = sampler.sample()
            expected = sync.step(actions)
            same(envs.step(actions), expected)
            ended += int(expected[2].sum() + expected[3].sum())
        assert ended >= 6  # autoreset ran on every server
        assert envs.recoveries == []


def test_env_order_follows_server_order(group: Any) -> None:
    with group.vector_env(timeout=CALL_TIMEOUT) as envs:
        assert envs.addresses == group.addresses
        assert envs.envs_per_server == (2, 2, 2)
        envs.reset(seed=3)
        assert envs.call("np_random_seed") == tuple(range(3, 9))


def test_a_step_past_its_timeout_raises_in_time(cluster: Cluster) -> None:
    with _place(1, target=SLOW, num_envs=2) as placed, placed.vector_env(timeout=CALL_TIMEOUT) as envs:
        envs.reset(seed=0)
        envs.set_attr("delay", 1.5)
        envs.step_async(envs.action_space.sample())
        started = time.monotonic()
        with pytest.raises(FastEnvTimeout):
            envs.step_wait(timeout=0.3)
        assert time.monotonic() - started < 0.3 + 5.0  # the timeout, plus asking Ray whether the server moved
        assert envs.recoveries == []


# ---------------------------------------------------------------------- shutdown and faults


def _segments(pids: set[int]) -> list[str]:
    return [path.name for path in Path("/dev/shm").glob("fastenv-*") if int(path.name.split("-")[1]) in pids]


def test_shutdown_leaves_no_process_and_no_segment(cluster: Cluster) -> None:
    with _place(2, strategy="SPREAD") as placed:
        pids = {location.pid for location in placed.servers}
        assert all(psutil.pid_exists(pid) for pid in pids)
        with placed.vector_env(timeout=CALL_TIMEOUT) as envs:
            envs.reset(seed=0)
            for _ in range(20):
                envs.step(envs.action_space.sample())
            assert envs.transport == ("shm", "shm")
    assert wait_until(lambda: not any(psutil.pid_exists(pid) for pid in pids), timeout=30)
    assert _segments(pids) == []


def test_node_removed_mid_run_recreates_its_envs(cluster: Cluster) -> None:
    """Kill the node of one server: Ray restarts it elsewhere, its envs are recreated and reported, the rest step on."""
    seed = 21
    head = cluster.head_node.node_id
    placing = _place(3, strategy="SPREAD", num_cpus=0.5)  # room on the two nodes left for the restarted server
    with placing as placed, placed.vector_env(timeout=CALL_TIMEOUT) as envs, _sync(6) as sync:
        victim_index = next(index for index, node in enumerate(placed.nodes) if node != head)
        victim_node = next(node for node in cluster.list_all_nodes() if node.node_id == placed.nodes[victim_index])
        lost = range(2 * victim_index, 2 * victim_index + 2)
        kept = [index for index in range(6) if index not in lost]
        same(envs.reset(seed=seed), sync.reset(seed=seed))
        sampler = sync.action_space
        sampler.seed(seed)
        for _ in range(30):
            actions = sampler.sample()
            same(envs.step(actions), sync.step(actions))
        cluster.remove_node(victim_node, allow_graceful=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            actions = sampler.sample()
            expected = sync.step(actions)
            started = time.monotonic()
            obs, rewards, terminations, truncations, infos = envs.step(actions)
            assert time.monotonic() - started < envs.slots[0].recover_timeout + 5
            for index in kept:  # the other envs keep stepping, value for value
                np.testing.assert_array_equal(obs[index], expected[0][index])
                assert rewards[index] == expected[1][index]
            if RECREATED_KEY in infos:
                break
        else:
            pytest.fail("the removed node's envs were never reported recreated")
        assert infos[RECREATED_KEY].tolist() == [index in lost for index in range(6)]
        with _sync(6) as fresh:  # recreated envs were reset with the last reset's seeds
            fresh_obs, _ = fresh.reset(seed=seed)
        for index in lost:
            np.testing.assert_array_equal(obs[index], fresh_obs[index])
            assert rewards[index] == 0.0 and not terminations[index] and not truncations[index]
        (recovery,) = envs.recoveries
        assert recovery.server == victim_index and recovery.envs == tuple(lost)
        assert recovery.location.restarted and recovery.location.node_id != victim_node.node_id
        assert placed.servers[victim_index] == recovery.location
        for _ in range(20):  # everything steps on
            envs.step(envs.action_space.sample())
    cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes(timeout=60)
