"""The small and camera example envs speaking torch: the same bytes as tensors instead of numpy arrays.

:class:`TorchVectorEnv` and :class:`TorchCameraEnv` take a tensor action and
return their observations as tensors (CPU, sharing the numpy arrays' memory),
so a benchmark can serve the very same payloads both ways and compare
(``benchmarks/bench_torch.py``). Needs ``pip install "fastenv[torch]"``.
"""

from __future__ import annotations

from typing import Any

import torch

from fastenv.examples.camera import CameraEnv
from fastenv.examples.vector import VectorEnv


def _tensors(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _tensors(item) for key, item in value.items()}
    if hasattr(value, "__array_interface__"):
        return torch.from_numpy(value)
    return value


class _TorchInOut:
    """Tensor action in, tensor observations out, around the numpy env it is mixed into."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = super().reset(seed=seed, options=options)  # type: ignore[misc]
        return _tensors(obs), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = super().step(action.numpy())  # type: ignore[misc]
        return _tensors(obs), reward, terminated, truncated, info


class TorchVectorEnv(_TorchInOut, VectorEnv):
    """:class:`~fastenv.examples.VectorEnv` with a tensor action and a tensor observation."""


class TorchCameraEnv(_TorchInOut, CameraEnv):
    """:class:`~fastenv.examples.CameraEnv` (frames it allocates) with tensors in and out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "reply_arrays": False})
