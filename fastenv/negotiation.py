"""Layout negotiation, the same on every route: each side announces the layouts of what it sends.

The first message of a kind (a call name, or its reply) whose structure has a
layout carries its definition (id and spec); later ones carry only the
layout's data. The receiver compiles and validates each announced spec like
any payload, under the same limits on every route. A structure that keeps
changing stops being tried after :data:`MAX_INFERENCES_PER_KEY` attempts; a
session holds at most :data:`MAX_LAYOUTS` per direction.
"""

from __future__ import annotations

from typing import Any

from fastenv.errors import DecodeError
from fastenv.layout import Layout, LayoutMismatch, compile_spec
from fastenv.layout_spec import infer_spec

MAX_LAYOUTS = 64  # per direction and session
MAX_INFERENCES_PER_KEY = 8  # stop trying layouts for a call whose structure keeps changing


class SentLayouts:
    """The layouts one side has announced for what it sends, by call name (``"step"``, ...)."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[int, Layout]] = {}
        self._inferences: dict[str, int] = {}
        self._next_id = 1

    def get(self, key: str) -> tuple[int, Layout] | None:
        """``(layout id, layout)`` announced for ``key``, or None."""
        return self._by_key.get(key)

    def define(self, key: str, value: Any) -> tuple[int, Any] | None:
        """A new layout for ``value`` (its id and spec, to announce), or None if it has none or we gave up."""
        tries = self._inferences.get(key, 0)
        if tries >= MAX_INFERENCES_PER_KEY or self._next_id > MAX_LAYOUTS:
            return None
        self._inferences[key] = tries + 1
        try:
            spec = infer_spec(value)
            layout = Layout(spec)
        except (LayoutMismatch, DecodeError):
            return None
        layout_id, self._next_id = self._next_id, self._next_id + 1
        self._by_key[key] = (layout_id, layout)
        return layout_id, spec

    def forget(self, key: str) -> None:
        """Drop ``key``'s layout: its definition never reached the peer (the message was refused)."""
        self._by_key.pop(key, None)


class ReceivedLayouts:
    """The layouts the peer has announced, by id, compiled and validated."""

    def __init__(self) -> None:
        self._layouts: dict[int, Layout] = {}

    def define(self, layout_id: Any, spec: Any, max_array_elements: int | None = None) -> None:
        """Compile a layout announced by the peer, validated like any payload (:class:`DecodeError` otherwise)."""
        if type(layout_id) is not int or not 0 < layout_id <= MAX_LAYOUTS:
            raise DecodeError(f"invalid layout id {layout_id!r}")
        layout = compile_spec(spec)
        if max_array_elements is not None and any(count > max_array_elements for count in layout.array_counts):
            raise DecodeError("a layout array exceeds the element limit")
        self._layouts[layout_id] = layout

    def get(self, layout_id: int) -> Layout:
        """The layout ``layout_id``; DecodeError if the peer never announced it."""
        layout = self._layouts.get(layout_id)
        if layout is None:
            raise DecodeError(f"unknown layout id {layout_id}")
        return layout
