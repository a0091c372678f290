"""torch tensors as fastenv values: a tensor travels as the bytes of a numpy array and comes back a tensor.

torch is optional. Nothing here imports it until a tensor has to be built
(a sender that holds a tensor has torch loaded already), so fastenv costs
nothing to users without it, and a receiver without it gets
:class:`~fastenv.errors.TorchRequired`, which names the extra to install.

On the wire a tensor is its dtype's name (``"float32"``, ``"bfloat16"``) and
its shape; its bytes are a numpy array that the data planes move like any
other. A dtype numpy has (every integer, float, complex and bool dtype of
torch) is that dtype; one numpy lacks (``bfloat16``, the ``float8`` kinds)
travels as unsigned integers of its width and is viewed back
as itself. A received tensor shares the memory the array was built on
(:func:`torch.from_numpy`), so the zero-copy contract of arrays holds for
tensors: on shared memory it views a reply slot that is never written while
the tensor (or anything built on its memory) is alive.

A tensor on a device is staged to host memory by the sender, the whole
message at once (:mod:`fastenv.staging`): the codec and the compiled layouts
pack host tensors and raise :class:`StagingNeeded` for a device tensor, so
the sender stages the message and packs again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv.errors import DecodeError, EncodeError, TorchRequired

TORCH_HINT = "install it with pip install 'fastenv[torch]', or pass tensors='numpy' to FastRemoteEnv"


class StagingNeeded(Exception):
    """A tensor on a device was met: stage the message to host memory (:func:`fastenv.staging.staged`), pack again."""


@dataclass(frozen=True)
class WireDtype:
    """How one torch dtype travels.

    Attributes:
        name: the dtype's wire name (``str(dtype)`` without ``torch.``).
        dtype: the torch dtype.
        storage: the numpy dtype its bytes travel as.
        bits: the torch dtype of ``storage`` when numpy lacks ``dtype`` itself (a view of the bits), else None.
    """

    name: str
    dtype: Any
    storage: np.dtype
    bits: Any


_by_name: dict[str, WireDtype] = {}
_by_dtype: dict[Any, WireDtype] = {}


def loaded_torch() -> Any:
    """The torch module if this process has imported it, else None (never imports it)."""
    return sys.modules.get("torch")


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (False, and free, when torch was never imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def require_torch(what: str) -> Any:
    """Import torch, or raise :class:`~fastenv.errors.TorchRequired` saying what needed it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch
    try:
        import torch
    except ImportError as exc:
        raise TorchRequired(f"{what} needs torch, which is not installed here: {TORCH_HINT}") from exc
    return torch


# torch dtypes numpy has, by name; then floats it lacks, by the width of their bits
_NUMPY_NAMED = (
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)
_AS_BITS = {
    "bfloat16": "uint16",
    "float8_e4m3fn": "uint8", "float8_e5m2": "uint8", "float8_e4m3fnuz": "uint8",
    "float8_e5m2fnuz": "uint8", "float8_e8m0fnu": "uint8",
}


def _build_tables(torch: Any) -> None:
    for name in _NUMPY_NAMED + tuple(_AS_BITS):
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype) or dtype in _by_dtype:
            continue  # a dtype this torch does not have
        bits_name = _AS_BITS.get(name)
        bits = getattr(torch, bits_name) if bits_name is not None else None
        entry = WireDtype(name, dtype, np.dtype(bits_name or name), bits)
        _by_dtype[dtype] = entry
        _by_name[name] = entry


def wire_dtype(dtype: Any) -> WireDtype:
    """How a torch dtype travels; :class:`~fastenv.errors.EncodeError` for one that cannot."""
    entry = _by_dtype.get(dtype)
    if entry is None:
        _build_tables(sys.modules["torch"])
        entry = _by_dtype.get(dtype)
        if entry is None:
            raise EncodeError(f"cannot send a torch tensor of dtype {dtype}: it has no byte layout fastenv carries")
    return entry


def dtype_named(name: Any) -> WireDtype:
    """The torch dtype a peer named (looked up in a table of torch's dtypes, never by attribute)."""
    if type(name) is not str:
        raise DecodeError(f"invalid tensor dtype {name!r:.200}")
    entry = _by_name.get(name)
    if entry is None:
        _build_tables(require_torch(f"a received torch tensor of dtype {name!r:.100}"))
        entry = _by_name.get(name)
        if entry is None:
            raise DecodeError(f"unknown tensor dtype {name!r:.200}")
    return entry


# ----------------------------------------------------------------------------- sending


def host_bits(tensor: Any) -> tuple[WireDtype, np.ndarray]:
    """The dtype entry and a numpy array of host ``tensor``'s bytes (a view).

    Raises :class:`StagingNeeded` for a tensor on a device (stage the
    message with :func:`fastenv.staging.staged` first).
    """
    entry = wire_dtype(tensor.dtype)
    if not tensor.is_cpu:
        raise StagingNeeded
    return entry, _numpy_of(tensor, entry)


def _numpy_of(tensor: Any, entry: WireDtype) -> np.ndarray:
    if entry.bits is not None:
        tensor = tensor.view(entry.bits)
    try:
        return tensor.numpy()
    except RuntimeError:  # needs grad, or a lazily conjugated or negated view
        return tensor.detach().resolve_conj().resolve_neg().numpy()


def layout_converter(entry: WireDtype) -> Any:
    """``tensor -> numpy view`` for a compiled layout's tensor leaf of dtype ``entry``.

    Returns None when the tensor has another dtype (the layout does not
    fit) and raises :class:`StagingNeeded` when it lives on a device.
    """
    dtype = entry.dtype

    def to_array(tensor: Any) -> Any:
        if tensor.dtype is not dtype:
            return None
        if not tensor.is_cpu:
            raise StagingNeeded
        return _numpy_of(tensor, entry)

    return to_array


def layout_address(entry: WireDtype, shape: tuple[int, ...]) -> Any:
    """``tensor -> address of its bytes`` for the C packer's tensor leaf of dtype ``entry`` and ``shape``.

    Returns the address (an int) of a contiguous host tensor's bytes, which
    the packer copies while it holds the tensor; a numpy view of a strided
    one; None when the tensor has another dtype or shape. Raises
    :class:`StagingNeeded` for a tensor on a device.
    """
    dtype = entry.dtype
    conjugable = dtype.is_complex  # only a complex tensor can carry a lazy conjugation

    def to_address(tensor: Any) -> Any:
        if tensor.dtype is not dtype or tensor.shape != shape:
            return None
        if not tensor.is_cpu:
            raise StagingNeeded
        if tensor.is_contiguous() and not tensor.is_neg() and not (conjugable and tensor.is_conj()):
            return tensor.data_ptr()
        return _numpy_of(tensor, entry)

    return to_address


def map_tensors(value: Any, convert: Any) -> Any:
    """``value`` rebuilt with ``convert(tensor)`` for each tensor in it.

    Walks lists, tuples, dicts (and other mappings) and dataclass instances
    (rebuilt field by field without ``__init__``, as the codec does);
    everything else is kept as it is.
    """
    kind = type(value)
    if kind is list:
        return [map_tensors(item, convert) for item in value]
    if kind is tuple:
        return tuple(map_tensors(item, convert) for item in value)
    if kind is dict:
        return {key: map_tensors(item, convert) for key, item in value.items()}
    if is_tensor(value):
        return convert(value)
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None and not isinstance(value, type):
        rebuilt = object.__new__(kind)
        for name in fields:
            object.__setattr__(rebuilt, name, map_tensors(getattr(value, name), convert))
        return rebuilt
    if isinstance(value, dict):
        return kind((key, map_tensors(item, convert)) for key, item in value.items())
    return value


# ----------------------------------------------------------------------------- receiving


def tensor_from_array(array: np.ndarray, entry: WireDtype) -> Any:
    """The tensor of dtype ``entry`` whose bytes are ``array`` (sharing its memory when it is writable)."""
    torch = sys.modules.get("torch") or require_torch("a received torch tensor")
    if not array.flags.writeable:  # torch has no read-only tensors: own a copy rather than alias immutable memory
        array = array.copy()
    tensor = torch.from_numpy(array)
    return tensor if entry.bits is None else tensor.view(entry.dtype)


def layout_builder(entry: WireDtype) -> Any:
    """``numpy array -> tensor`` for a compiled layout's tensor leaf of dtype ``entry``."""
    from_numpy = require_torch("a received torch tensor").from_numpy
    dtype, bits = entry.dtype, entry.bits

    def build(array: np.ndarray) -> Any:
        if not array.flags.writeable:
            array = array.copy()
        return from_numpy(array) if bits is None else from_numpy(array).view(dtype)

    return build


def layout_writable_builder(entry: WireDtype) -> Any:
    """``writable numpy array -> tensor`` for the C unpacker's tensor leaf of dtype ``entry``.

    ``torch.from_numpy`` itself for a dtype numpy has: the C unpacker makes
    the array writable first, so no Python runs between it and torch.
    """
    from_numpy = require_torch("a received torch tensor").from_numpy
    if entry.bits is None:
        return from_numpy
    dtype = entry.dtype
    return lambda array: from_numpy(array).view(dtype)


def as_numpy(value: Any) -> Any:
    """``value`` with every tensor replaced by a numpy array (types numpy lacks widened: bfloat16 to float32).

    What a server sends a client that asked for ``tensors="numpy"``.
    """
    if loaded_torch() is None:
        return value
    return _as_numpy(value)


def _as_numpy(value: Any) -> Any:
    return map_tensors(value, _numpy_form)


def _numpy_form(tensor: Any) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    if wire_dtype(tensor.dtype).bits is not None:  # numpy lacks it: widened
        torch = sys.modules["torch"]
        tensor = tensor.to(torch.complex64 if tensor.is_complex() else torch.float32)
    return tensor.resolve_conj().resolve_neg().numpy()
