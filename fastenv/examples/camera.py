"""A camera-like environment: two RGB frames and a proprio vector per step."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastenv.examples import _spaces
from fastenv.loans import reply_array


class CameraEnv:
    """Returns ``{"left": uint8[H,W,3], "right": uint8[H,W,3], "proprio": float32[P]}``.

    Frames are new arrays every step (as a renderer would produce them),
    derived from a seeded noise texture so that trajectories are reproducible.
    Defaults match a 480×640 stereo camera plus 20 floats (about 1.8 MB/step).

    With ``reply_arrays`` (the default) the frames are rendered into arrays
    from :func:`fastenv.reply_array`: served over shared memory, that is the
    reply slot itself, so the frames reach the client without a copy; anywhere
    else it is ``np.empty``. ``reply_arrays=False`` allocates them with
    ``texture + shift`` instead (the same values), so that every frame is
    copied into the reply: the ``camera-alloc`` benchmark payload.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        height: int = 480,
        width: int = 640,
        proprio_dim: int = 20,
        max_steps: int = 500,
        render_mode: str | None = None,
        reply_arrays: bool = True,
    ) -> None:
        self.height, self.width, self.proprio_dim = int(height), int(width), int(proprio_dim)
        self.reply_arrays = bool(reply_arrays)
        self.max_steps = int(max_steps)
        self.render_mode = render_mode
        image = _spaces.box(0, 255, (self.height, self.width, 3), np.uint8)
        self.observation_space = _spaces.dict_space(
            {
                "left": image,
                "right": image,
                "proprio": _spaces.box(-np.inf, np.inf, (self.proprio_dim,), np.float32),
            }
        )
        self.action_space = _spaces.box(-1.0, 1.0, (self.proprio_dim,), np.float32)
        self._texture = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        self._proprio = np.zeros(self.proprio_dim, dtype=np.float32)
        self._steps = 0

    def _observe(self) -> dict[str, np.ndarray]:
        shift = np.uint8(self._steps % 256)
        return {
            "left": self._frame(self._texture, shift),
            "right": self._frame(self._texture[::-1], shift),
            "proprio": self._proprio.copy(),
        }

    def _frame(self, texture: np.ndarray, shift: np.uint8) -> np.ndarray:
        """``texture + shift`` (modulo 256), rendered into a reply array when asked to."""
        if not self.reply_arrays:
            return texture + shift
        frame = reply_array(texture.shape, np.uint8)
        np.add(texture, shift, out=frame)
        return frame

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode; ``seed`` fixes the texture and the initial proprio state."""
        rng = np.random.default_rng(seed)
        self._texture = rng.integers(0, 256, (self.height, self.width, 3), dtype=np.uint8)
        self._proprio = rng.standard_normal(self.proprio_dim).astype(np.float32)
        self._steps = 0
        return self._observe(), {"frame": 0}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        """Advance the proprio state by ``action`` and render new frames."""
        self._proprio = (self._proprio + 0.01 * np.asarray(action, dtype=np.float32)).astype(np.float32)
        self._steps += 1
        reward = float(-np.abs(self._proprio).mean())
        return self._observe(), reward, False, self._steps >= self.max_steps, {"frame": self._steps}

    def render(self) -> np.ndarray | None:
        """The left frame, when ``render_mode == "rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        return self._observe()["left"]

    def get_state(self) -> dict[str, Any]:
        """Proprio vector and step counter (the texture is fixed by the seed)."""
        return {"proprio": self._proprio.copy(), "steps": self._steps}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`get_state`."""
        self._proprio = np.asarray(state["proprio"], dtype=np.float32).copy()
        self._steps = int(state["steps"])

    def close(self) -> None:
        """Nothing to release."""
