"""Batched envs for tests/test_batched_vector.py: Isaac Lab-shaped envs that break the adapter's expectations."""

from __future__ import annotations

from typing import Any

from fastenv.examples.isaac_shape import IsaacShapeEnv


class UndeclaredAutoreset(IsaacShapeEnv):
    """:class:`~fastenv.examples.isaac_shape.IsaacShapeEnv` whose metadata does not say how it autoresets
    (as Isaac Lab's own envs: their metadata has no ``autoreset_mode``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"backend": "numpy", **kwargs})
        del self.metadata["autoreset_mode"]


class BadNumEnvs(IsaacShapeEnv):
    """A batched-looking env whose ``num_envs`` is not an integer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"backend": "numpy", **kwargs})
        self.num_envs = "many"  # type: ignore[assignment]
