"""Receive buffers that are recycled once nobody references them.

Why: a camera step delivers ~1.8 MB in fresh arrays. A fresh allocation of
that size comes from ``mmap`` (glibc hands out blocks above its mmap
threshold that way, and trims freed heap tops), so every step page-faults
its way through 450 new pages, and on this project's 2-core VM that costs
more than the network transfer itself: measured over loopback, a camera reply
received into fresh ``np.empty`` arrays took ~1.3-2 ms, against ~0.5 ms into
recycled ones (``benchmarks/bench_tcp_stream.py``, before and after).

How: a :class:`ReceivePool` keeps the ``bytearray`` objects it handed out.
A buffer is handed out again only when the pool holds the last reference to
it: the arrays built on it (``np.frombuffer`` keeps the ``bytearray`` as its
base, and every view keeps its base) are all gone. So an array the client
still holds is never overwritten, and arrays stay owned and writable, exactly
as with fresh allocations.

Memory: the pool keeps at most ``max_bytes`` of buffers (the stream sets it to
twice the largest message it has received); a buffer that
does not fit is allocated unpooled and freed as usual when its arrays go.
"""

from __future__ import annotations

import sys


class ReceivePool:
    """Hands out writable ``bytearray`` buffers, recycling those nobody references any more.

    Args:
        max_bytes: most bytes the pool keeps referenced (0: pool nothing).
    """

    __slots__ = ("_buffers", "_held", "max_bytes")

    # sys.getrefcount(buffers[i]) of a buffer referenced only by the pool's list:
    # the list's reference + getrefcount's own argument.
    _FREE_REFS = 2

    def __init__(self, max_bytes: int = 0) -> None:
        self._buffers: list[bytearray] = []
        self._held = 0
        self.max_bytes = max_bytes

    @property
    def held_bytes(self) -> int:
        """Bytes of the buffers the pool keeps (free or still in use by arrays)."""
        return self._held

    def take(self, size: int) -> bytearray:
        """A writable buffer of exactly ``size`` bytes that nobody else references."""
        buffers = self._buffers
        spare = -1
        for index in range(len(buffers)):  # no loop variable bound to a buffer: it would count as a reference
            if sys.getrefcount(buffers[index]) == self._FREE_REFS:
                if len(buffers[index]) == size:
                    return buffers[index]
                spare = index
        if spare >= 0:  # a free buffer of another size: make room by dropping it
            self._held -= len(buffers.pop(spare))
        fresh = bytearray(size)
        if self._held + size <= self.max_bytes:
            buffers.append(fresh)
            self._held += size
        return fresh


__all__ = ["ReceivePool"]
