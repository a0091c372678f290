"""Compiled layouts on shared memory: the sender writes FAST envelopes, the receiver reads them."""

from __future__ import annotations

from typing import Any

from fastenv import codec
from fastenv.errors import (
    ProtocolError,
)
from fastenv.layout import (
    ChangedView,
    LayoutMismatch,
    copy_strided,
    native_put,
)
from fastenv.negotiation import ReceivedLayouts, SentLayouts
from fastenv.shm import futex
from fastenv.shm.arena import (
    ENVELOPE,
    FAST,
    FAST_DATA,
    Arena,
)
from fastenv.shm.doorbell import SLEEPERS_OFFSET
from fastenv.shm.kept import KeptTensors
from fastenv.staging import staged
from fastenv.tensors import StagingNeeded


class LayoutSender:
    """Sends values through compiled layouts when their structure repeats (see :mod:`fastenv.layout`)."""

    def __init__(self) -> None:
        self._sent = SentLayouts()
        self._prepared: dict[tuple[str, int], tuple[Any, list, int, Any]] = {}

    def prepared(self, arena: Arena, offset: int, capacity: int, key: str) -> tuple[Any, list, int, Any] | None:
        """``(program, views, layout id, layout)`` writing ``key``'s layout into the region at ``offset``.

        None while ``key`` has no layout, or when its layout does not fit the region.
        ``program`` is None without the C packer.
        """
        entry = self._prepared.get((key, offset))  # cleared whenever the arena or key's layout changes
        if entry is None:
            known = self._sent.get(key)
            if known is None:
                return None
            layout_id, layout = known
            if FAST_DATA + layout.size > capacity:
                return None
            entry = (layout.program, layout.views(arena.buf, offset + FAST_DATA), layout_id, layout)
            self._prepared[(key, offset)] = entry
        return entry

    def write_fast(
        self,
        arena: Arena,
        offset: int,
        capacity: int,
        key: str,
        kind: int,
        seq: int,
        value: Any,
        bell: int = -1,
        lent: bytes | None = None,
    ) -> bool:
        """Write ``value`` as a FAST envelope if its key's layout fits it; False otherwise.

        With ``bell`` (a doorbell offset), ring that doorbell once the envelope is complete.
        ``lent`` flags the arrays whose place was lent to the env (:mod:`fastenv.loans`):
        False, with no lent place written over, unless each already holds its array.
        """
        entry = self.prepared(arena, offset, capacity, key)
        if entry is None:
            return False
        program, views, layout_id, layout = entry
        buf = arena.buf
        if program is not None:  # the C packer writes the data and the envelope header, and rings, in one call
            try:
                return native_put(program, buf, offset, value, views, copy_strided, kind, layout_id, seq, bell, lent)
            except StagingNeeded:  # a tensor on a device: copy the message's device tensors to host memory at once
                value = staged(value)
                return native_put(program, buf, offset, value, views, copy_strided, kind, layout_id, seq, bell, lent)
        try:
            if lent is not None and not _lent_in_place(layout, views, value, lent):
                return False
            try:
                layout.pack_into(buf, offset + FAST_DATA, value, views)
            except StagingNeeded:
                layout.pack_into(buf, offset + FAST_DATA, staged(value), views)
        except LayoutMismatch:
            return False
        ENVELOPE.pack_into(buf, offset, FAST, kind, 0, layout_id, seq)
        if bell >= 0:
            futex.get_backend(None).ring(buf, bell, bell + SLEEPERS_OFFSET)
        return True

    def define(self, key: str, value: Any) -> tuple[int, Any] | None:
        """A new layout for ``value`` (its id and spec), or None if it has none or we gave up."""
        definition = self._sent.define(key, value)
        if definition is not None:
            self._drop_prepared(key)
        return definition

    def forget(self, key: str) -> None:
        """Drop ``key``'s layout: the envelope defining it was never written for the peer."""
        self._sent.forget(key)
        self._drop_prepared(key)

    def _drop_prepared(self, key: str) -> None:
        for prepared in [prepared for prepared in self._prepared if prepared[0] == key]:
            del self._prepared[prepared]

    def forget_arena(self) -> None:
        """Drop cached views after a remap."""
        self._prepared.clear()


def _lent_in_place(layout: Any, views: list, value: Any, lent: bytes) -> bool:
    """Whether each array place flagged in ``lent`` holds an array at that very memory (Python packer)."""
    _, arrays = layout.extract(value)
    for index, flag in enumerate(lent):
        if flag and (index >= len(arrays) or arrays[index].ctypes.data != views[index].ctypes.data):
            return False
    return True


class LayoutReceiver:
    """Rebuilds values sent by a :class:`LayoutSender` (announced layouts checked against ``limits``)."""

    def __init__(self, limits: codec.Limits | None = None) -> None:
        self._received = ReceivedLayouts()
        self._max_array_elements = None if limits is None else limits.max_array_elements
        self._regions: dict[tuple[int, bool], dict[int, tuple[Any, list, Any]]] = {}
        # Set by a server: request tensors kept and reused while the env lets them go (fastenv.shm.kept).
        self.kept: KeptTensors | None = None

    def define(self, layout_id: Any, spec: Any) -> None:
        """Compile a layout announced by the peer (validated like any payload)."""
        self._received.define(layout_id, spec, self._max_array_elements)
        for prepared in self._regions.values():  # an id the peer announces again means what it says now
            prepared.pop(layout_id, None)

    def region(self, offset: int, readonly: bool) -> dict[int, tuple[Any, list, Any]]:
        """The layouts prepared for the region at ``offset``: ``{layout id: (program, views, layout[, kept])}``.

        :meth:`read` fills it; ``fastenv._layout.take`` unpacks the layouts it holds.
        """
        prepared = self._regions.get((offset, readonly))  # cleared whenever the arena changes
        if prepared is None:
            prepared = self._regions[(offset, readonly)] = {}
        return prepared

    def read(self, arena: Arena, offset: int, capacity: int, layout_id: int, *, readonly: bool, copy: bool) -> Any:
        """The value of the FAST envelope at ``offset``."""
        prepared = self.region(offset, readonly)
        entry = prepared.get(layout_id)
        buffer = arena.readonly if readonly else arena.buf
        if entry is None:
            layout = self._received.get(layout_id)
            if FAST_DATA + layout.size > capacity:
                raise ProtocolError("layout larger than its region")
            entry = prepared[layout_id] = (layout.program, layout.views(buffer, offset + FAST_DATA), layout)
            if self.kept is not None and copy:
                self.kept.attach(prepared)
                entry = prepared[layout_id]
        views, layout = entry[1], entry[2]
        try:
            return layout.unpack(buffer, offset + FAST_DATA, views, copy, reused=not copy)
        except ChangedView:  # a caller changed a view it was handed and dropped it: new views for this region
            entry = prepared[layout_id] = (entry[0], layout.views(buffer, offset + FAST_DATA), *entry[2:])
            return layout.unpack(buffer, offset + FAST_DATA, entry[1], copy, reused=not copy)

    def forget_arena(self) -> None:
        """Drop cached views after a remap (also from the tables :meth:`region` handed out)."""
        for prepared in self._regions.values():
            prepared.clear()
        self._regions.clear()
        if self.kept is not None:
            self.kept.forget()

