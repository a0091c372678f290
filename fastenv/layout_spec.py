"""The spec of a value: the structure a compiled layout (:mod:`fastenv.layout`) is made for.

:func:`infer_spec` reads a value's structure (containers, dict keys, scalar
types, array dtypes and shapes, tensor dtypes and shapes) as a spec, the
plain-data tree :mod:`fastenv.layout` documents, or raises
:class:`LayoutMismatch` for a value that has no fixed structure. The scalar
tables here are the struct codes layouts carry scalars with.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

import numpy as np

from fastenv import tensors

# struct codes for numpy scalar dtypes that a layout may carry
NUMPY_SCALAR_CODES = {
    np.dtype(np.bool_): "?",
    np.dtype(np.int8): "b", np.dtype(np.uint8): "B",
    np.dtype(np.int16): "h", np.dtype(np.uint16): "H",
    np.dtype(np.int32): "i", np.dtype(np.uint32): "I",
    np.dtype(np.int64): "q", np.dtype(np.uint64): "Q",
    np.dtype(np.float16): "e", np.dtype(np.float32): "f", np.dtype(np.float64): "d",
}
NUMPY_SCALAR_TYPES = {dtype.type: (dtype, code) for dtype, code in NUMPY_SCALAR_CODES.items()}
PY_SCALARS = {bool: ("bool", "?"), int: ("int", "q"), float: ("float", "d")}


class LayoutMismatch(Exception):
    """The value does not have the layout's structure (the caller falls back to the codec)."""


def infer_spec(value: Any, depth: int = 32) -> Any:
    """The spec of ``value``, or raise :class:`LayoutMismatch` if it has no fixed layout."""
    if depth <= 0:
        raise LayoutMismatch("too deep")
    kind = type(value)
    if value is None:
        return ("none",)
    if kind in PY_SCALARS:
        return ("scalar", *PY_SCALARS[kind])
    if kind in NUMPY_SCALAR_TYPES:
        dtype, code = NUMPY_SCALAR_TYPES[kind]
        return ("scalar", dtype.str, code)
    if kind is str or kind is bytes:
        return ("const", value)
    if kind is np.ndarray:
        if value.dtype.hasobject or value.dtype.fields is not None:
            raise LayoutMismatch("unsupported array dtype")
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        return ("array", value.dtype.str, tuple(value.shape), order)
    if kind is tuple or kind is list:
        return ("tuple" if kind is tuple else "list", [infer_spec(item, depth - 1) for item in value])
    if tensors.is_tensor(value) and kind is sys.modules["torch"].Tensor:  # not a subclass (the codec carries those)
        try:
            entry = tensors.wire_dtype(value.dtype)
        except TypeError as exc:  # a dtype no layout carries
            raise LayoutMismatch(str(exc)) from exc
        return ("tensor", entry.name, tuple(value.shape))
    if kind is dict or kind is OrderedDict:
        keys = list(value)
        if not all(type(key) in (str, int) for key in keys):
            raise LayoutMismatch("dict keys must be str or int")
        children = [infer_spec(value[key], depth - 1) for key in keys]
        return ("dict" if kind is dict else "odict", keys, children)
    raise LayoutMismatch(f"{kind.__name__} has no fixed layout")
