"""The example envs speaking torch, and fixed payloads: the same bytes as tensors instead of numpy arrays.

:class:`TorchVectorEnv` and :class:`TorchCameraEnv` take a tensor action and
return their observations as tensors (CPU, sharing the numpy arrays' memory);
:class:`FixedPayloadEnv` returns one fixed payload, as arrays or tensors, and
does nothing else. A benchmark serves the very same payloads both ways and
compares (``benchmarks/bench_torch.py``). Needs ``pip install "fastenv[torch]"``.
"""

from __future__ import annotations

from typing import Any

import torch

from fastenv.examples.camera import CameraEnv
from fastenv.examples.vector import VectorEnv


def _tensors(value: Any, device: str = "cpu") -> Any:
    if isinstance(value, dict):
        return {key: _tensors(item, device) for key, item in value.items()}
    if hasattr(value, "__array_interface__"):
        tensor = torch.from_numpy(value)
        return tensor if device == "cpu" else tensor.to(device)
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


class FixedPayloadEnv:
    """Returns the same payload every step, as numpy arrays or as tensors: no env work at all.

    With nothing computed, two of these served side by side (``kind="numpy"``
    and ``kind="torch"``) differ only in what fastenv does with arrays and
    tensors. ``payload``: ``"small"`` (4 float32) or ``"camera"`` (two
    480×640×3 uint8 frames and 20 float32). ``device``: where the tensors
    live (``"cuda:0"``: the server stages them to host memory every step).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, kind: str = "numpy", payload: str = "small", device: str = "cpu") -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        if payload == "small":
            obs: Any = rng.standard_normal(4).astype(np.float32)
        else:
            frame = (480, 640, 3)
            obs = {
                "left": rng.integers(0, 256, frame, dtype=np.uint8),
                "right": rng.integers(0, 256, frame, dtype=np.uint8),
                "proprio": rng.standard_normal(20).astype(np.float32),
            }
        if kind != "torch" and device != "cpu":
            raise ValueError(f"device={device!r} needs kind='torch'")
        self._obs = _tensors(obs, device) if kind == "torch" else obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        return self._obs, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return self._obs, 0.0, False, False, {}
