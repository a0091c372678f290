"""Tensors a shared-memory server hands its env as request arguments, reused once the env let them go.

A request's arrays are copied out of the request region (the client writes
the next request there), so the env owns what it receives. For an array that
copy is one allocation; for a tensor it is an allocation plus
``torch.from_numpy``, about half a microsecond a tensor on every step. Instead
each tensor leaf of a request layout keeps a tensor over private memory: the C
unpacker copies the request's bytes into it and hands it out. Before the next
request is taken (while the server waits for it, off the step's path),
:meth:`KeptTensors.refresh` looks at each kept tensor: one the env still holds
in any way (a reference to it, a view or a ``.numpy()`` of its memory, an
autograd graph) is left to the env and replaced by a new one, so nothing the
env keeps ever changes under it.

A kept tensor is handed out again only as it was made: one the env changed
in place in any way (its values or its shape, strides, storage, dtype,
``requires_grad``, a gradient, attributes of its own) is replaced too, so
nothing the env did to an earlier action shows in a later one.

Without torch's storage use count (``torch._C._storage_Use_Count``) nothing
is kept: every tensor is built anew.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

_getrefcount = sys.getrefcount


def _storage_use_count() -> Any:
    """torch's ``_storage_Use_Count`` (None while torch is not loaded, or if this torch lacks it)."""
    return getattr(getattr(sys.modules.get("torch"), "_C", None), "_storage_Use_Count", None)


class KeptTensors:
    """The kept request tensors of one request region's prepared layouts.

    Args:
        ops: the C packer module (its opcode constants), to find tensor leaves in programs.
    """

    def __init__(self, ops: Any) -> None:
        self._ops = ops
        self._kept: list[tuple[list, int]] = []  # (a layout's kept list, index in it) of each tensor leaf
        self._use_count: Any = None

    def attach(self, prepared: dict[int, tuple]) -> None:
        """Give each layout of ``prepared`` (``{id: (program, views, layout)}``) that has tensor leaves a kept list.

        The entry becomes ``(program, views, layout, kept)``: the C unpacker
        copies a tensor leaf of index ``i`` into ``kept[i]`` when it is set.
        Called when a layout was prepared; layouts dropped since are let go.
        """
        if self._use_count is None:
            self._use_count = _storage_use_count()
            if self._use_count is None:
                return  # no torch (no tensor leaves), or no way to tell whether the env holds a tensor
        self._kept.clear()
        for layout_id, entry in list(prepared.items()):
            if entry[0] is None:
                continue  # the pure-Python packer: no C unpacker to copy into kept tensors
            kept: list[Any] = entry[3] if len(entry) > 3 else [None] * len(entry[1])
            if len(entry) == 3:
                for index, from_array in _tensor_leaves(self._ops, entry[0]):
                    kept[index] = self._fresh(entry[1][index], from_array)
                prepared[layout_id] = (*entry, kept)
            self._kept.extend((kept, index) for index, slot in enumerate(kept) if slot is not None)

    def refresh(self) -> None:
        """Replace every kept tensor the env still holds or changed by a new one (call before taking a request)."""
        use_count = self._use_count
        for kept, index in self._kept:
            slot = kept[index]
            if _counts(slot, use_count) != slot[3:5] or _changed(slot):
                kept[index] = self._fresh(slot[1], slot[2])

    def forget(self) -> None:
        """Drop every kept tensor (the prepared layouts were dropped)."""
        self._kept.clear()

    def _fresh(self, like: np.ndarray, from_array: Any) -> tuple:
        """A new kept tensor: ``(tensor, private array, from_array, references, storage uses, version, address)``.

        References and storage uses are what :func:`_counts` reads for it
        while nothing but this tuple holds it; version and address are what
        :func:`_changed` compares.
        """
        private = np.empty_like(like)
        tensor = from_array(private)
        slot = (tensor, private, from_array)
        del tensor
        references, storage = _counts(slot, self._use_count)  # measured before anything else holds the tensor
        return (*slot, references, storage, slot[0]._version, slot[0].data_ptr())


def _tensor_leaves(ops: Any, node: Any) -> Any:
    """``(array index, from_array)`` of each TENSOR node of the C packer's program under ``node``."""
    op = node[0]
    if op == ops.TENSOR:
        yield node[4][6], node[3]
    elif op in (ops.TUPLE, ops.LIST):
        for child in node[1]:
            yield from _tensor_leaves(ops, child)
    elif op == ops.DICT:
        for child in node[2]:
            yield from _tensor_leaves(ops, child)


def _counts(slot: tuple, use_count: Any) -> tuple[int, int]:
    """The reference count of a kept tensor and the use count of its storage, read the same way every time."""
    tensor = slot[0]
    return _getrefcount(tensor), use_count(tensor.untyped_storage()._cdata)


def _changed(slot: tuple) -> bool:
    """Whether the env changed a kept tensor itself: any in-place operation (values, shape, strides, storage:
    they count a version), its data replaced, ``requires_grad``, a gradient, or attributes of its own."""
    tensor = slot[0]
    return (
        tensor._version != slot[5]
        or tensor.data_ptr() != slot[6]
        or tensor.requires_grad
        or tensor.grad is not None
        or bool(tensor.__dict__)
        or tensor._use_count() > 1
    )
