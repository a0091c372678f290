"""The program the C layout packer walks, built from a validated layout spec.

:class:`~fastenv.layout.Layout` compiles a spec for the pure-Python packer
and, when the C packer is in use, hands the same spec to
:class:`ProgramBuilder`: every node becomes a tuple of an opcode and what the
C code needs (offsets, types, array formats, for a tensor its converters);
``native/fastenv_layout.c`` documents the node shapes.
"""

from __future__ import annotations

import struct
import sys
from collections import OrderedDict
from typing import Any

import numpy as np

from fastenv import tensors

class ProgramBuilder:
    """Turns a validated spec into the node tree the C packer walks (see native/fastenv_layout.c).

    Args:
        ops: the C packer module (its opcode constants).
        codes: the struct code of each scalar leaf, in tree order.
        arrays: ``(dtype, shape, order, offset)`` of each array leaf (tensors' bytes included).
        counts: the number of elements of each array leaf.
    """

    def __init__(
        self,
        ops: Any,
        codes: list[str],
        arrays: list[tuple[np.dtype, tuple[int, ...], str, int]],
        counts: list[int],
    ) -> None:
        self._ops = ops
        self._scalar_offsets = [struct.calcsize("<" + "".join(codes[:i])) for i in range(len(codes))]
        self._arrays = arrays
        self._counts = counts
        self._scalar = 0
        self._array = 0

    def node(self, spec: Any) -> tuple:
        """The program node of ``spec`` (called once, on the root)."""
        ops = self._ops
        tag = spec[0]
        if tag == "none":
            return (ops.NONE,)
        if tag == "const":
            return (ops.CONST, spec[1])
        if tag == "scalar":
            offset = self._scalar_offsets[self._scalar]
            self._scalar += 1
            kind = spec[1]
            if kind in _PLAIN_OPS:
                return (getattr(ops, _PLAIN_OPS[kind]), offset)
            return (ops.NPSCALAR, offset, np.dtype(kind).type, ord(spec[2]))
        if tag == "array":
            return self._array_node()
        if tag == "tensor":
            entry = tensors.dtype_named(spec[1])
            to_array, from_array = tensors.layout_converter(entry), tensors.layout_writable_builder(entry)
            to_address = tensors.layout_address(entry, tuple(spec[2]))
            torch_tensor = sys.modules["torch"].Tensor
            checked = None if entry.dtype.is_complex else entry.dtype  # the C packer's own checks (no lazy conj)
            node = (ops.TENSOR, torch_tensor, to_array, from_array, self._array_node(), to_address)
            return (*node, checked, tuple(spec[2]))
        if tag in ("tuple", "list"):
            children = tuple(self.node(child) for child in spec[1])
            return (ops.TUPLE if tag == "tuple" else ops.LIST, children)
        keys = tuple(spec[1])
        children = tuple(self.node(child) for child in spec[2])
        return (ops.DICT, keys, children, dict if tag == "dict" else OrderedDict)

    def _array_node(self) -> tuple:
        dtype, shape, order, offset = self._arrays[self._array]
        index = self._array
        self._array += 1
        nbytes = self._counts[index] * dtype.itemsize
        format_ = memoryview(np.empty((0,), dtype)).format.encode()
        return (self._ops.ARRAY, offset, np.ndarray, format_, tuple(shape), nbytes, index, order == "F")


_PLAIN_OPS = {"bool": "BOOL", "int": "INT", "float": "FLOAT"}
