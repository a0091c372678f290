"""Compiled layouts: the hot-path encoding for messages whose structure repeats.

A step reply has the same structure every time: the same tuple, dict keys,
array dtypes and shapes, and scalar types; only the numbers change. A
:class:`Layout` captures that structure once. Afterwards the sender checks a
value against it with a few type comparisons, packs every scalar with one
``struct`` call and copies every array straight into place; the receiver
unpacks the scalars and rebuilds the value around array views, with no pickle
and no generic tree walk.

A layout travels between peers as a *spec*: a small tree of plain data
(tuples of strings, ints and dtype strings) sent once through the general,
data-only codec. :func:`compile_spec` validates a peer's spec as strictly as
the codec validates a payload; building a value never calls anything the peer
named.

Spec nodes::

    ("none",)                       None
    ("const", value)                a str or bytes leaf that never changes
    ("scalar", kind, fmt)           kind "bool" | "int" | "float" | numpy dtype str; fmt a struct code
    ("array", dtype, shape, order)  a numpy array (its bytes live in the data area)
    ("tensor", dtype_name, shape)   a torch tensor (its bytes, C-ordered, live in the data area)
    ("tuple", [children]) / ("list", [children])
    ("dict", [keys], [children]) / ("odict", [keys], [children])
"""

from __future__ import annotations

import math
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv import native as _switch  # Layout(native=...) is a parameter name here
from fastenv import tensors
from fastenv.errors import DecodeError
from fastenv.layout_program import ProgramBuilder
from fastenv.layout_spec import NUMPY_SCALAR_CODES, PY_SCALARS, LayoutMismatch

ALIGN = 64
MAX_NODES = 4096
MAX_ARRAY_BYTES = 1 << 40  # far above any message limit; keeps every size an exact int64

# The C packer (native/fastenv_layout.c) reads and writes scalars with these struct codes;
# offsets are computed here with the same codes.
_switch.verify_constants(
    {
        "SCALAR_CODES": ("the codes of fastenv.layout_spec.NUMPY_SCALAR_CODES", "".join(NUMPY_SCALAR_CODES.values())),
        "PLAIN_CODES": (
            "the codes of fastenv.layout_spec.PY_SCALARS (bool, int, float)",
            "".join(PY_SCALARS[kind][1] for kind in (bool, int, float)),
        ),
    },
    (_switch.LAYOUT_MODULE,),
)


def _round_up(value: int) -> int:
    return (value + ALIGN - 1) // ALIGN * ALIGN


# ----------------------------------------------------------------------------- compiling


@dataclass
class _Compiled:
    extract: Callable[[Any, list, list], None]  # appends scalars and arrays, or raises LayoutMismatch
    build: Callable[[Any, Any], Any]  # (scalar iterator, array iterator) -> value


class Layout:
    """A compiled spec: how to pack values of one structure and rebuild them.

    Attributes:
        spec: the plain-data spec (what the peer receives).
        scalars: the ``struct`` packing every scalar leaf, in tree order.
        arrays: ``(dtype, shape, order, offset)`` of each array leaf within the data area.
        array_counts: the number of elements of each array leaf.
        size: bytes of the data area (scalars, then 64-byte aligned arrays).
    """

    def __init__(self, spec: Any, *, native: bool | None = None) -> None:
        self.spec = spec
        codes: list[str] = []
        arrays: list[tuple[np.dtype, tuple[int, ...], str]] = []
        counter = [0]
        self._compiled = _compile(spec, codes, arrays, counter)
        self.scalars = struct.Struct("<" + "".join(codes))
        offset = _round_up(self.scalars.size)
        self.arrays: list[tuple[np.dtype, tuple[int, ...], str, int]] = []
        self.array_counts: list[int] = []  # elements of each array
        for dtype, shape, order in arrays:
            count = math.prod(shape)
            self.arrays.append((dtype, shape, order, offset))
            self.array_counts.append(count)
            offset += _round_up(count * dtype.itemsize)
        self.size = offset
        use_native = _native_layout is not None if native is None else native
        if use_native and _native_layout is None:
            raise _switch.NativeBackendError(
                f"the C layout packer is not in use: {_switch.BACKEND.reason}"
            )
        self._program: tuple | None = None
        self._view_forms: list[tuple] | None = None  # (shape, strides, dtype) of each view :meth:`views` makes
        if use_native:
            try:
                self._program = ProgramBuilder(_native_layout, codes, self.arrays, self.array_counts).node(spec)
            except (ValueError, TypeError, BufferError):  # a dtype without a buffer format (datetime64)
                if native:
                    raise

    @property
    def native(self) -> bool:
        """Whether values are packed and rebuilt by the C extension."""
        return self._program is not None

    @property
    def program(self) -> tuple | None:
        """The node tree the C packer walks (None: the pure-Python packer is in use)."""
        return self._program

    def extract(self, value: Any) -> tuple[list, list]:
        """Scalars and arrays of ``value``; :class:`LayoutMismatch` if its structure differs."""
        scalars: list = []
        arrays: list = []
        self._compiled.extract(value, scalars, arrays)
        return scalars, arrays

    def pack_into(self, buffer: Any, offset: int, value: Any, array_views: list[np.ndarray]) -> None:
        """Write ``value`` at ``offset``; ``array_views`` are this layout's arrays at that offset."""
        if self._program is not None:
            if not _native_layout.pack(self._program, buffer, offset, value, array_views, copy_strided):
                raise LayoutMismatch
            return
        scalars, arrays = self.extract(value)
        try:
            self.scalars.pack_into(buffer, offset, *scalars)
        except struct.error as exc:  # e.g. a Python int beyond int64
            raise LayoutMismatch(str(exc)) from exc
        for view, array in zip(array_views, arrays):
            np.copyto(view, array, casting="no")

    def views(self, buffer: Any, offset: int) -> list[np.ndarray]:
        """Numpy views of this layout's arrays in ``buffer`` at ``offset`` (cache them per slot).

        Each view holds a buffer export of ``buffer`` (through one ``np.frombuffer``
        base), so the memory behind it cannot be unmapped while the view lives:
        ``np.ndarray(buffer=memoryview)`` alone keeps only the mapping object and
        would let ``mmap.close()`` pull the memory out from under it.
        """
        whole = np.frombuffer(buffer, dtype=np.uint8)
        views = [
            np.ndarray(shape, dtype=dtype, buffer=whole, offset=offset + array_offset, order=order)
            for dtype, shape, order, array_offset in self.arrays
        ]
        if self._view_forms is None:
            self._view_forms = [(view.shape, view.strides, view.dtype) for view in views]
        return views

    def views_intact(self, views: list[np.ndarray]) -> bool:
        """Whether ``views`` (made by :meth:`views`) still have the shape, strides, dtype and writability they were made with.

        A caller can change these of an array in place (``obs.shape = ...``,
        ``obs.flags.writeable = False``); a view changed so is not handed out again.
        """
        for view, (shape, strides, dtype) in zip(views, self._view_forms or ()):
            if view.shape != shape or view.strides != strides or (view.dtype is not dtype and view.dtype != dtype):
                return False
            if not view.flags.writeable and view.base.flags.writeable:
                return False
        return True

    def extract_into(self, buffer: Any, value: Any) -> list[Any]:
        """Write ``value``'s scalars at the start of ``buffer`` (``scalars.size`` bytes) and return its arrays.

        The arrays are checked against the layout but not copied (the TCP
        stream sends them from their own memory); :class:`LayoutMismatch` if
        the structure differs.
        """
        if self._program is not None:
            arrays: list[Any] = []
            if not _native_layout.extract(self._program, buffer, 0, value, arrays):
                raise LayoutMismatch
            return arrays
        scalars, arrays = self.extract(value)
        try:
            self.scalars.pack_into(buffer, 0, *scalars)
        except struct.error as exc:
            raise LayoutMismatch(str(exc)) from exc
        return arrays

    def unpack(self, buffer: Any, offset: int, array_views: list[np.ndarray], copy: bool, reused: bool = False) -> Any:
        """Rebuild a value packed at ``offset`` (arrays are ``array_views``, or copies of them).

        ``reused``: ``array_views`` (from :meth:`views`) are handed out on every
        unpack, so each is checked first; :data:`ChangedView` if a caller changed
        one in place.
        """
        if self._program is not None:
            return _native_layout.unpack(self._program, buffer, offset, array_views, copy, None, reused)
        if reused and not copy and not self.views_intact(array_views):
            raise ChangedView("a view handed out before was changed in place: make new views")
        arrays = [view.copy(order="K") for view in array_views] if copy else array_views
        scalars = self.scalars.unpack_from(buffer, offset)
        return self._compiled.build(iter(scalars), iter(arrays))


def copy_strided(view: np.ndarray, array: np.ndarray) -> None:
    """The C packer's way to copy an array that is not contiguous in the layout's order."""
    np.copyto(view, array, casting="no")


#: The C packer (:mod:`fastenv._layout`) when the native backend is selected, else None: new
#: :class:`Layout` objects pack in C when it is set.
_native_layout: Any = None
#: ``put(program, buffer, offset, value, views, copy_strided, kind, layout id, seq, bell=-1) -> bool``:
#: the C packer writing a shared-memory FAST envelope (data + header, then the ring) in one call
#: (native/fastenv_fastpath.c); None when :mod:`fastenv._layout` cannot be used. It is set whichever
#: backend is selected: only a layout compiled for the C packer has a program to give it.
native_put: Callable[..., bool] | None = None
#: ``take(buffer, bell, seen, spin_us, timeout, region, layouts, copy, consumed)``: wait for a
#: doorbell, then unpack the FAST envelope it announced in C (native/fastenv_fastpath.c); None when
#: :mod:`fastenv._layout` cannot be used. Callers use it with native doorbells only.
native_take: Callable[..., Any] | None = None
#: ``pack(program, buffer, offset, value, views, copy_strided) -> bool``: the C packer's
#: :meth:`Layout.pack_into` without the method call, for callers on a hot path that hold
#: :attr:`Layout.program` (False: the value does not fit the layout); None without the C packer.
native_pack: Callable[..., bool] | None = None


class _UnpackerChangedView(Exception):
    """The pure-Python unpacker met a view it handed out before changed in place: make new views."""


_compiled_layout = _switch.part(_switch.LAYOUT_MODULE).module
#: What :meth:`Layout.unpack` (and ``native_take``) raise, unpacking into views, when a view they handed
#: out before was changed in place by a caller (its shape, strides, dtype or writability): the caller
#: makes new views (:meth:`Layout.views`) and unpacks again. The C unpacker's class when it is built.
ChangedView: type[Exception] = _UnpackerChangedView if _compiled_layout is None else _compiled_layout.ChangedView


def _apply(selected: _switch.Backend) -> None:
    """Rebind the C packer and fast path to ``selected`` (a :func:`fastenv.native.bind` listener)."""
    global _native_layout, native_put, native_take, native_pack
    compiled = _switch.part(_switch.LAYOUT_MODULE).module
    _native_layout = selected.layout
    native_pack = None if _native_layout is None else _native_layout.pack
    native_put = None if compiled is None else compiled.put
    native_take = None if compiled is None else compiled.take


_switch.bind(_apply)


def _compile(spec: Any, codes: list[str], arrays: list, counter: list[int]) -> _Compiled:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise DecodeError("layout has too many nodes")
    if not isinstance(spec, tuple) or not spec or not isinstance(spec[0], str):
        raise DecodeError(f"invalid layout node {spec!r}")
    tag = spec[0]
    if tag == "none" and len(spec) == 1:
        return _compile_none()
    if tag == "const" and len(spec) == 2 and type(spec[1]) in (str, bytes):
        return _compile_const(spec[1])
    if tag == "scalar" and len(spec) == 3:
        return _compile_scalar(spec[1], spec[2], codes)
    if tag == "array" and len(spec) == 4:
        return _compile_array(spec[1], spec[2], spec[3], arrays)
    if tag == "tensor" and len(spec) == 3:
        return _compile_tensor(spec[1], spec[2], arrays)
    if tag in ("tuple", "list") and len(spec) == 2 and isinstance(spec[1], list):
        children = [_compile(child, codes, arrays, counter) for child in spec[1]]
        return _compile_sequence(tuple if tag == "tuple" else list, children)
    if tag in ("dict", "odict") and len(spec) == 3 and isinstance(spec[1], list) and isinstance(spec[2], list):
        keys = spec[1]
        if len(keys) != len(spec[2]) or not all(type(key) in (str, int) for key in keys) or len(set(keys)) != len(keys):
            raise DecodeError("invalid dict node in layout")
        children = [_compile(child, codes, arrays, counter) for child in spec[2]]
        return _compile_mapping(dict if tag == "dict" else OrderedDict, keys, children)
    raise DecodeError(f"invalid layout node {spec!r}")


def _compile_none() -> _Compiled:
    def extract(value: Any, scalars: list, arrays: list) -> None:
        if value is not None:
            raise LayoutMismatch

    return _Compiled(extract, lambda s, a: None)


def _compile_const(constant: Any) -> _Compiled:
    kind = type(constant)

    def extract(value: Any, scalars: list, arrays: list) -> None:
        if type(value) is not kind or value != constant:
            raise LayoutMismatch

    return _Compiled(extract, lambda s, a: constant)


def _compile_scalar(kind: Any, code: Any, codes: list[str]) -> _Compiled:
    if kind in ("bool", "int", "float"):
        expected = {"bool": bool, "int": int, "float": float}[kind]
        if code != PY_SCALARS[expected][1]:
            raise DecodeError("invalid scalar code in layout")
        convert: Callable[[Any], Any] = expected
    else:
        try:
            dtype = np.dtype(kind)
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"invalid scalar dtype {kind!r} in layout") from exc
        if NUMPY_SCALAR_CODES.get(dtype) != code or dtype.str != kind:
            raise DecodeError("invalid numpy scalar in layout")
        expected = convert = dtype.type
    codes.append(code)

    def extract(value: Any, scalars: list, arrays: list) -> None:
        if type(value) is not expected:
            raise LayoutMismatch
        scalars.append(value)

    return _Compiled(extract, lambda s, a: convert(next(s)))


def _compile_array(dtype_str: Any, shape: Any, order: Any, arrays: list) -> _Compiled:
    try:
        dtype = np.dtype(dtype_str) if isinstance(dtype_str, str) else None
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.hasobject or dtype.fields is not None or dtype.str != dtype_str:
        raise DecodeError(f"invalid array dtype {dtype_str!r} in layout")
    if order not in ("C", "F"):
        raise DecodeError("invalid array order in layout")
    _check_shape(shape, dtype)
    arrays.append((dtype, shape, order))

    def extract(value: Any, scalars: list, collected: list) -> None:
        if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
            raise LayoutMismatch
        collected.append(value)

    return _Compiled(extract, lambda s, a: next(a))


def _compile_tensor(dtype_name: Any, shape: Any, arrays: list) -> _Compiled:
    entry = tensors.dtype_named(dtype_name)
    _check_shape(shape, entry.storage)
    arrays.append((entry.storage, shape, "C"))
    tensor_type = sys.modules["torch"].Tensor
    to_array = tensors.layout_converter(entry)
    from_array = tensors.layout_builder(entry)

    def extract(value: Any, scalars: list, collected: list) -> None:
        if type(value) is not tensor_type or value.shape != shape:
            raise LayoutMismatch
        array = to_array(value)
        if array is None:
            raise LayoutMismatch
        collected.append(array)

    return _Compiled(extract, lambda s, a: from_array(next(a)))


def _check_shape(shape: Any, dtype: np.dtype) -> None:
    if not isinstance(shape, tuple) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise DecodeError("invalid array shape in layout")
    if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise DecodeError(f"layout array of shape {shape} is larger than any message")


def _compile_sequence(kind: type, children: list[_Compiled]) -> _Compiled:
    count = len(children)
    extractors = [child.extract for child in children]
    builders = [child.build for child in children]

    def extract(value: Any, scalars: list, arrays: list) -> None:
        if type(value) is not kind or len(value) != count:
            raise LayoutMismatch
        for child, item in zip(extractors, value):
            child(item, scalars, arrays)

    if kind is tuple:
        return _Compiled(extract, lambda s, a: tuple([build(s, a) for build in builders]))
    return _Compiled(extract, lambda s, a: [build(s, a) for build in builders])


def _compile_mapping(kind: type, keys: list, children: list[_Compiled]) -> _Compiled:
    key_tuple = tuple(keys)
    pairs = list(zip(keys, [child.extract for child in children]))
    builders = list(zip(keys, [child.build for child in children]))

    def extract(value: Any, scalars: list, arrays: list) -> None:
        if type(value) is not kind or tuple(value) != key_tuple:
            raise LayoutMismatch
        for key, child in pairs:
            child(value[key], scalars, arrays)

    return _Compiled(extract, lambda s, a: kind([(key, build(s, a)) for key, build in builders]))


def compile_spec(spec: Any) -> Layout:
    """Compile a peer's spec, refusing anything malformed with :class:`DecodeError`."""
    return Layout(spec)
