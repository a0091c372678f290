"""Train PPO for a few hundred steps with seed 0 and save the policy weights: ``python sb3_train.py KIND ADDRESS OUT``.

Run in a process of its own by ``test_sb3.py``: torch's compiler stack (triton) must not
be loaded into a process that already holds Mesa's LLVM (the MuJoCo tests' offscreen
rendering), where loading it crashes.

KIND: ``local`` (CartPole in DummyVecEnv), ``remote`` (the served CartPole in
DummyVecEnv), ``subproc`` (4 CartPoles in SubprocVecEnv) or ``remote-vec``
(4 sessions in fastenv.sb3.RemoteVecEnv).
"""

from __future__ import annotations

import sys

import gymnasium
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import fastenv
from fastenv.sb3 import RemoteVecEnv

STEPS = 256
T = 30.0


def _cartpole() -> gymnasium.Env:
    return gymnasium.make("CartPole-v1")


def main(kind: str, address: str, out: str) -> None:
    if kind == "local":
        venv = DummyVecEnv([_cartpole])
    elif kind == "remote":
        venv = DummyVecEnv([lambda: fastenv.FastRemoteEnv(address, timeout=T)])
    elif kind == "subproc":
        venv = SubprocVecEnv([_cartpole] * 4)
    else:
        venv = RemoteVecEnv(address, num_envs=4, timeout=T)
    try:
        torch.manual_seed(0)
        model = PPO("MlpPolicy", venv, n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu")
        model.learn(STEPS)
        weights = {name: tensor.detach().cpu().numpy() for name, tensor in model.policy.state_dict().items()}
    finally:
        venv.close()
    np.savez(out, **weights)


if __name__ == "__main__":
    main(*sys.argv[1:4])
