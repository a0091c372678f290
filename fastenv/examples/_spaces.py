"""Optional Gymnasium spaces for the example envs (``None`` without Gymnasium)."""

from __future__ import annotations

from typing import Any

try:  # Gymnasium is optional for the examples.
    from gymnasium import spaces as gym_spaces
except ImportError:  # pragma: no cover - exercised only without gymnasium
    gym_spaces = None


def box(low: float, high: float, shape: tuple[int, ...], dtype: Any) -> Any:
    """A ``gymnasium.spaces.Box`` or ``None`` when Gymnasium is not installed."""
    return None if gym_spaces is None else gym_spaces.Box(low, high, shape, dtype)


def dict_space(entries: dict[str, Any]) -> Any:
    """A ``gymnasium.spaces.Dict`` or ``None`` when Gymnasium (or an entry) is missing."""
    if gym_spaces is None or any(v is None for v in entries.values()):
        return None
    return gym_spaces.Dict(entries)


def tuple_space(entries: tuple[Any, ...]) -> Any:
    """A ``gymnasium.spaces.Tuple`` or ``None`` when Gymnasium (or an entry) is missing."""
    if gym_spaces is None or any(v is None for v in entries):
        return None
    return gym_spaces.Tuple(entries)


def discrete(n: int) -> Any:
    """A ``gymnasium.spaces.Discrete`` or ``None`` when Gymnasium is not installed."""
    return None if gym_spaces is None else gym_spaces.Discrete(n)
