"""Train PPO on CartPole with RLlib (new API stack), the envs served by fastenv servers on Ray.

    python examples/ray_rllib_ppo.py                    # a local Ray; --address auto joins a cluster
    python examples/ray_rllib_ppo.py --iterations 2 --quick

Two servers of two CartPoles each are placed as Ray actors (spread over the
nodes, keys generated for them); RLlib's env runner asks the fastenv creator
for its batch of four envs and gets one :class:`fastenv.ray.RayVectorEnv`
over both servers (shared memory on the same node, TCP across). Each
iteration prints the mean episode return and the env steps sampled.
"""

from __future__ import annotations

import argparse
import time

import ray
from ray.rllib.algorithms.ppo import PPOConfig

from fastenv.ray import place_servers
from fastenv.ray.rllib import env_config, register_env

SERVERS = 2
ENVS_PER_SERVER = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: start a local one)")
    parser.add_argument("--iterations", type=int, default=10, help="training iterations (default: 10)")
    parser.add_argument("--quick", action="store_true", help="tiny batches (for CI)")
    args = parser.parse_args()

    started = time.monotonic()
    if args.address is None:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    else:
        ray.init(address=args.address, log_to_driver=False)
    batch = 256 if args.quick else 2000
    try:
        with place_servers(
            "CartPole-v1", SERVERS, num_envs=ENVS_PER_SERVER, num_cpus=0.25, auth="generate", timeout=60
        ) as group:
            print(f"servers: {', '.join(f'{s.address} (node {s.node_id[:8]})' for s in group.servers)}")
            config = (
                PPOConfig()
                .environment(register_env(), env_config=env_config(group))
                .env_runners(
                    num_env_runners=1,
                    num_cpus_per_env_runner=0.5,
                    num_envs_per_env_runner=SERVERS * ENVS_PER_SERVER,
                    gym_env_vectorize_mode="vector_entry_point",
                    rollout_fragment_length="auto",
                )
                .training(
                    train_batch_size_per_learner=batch,
                    minibatch_size=min(batch, 128),
                    num_epochs=2 if args.quick else 6,
                    lr=3e-4,
                )
            )
            algo = config.build_algo()
            try:
                for iteration in range(args.iterations):
                    result = algo.train()
                    runners = result["env_runners"]
                    print(
                        f"iteration {iteration + 1}: episode return mean {runners['episode_return_mean']:.1f}, "
                        f"env steps {runners['num_env_steps_sampled_lifetime']}"
                    )
            finally:
                algo.stop()
    finally:
        ray.shutdown()
    print(f"done in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
