"""Value <-> (skeleton, buffers): how fastenv moves Python values without pickling them whole.

:func:`encode` turns a value into a small *skeleton* (bytes) plus a list of raw
array buffers; :func:`decode` turns them back. The data planes (ZeroMQ
frames, the shared-memory arena, the chunked TCP stream) move the buffers
without pickling them; only the skeleton is serialised. Calls whose structure
repeats skip even that on shared memory (:mod:`fastenv.layout`).

The skeleton is a tree of plain values serialised with pickle protocol 5, and
read back only after a scan has checked that it holds nothing but the opcodes
such a tree is made of (lists, tuples, None, bool, int, float, str, bytes:
no global, no call, no indexed memo write), by an unpickler that also
**refuses every global**. Nothing a peer sends can name a class or a
function, so nothing it sends can run code; the decoder's other bounds
(:class:`Limits`, and a budget that stops a tree from expanding beyond the
bytes it came in) keep a small payload from costing much memory or time. Everything richer is spelled as a tagged tuple in that tree:

=============  ==================================================
value          skeleton node
=============  ==================================================
list           a list of nodes (lists are never tags)
tuple          ``(TUPLE, [nodes])``
dict           ``(DICT, [k0, v0, k1, v1, ...])`` (keys are nodes)
OrderedDict    ``(ODICT, [...])``
set/frozenset  ``(SET, [nodes])`` / ``(FROZENSET, [nodes])``
complex        ``(COMPLEX, real, imag)``
numpy array    ``(ARRAY, buffer_index, dtype, shape, order)``
numpy scalar   ``(SCALAR, dtype, raw_bytes)``
torch tensor   ``(TENSOR, buffer_index, dtype_name, shape)``
registered     ``(EXT, type_name, node)``
=============  ==================================================

Numpy arrays of every numeric, bool, datetime, timedelta, fixed-width string
and structured dtype are supported (any shape; non-contiguous arrays are sent
as a C-ordered copy, Fortran-ordered arrays keep their order). Object arrays
are refused. torch tensors of every dtype travel as tensors (:mod:`fastenv.tensors`:
C-ordered, staged to host memory when they live on a device). Other types are
sent through :func:`register_type`, or :func:`register_dataclass` for a
dataclass, called with the same name on both sides (Gymnasium spaces and
``EnvSpec`` are registered by :mod:`fastenv.gym_types`).
"""

from __future__ import annotations

import dataclasses
import pickle
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv import tensors
from fastenv.errors import (
    DecodeError,
    EncodeError,
    FastEnvError,
    FrameTooLarge,
    NestingTooDeep,
)
from fastenv.skeleton import load_skeleton
from fastenv.staging import HostCopies

# Skeleton tags. Part of the wire format: never renumber.
TUPLE, DICT, ODICT, SET, FROZENSET, COMPLEX, ARRAY, SCALAR, EXT, TENSOR = range(1, 11)

DEFAULT_MAX_DEPTH = 64
MAX_DIMS = 64  # numpy's own limit on array dimensions
_DTYPE_CACHE_KEY = 64  # dtype strings longer than this are parsed every time, never cached
_ATOMS = (type(None), bool, int, float, str, bytes)

Buffer = Any  # anything exposing the buffer protocol: bytes, memoryview, zmq.Frame, mmap


@dataclass(frozen=True)
class Limits:
    """Bounds the decoder enforces on what a peer sends.

    A breach raises a :class:`~fastenv.errors.LimitExceeded` subclass:
    :class:`~fastenv.errors.NestingTooDeep` for ``max_depth``,
    :class:`~fastenv.errors.FrameTooLarge` for the others.

    Attributes:
        max_depth: deepest container nesting accepted.
        max_skeleton_bytes: largest skeleton accepted.
        max_array_bytes: largest single array accepted.
        max_array_elements: most elements in a single array (bounds arrays of
            zero-sized items too, which take no bytes).
    """

    max_depth: int = DEFAULT_MAX_DEPTH
    max_skeleton_bytes: int = 16 * 1024 * 1024
    max_array_bytes: int = 1 << 31
    max_array_elements: int = 1 << 31


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class _Registered:
    name: str
    cls: type
    to_data: Callable[[Any], Any]
    from_data: Callable[[Any], Any]


_BY_TYPE: dict[type, _Registered] = {}
_BY_NAME: dict[str, _Registered] = {}


def register_type(
    cls: type,
    name: str,
    to_data: Callable[[Any], Any],
    from_data: Callable[[Any], Any],
) -> None:
    """Teach the codec to carry instances of ``cls``.

    ``to_data(obj)`` must return a value the codec already supports (plain
    containers, scalars, arrays, other registered types); ``from_data(data)``
    rebuilds the object. ``name`` is the wire identifier: register the same
    name on client and server. Only exact instances of ``cls`` match
    (subclasses need their own registration). Decoding calls only the
    ``from_data`` you registered, never anything named by the peer.
    """
    if not name or not isinstance(name, str):
        raise ValueError("register_type needs a non-empty string name")
    entry = _Registered(name, cls, to_data, from_data)
    _BY_TYPE[cls] = entry
    _BY_NAME[name] = entry


def register_dataclass(cls: type, name: str | None = None) -> type:
    """Teach the codec to carry instances of the dataclass ``cls``, fields and all.

    Call it once on each side (client and server) with the same ``name``
    (default: the class's module and qualified name). The fields are read
    from the class; their values may be anything the codec carries
    (tensors, arrays, other registered dataclasses, containers). A received
    instance is rebuilt without calling ``__init__`` or ``__post_init__``,
    exactly as it was sent. Returns ``cls``, so it works as a decorator.
    """
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"register_dataclass needs a dataclass type, got {cls!r}")
    fields = tuple(field.name for field in dataclasses.fields(cls))
    wire_name = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"

    def to_data(obj: Any) -> list:
        return [getattr(obj, field) for field in fields]

    def from_data(data: Any) -> Any:
        if type(data) is not list or len(data) != len(fields):
            raise DecodeError(f"{wire_name} expects {len(fields)} field values")
        obj = object.__new__(cls)
        for field, value in zip(fields, data):
            object.__setattr__(obj, field, value)
        return obj

    register_type(cls, wire_name, to_data, from_data)
    return cls


def registered_types() -> list[str]:
    """Wire names of all registered types."""
    return sorted(_BY_NAME)


# --------------------------------------------------------------------------- encode


def _array_node(array: np.ndarray, buffers: list[Buffer]) -> tuple:
    dtype = array.dtype
    if dtype.hasobject:
        raise EncodeError(
            f"cannot send a numpy array of dtype {dtype}: object arrays may hold "
            "arbitrary Python objects; convert to a plain dtype or a list"
        )
    if array.flags.c_contiguous:
        order = "C"
    elif array.flags.f_contiguous:
        order = "F"
    else:
        array = np.ascontiguousarray(array)
        order = "C"
    # A flat uint8 view exports a plain buffer for every dtype (datetime included).
    raw = array.reshape(-1, order="A").view(np.uint8) if array.size else np.empty(0, np.uint8)
    buffers.append(raw)
    return (ARRAY, len(buffers) - 1, _dtype_spec(dtype), array.shape, order)


def _dtype_spec(dtype: np.dtype) -> Any:
    return dtype.descr if dtype.fields is not None else dtype.str


def _encode(value: Any, buffers: list[Buffer], depth: int, staging: HostCopies | None = None) -> Any:
    kind = type(value)
    if kind in _ATOMS:
        return value
    if depth <= 0:
        raise EncodeError("value is nested too deeply to send")
    depth -= 1
    if kind is list:
        return [_encode(item, buffers, depth, staging) for item in value]
    if kind is tuple:
        return (TUPLE, [_encode(item, buffers, depth, staging) for item in value])
    if kind is dict or kind is OrderedDict:
        flat = []
        for key, item in value.items():
            flat.append(_encode(key, buffers, depth, staging))
            flat.append(_encode(item, buffers, depth, staging))
        return (DICT if kind is dict else ODICT, flat)
    if kind is np.ndarray:
        return _array_node(value, buffers)
    if isinstance(value, np.generic):
        if value.dtype.hasobject:
            raise EncodeError("cannot send a numpy object scalar")
        return (SCALAR, _dtype_spec(value.dtype), value.tobytes())
    if kind is complex:
        return (COMPLEX, value.real, value.imag)
    if kind is set or kind is frozenset:
        return (SET if kind is set else FROZENSET, [_encode(item, buffers, depth, staging) for item in value])
    entry = _BY_TYPE.get(kind)
    if entry is not None:
        return (EXT, entry.name, _encode(entry.to_data(value), buffers, depth, staging))
    if kind is bytearray or kind is memoryview:
        return bytes(value)
    if tensors.is_tensor(value):
        if staging is not None and not value.is_cpu:
            value = staging.copy(value)
        entry, array = tensors.host_bits(value)
        if not array.flags.c_contiguous:  # a tensor travels C-ordered, whatever its strides
            array = np.ascontiguousarray(array)
        node = _array_node(array, buffers)
        return (TENSOR, node[1], entry.name, node[3])
    if dataclasses.is_dataclass(value):
        raise EncodeError(
            f"cannot send the dataclass {kind.__module__}.{kind.__qualname__}: register it on both "
            "client and server with fastenv.register_dataclass(cls)"
        )
    raise EncodeError(
        f"cannot send a value of type {kind.__module__}.{kind.__qualname__}: "
        "fastenv carries plain data (containers, scalars, numpy arrays, torch tensors); "
        "teach it this type with fastenv.register_type(cls, name, to_data, from_data) "
        "on both client and server"
    )


def encode(value: Any, *, max_depth: int = DEFAULT_MAX_DEPTH) -> tuple[bytes, list[Buffer]]:
    """Split ``value`` into a skeleton and a list of raw array buffers (no array is copied
    unless it is non-contiguous)."""
    buffers: list[Buffer] = []
    try:
        tree = _encode(value, buffers, max_depth)
    except tensors.StagingNeeded:  # a tensor on a device: encode again, copying each to the host, then wait once
        buffers = []
        staging = HostCopies()
        tree = _encode(value, buffers, max_depth, staging)
        staging.wait()
    return pickle.dumps(tree, protocol=5), buffers


# --------------------------------------------------------------------------- decode


_DTYPE_CACHE: dict[str, np.dtype] = {}


def _parse_dtype(spec: Any) -> np.dtype:
    if type(spec) is str:
        cached = _DTYPE_CACHE.get(spec)
        if cached is not None:
            return cached
    elif type(spec) is not list:
        raise DecodeError(f"invalid dtype {spec!r:.200}")
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"invalid dtype {spec!r:.200}") from exc
    if dtype.hasobject:
        raise DecodeError("refused an object dtype: fastenv payloads are data only")
    if type(spec) is str and len(spec) <= _DTYPE_CACHE_KEY and len(_DTYPE_CACHE) < 1024:
        _DTYPE_CACHE[spec] = dtype
    return dtype


def _decode_array(node: tuple, buffers: Sequence[Buffer], limits: Limits) -> np.ndarray:
    if len(node) != 5:
        raise DecodeError("malformed array node")
    _, index, dtype_spec, shape_node, order = node
    if order not in ("C", "F"):
        raise DecodeError(f"invalid array order {order!r}")
    return _array_on(buffers, index, _parse_dtype(dtype_spec), _decode_shape(shape_node), order, limits)


def _decode_tensor(node: tuple, buffers: Sequence[Buffer], limits: Limits) -> Any:
    if len(node) != 4:
        raise DecodeError("malformed tensor node")
    _, index, dtype_name, shape_node = node
    entry = tensors.dtype_named(dtype_name)
    array = _array_on(buffers, index, entry.storage, _decode_shape(shape_node), "C", limits)
    return tensors.tensor_from_array(array, entry)


def _array_on(
    buffers: Sequence[Buffer], index: Any, dtype: np.dtype, shape: tuple[int, ...], order: str, limits: Limits
) -> np.ndarray:
    if not isinstance(index, int) or not 0 <= index < len(buffers):
        raise DecodeError(f"array refers to buffer {index!r} but {len(buffers)} were sent")
    count = 1
    for dim in shape:
        count *= dim
    if count > limits.max_array_elements:
        raise FrameTooLarge(f"array of {count} elements exceeds the limit of {limits.max_array_elements}")
    nbytes = count * dtype.itemsize
    if nbytes > limits.max_array_bytes:
        raise FrameTooLarge(f"array of {nbytes} bytes exceeds the limit of {limits.max_array_bytes}")
    buffer = buffers[index]
    available = len(buffer) if type(buffer) is bytes else memoryview(buffer).nbytes
    if available != nbytes:
        raise DecodeError(
            f"array of shape {shape} and dtype {dtype} needs {nbytes} bytes, buffer has {available}"
        )
    if count == 0:
        return np.empty(shape, dtype=dtype, order=order)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape, order=order)


def _decode_shape(node: Any) -> tuple[int, ...]:
    if type(node) is not tuple or len(node) > MAX_DIMS:
        raise DecodeError(f"invalid array shape {node!r:.200}")
    for dim in node:
        if type(dim) is not int or dim < 0:
            raise DecodeError(f"invalid array shape {node!r:.200}")
    return node


def _decode(node: Any, buffers: Sequence[Buffer], depth: int, limits: Limits, budget: list[int]) -> Any:
    """Rebuild one node. ``budget[0]`` counts down the items the payload may still expand to."""
    kind = type(node)
    if kind is list:
        if depth <= 0:
            raise NestingTooDeep(f"payload nested deeper than the limit of {limits.max_depth}")
        budget[0] -= len(node) + 1
        if budget[0] < 0:
            raise DecodeError(_EXPANDS)
        return [_decode(item, buffers, depth - 1, limits, budget) for item in node]
    if kind is not tuple:
        if kind in _ATOMS:
            return node
        raise DecodeError(f"unexpected {kind.__name__} in payload")
    if depth <= 0:
        raise NestingTooDeep(f"payload nested deeper than the limit of {limits.max_depth}")
    depth -= 1
    if not node:
        raise DecodeError("empty tagged node")
    budget[0] -= len(node)
    tag = node[0]
    try:
        if tag == TUPLE:
            return tuple(_decode(item, buffers, depth, limits, budget) for item in _items(node, budget))
        if tag == DICT or tag == ODICT:
            flat = [_decode(item, buffers, depth, limits, budget) for item in _items(node, budget)]
            if len(flat) % 2:
                raise DecodeError("dict node with an odd number of entries")
            pairs = zip(flat[0::2], flat[1::2])
            return dict(pairs) if tag == DICT else OrderedDict(pairs)
        if tag == ARRAY:
            return _decode_array(node, buffers, limits)
        if tag == TENSOR:
            return _decode_tensor(node, buffers, limits)
        if tag == SCALAR:
            _, dtype_spec, raw = node
            dtype = _parse_dtype(dtype_spec)
            if type(raw) is not bytes or len(raw) != dtype.itemsize:
                raise DecodeError("numpy scalar with the wrong number of bytes")
            return np.frombuffer(raw, dtype=dtype)[0]
        if tag == COMPLEX:
            _, real, imag = node
            if type(real) is not float or type(imag) is not float:
                raise DecodeError("complex node with non-float parts")
            return complex(real, imag)
        if tag == SET:
            return {_decode(item, buffers, depth, limits, budget) for item in _items(node, budget)}
        if tag == FROZENSET:
            return frozenset(_decode(item, buffers, depth, limits, budget) for item in _items(node, budget))
        if tag == EXT:
            _, name, inner = node
            entry = _BY_NAME.get(name) if isinstance(name, str) else None
            if entry is None:
                raise DecodeError(
                    f"unknown registered type {name!r:.200}: register it on this side with fastenv.register_type"
                )
            data = _decode(inner, buffers, depth, limits, budget)
            try:
                return entry.from_data(data)
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError(f"could not rebuild registered type {name!r}: {exc}") from exc
    except (ValueError, TypeError) as exc:  # wrong arity, unhashable keys, ...
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"malformed payload: {exc}") from exc
    raise DecodeError(f"unknown tag {tag!r:.200} in payload")


def _items(node: tuple, budget: list[int]) -> list:
    if len(node) != 2 or type(node[1]) is not list:
        raise DecodeError("malformed container node")
    budget[0] -= len(node[1])
    if budget[0] < 0:
        raise DecodeError(_EXPANDS)
    return node[1]


# A tree larger than the pickle it came in reuses containers: an amplification attack.
_EXPANDS = "payload expands to more items than its skeleton holds (it reuses containers)"


def decode(skeleton: Buffer, buffers: Sequence[Buffer] = (), *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Rebuild a value from :func:`encode`'s output.

    Arrays are ``np.frombuffer`` views on ``buffers`` (no copy; writable when
    the buffer is). Raises :class:`~fastenv.errors.DecodeError` for anything
    that is not a well-formed data payload, including any attempt to
    reference a class or function.
    """
    size = len(skeleton) if type(skeleton) is bytes else memoryview(skeleton).nbytes
    if size > limits.max_skeleton_bytes:
        raise FrameTooLarge(f"skeleton of {size} bytes exceeds the limit of {limits.max_skeleton_bytes}")
    data = skeleton if type(skeleton) is bytes else bytes(skeleton)
    tree = load_skeleton(data)
    # Every item of a tree our encoder made costs at least one byte of pickle; only a
    # tree that reuses one container many times grows larger (exponentially, if nested).
    budget = [size + 16]
    try:
        return _decode(tree, buffers, limits.max_depth, limits, budget)
    except FastEnvError:
        raise
    except Exception as exc:  # numpy's checks on hostile dtypes and shapes: a protocol error, never a crash
        raise DecodeError(f"malformed payload: {type(exc).__name__}: {exc}") from exc


def roundtrip(value: Any) -> Any:
    """Encode and decode ``value`` in-process (copying buffers): handy in tests."""
    skeleton, buffers = encode(value)
    return decode(skeleton, [bytearray(memoryview(b).cast("B")) for b in buffers])
