"""Compiled layouts on the TCP stream: a repeated step costs a struct, not a pickle.

The first message for a call name (``"step"``, ``"reset"``, ...) travels
through the general codec with its layout's spec (flag
:data:`~fastenv.tcp.framing.FLAG_LAYOUT_DEF`); later messages of the same
structure carry only the layout id (in the header), the packed scalars (as the
skeleton) and the arrays' raw bytes as buffers (flag
:data:`~fastenv.tcp.framing.FLAG_LAYOUT`). The arrays are sent from their own
memory and land in the receive buffers without a copy, exactly like the
codec's out-of-band buffers. A value whose structure changed falls back to the
codec (and may announce a new layout), so nothing depends on the structure
staying the same.

The receiver checks a layout message strictly: the id must have been
announced, the skeleton must be the scalars' exact size and every buffer its
array's exact size; anything else is a :class:`~fastenv.errors.DecodeError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastenv import codec
from fastenv.errors import DecodeError
from fastenv.layout import LayoutMismatch
from fastenv.negotiation import ReceivedLayouts, SentLayouts
from fastenv.staging import staged
from fastenv.tcp.format import FLAG_LAYOUT, FLAG_LAYOUT_DEF
from fastenv.tensors import StagingNeeded


def _wire(array: np.ndarray, fortran: bool) -> np.ndarray:
    """The array's bytes in the layout's order, as flat uint8 (a view when the memory already is)."""
    if fortran:
        array = array.T  # the F-order bytes of an array are the C-order bytes of its transpose
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array.reshape(-1).view(np.uint8)


class StreamEncoder:
    """Encodes what one side sends: through a layout when one fits, otherwise with the codec."""

    def __init__(self) -> None:
        self._sent = SentLayouts()
        self._scalars: dict[int, bytearray] = {}

    def encode(self, key: str, value: Any, *, use_layouts: bool = True) -> tuple[Any, list[Any], int, int]:
        """``(skeleton, buffers, flags, layout id)`` for :meth:`MessageStream.send`.

        The skeleton of a layout message is a scratch buffer reused by the
        next message with the same layout: send it before encoding again.
        """
        if use_layouts:
            known = self._sent.get(key)
            if known is not None:
                layout_id, layout = known
                scratch = self._scalars.get(layout_id)
                if scratch is None:
                    scratch = self._scalars[layout_id] = bytearray(layout.scalars.size)
                try:
                    try:
                        arrays = layout.extract_into(scratch, value)
                    except StagingNeeded:  # a tensor on a device: copy the message's device tensors at once
                        value = staged(value)
                        arrays = layout.extract_into(scratch, value)
                except LayoutMismatch:
                    pass
                else:
                    wires = [_wire(array, entry[2] == "F") for array, entry in zip(arrays, layout.arrays)]
                    return scratch, wires, FLAG_LAYOUT, layout_id
            definition = self._sent.define(key, value)
            if definition is not None:
                try:
                    skeleton, buffers = codec.encode((definition[0], definition[1], value))
                except BaseException:
                    self._sent.forget(key)
                    raise
                return skeleton, buffers, FLAG_LAYOUT_DEF, 0
        skeleton, buffers = codec.encode(value)
        return skeleton, buffers, 0, 0

    def refused(self, key: str, flags: int) -> None:
        """A message from :meth:`encode` was not sent: a layout it announced does not exist for the peer."""
        if flags & FLAG_LAYOUT_DEF:
            self._sent.forget(key)


class StreamDecoder:
    """Decodes what the peer sent (see :class:`StreamEncoder`), under the codec's limits."""

    def __init__(self, limits: codec.Limits) -> None:
        self._limits = limits
        self._received = ReceivedLayouts()

    def decode(self, skeleton: Any, buffers: list[np.ndarray], flags: int, layout_id: int) -> Any:
        """The value of a received message; :class:`DecodeError` when it is malformed."""
        if flags & FLAG_LAYOUT:
            return self._rebuild(skeleton, buffers, layout_id)
        value = codec.decode(skeleton, buffers, limits=self._limits)
        if flags & FLAG_LAYOUT_DEF:
            if not (isinstance(value, tuple) and len(value) == 3):
                raise DecodeError("malformed layout definition")
            self._received.define(value[0], value[1], self._limits.max_array_elements)
            value = value[2]
        return value

    def _rebuild(self, skeleton: Any, buffers: list[np.ndarray], layout_id: int) -> Any:
        layout = self._received.get(layout_id)
        if len(skeleton) != layout.scalars.size or len(buffers) != len(layout.arrays):
            raise DecodeError(f"message does not match layout {layout_id}")
        arrays = []
        for (dtype, shape, order, _offset), count, buffer in zip(layout.arrays, layout.array_counts, buffers):
            if buffer.nbytes != count * dtype.itemsize:
                needed = count * dtype.itemsize
                raise DecodeError(f"array of layout {layout_id} needs {needed} bytes, got {buffer.nbytes}")
            if count == 0:
                arrays.append(np.empty(shape, dtype=dtype, order=order))
            else:
                arrays.append(np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape, order=order))
        return layout.unpack(skeleton, 0, arrays, False)


__all__ = ["FLAG_LAYOUT", "FLAG_LAYOUT_DEF", "StreamDecoder", "StreamEncoder"]
