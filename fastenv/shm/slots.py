"""Which reply slots the caller still holds values in: a held slot is never written again.

Replies land in reply slot ``seq % slots`` of the arena, and the client picks
each call's sequence number. Arrays it returns are views into their slot
(zero copy), so before each call it picks the next number whose slot no
returned array refers to any more. A slot is *held* while any array built on
its memory is alive anywhere (the caller's variables, a list, a derived view,
a tensor sharing its memory): every such array keeps a reference to one of
the views or buffers the plane made for the slot, or to the array under a
layout's views (numpy makes a view of a view refer to the array under both),
so their reference counts say it. One slot, the *bounce* slot, is never
lent: when every other slot is held, the reply goes there and is copied into
owned arrays. So at most
``slots - 1`` replies stay zero-copy at once, and keeping more costs one copy
each, never an overwritten value.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

_getrefcount = sys.getrefcount


def _unheld_count() -> int:
    """The reference count :meth:`ReplySlots.held` reads for an object only its list refers to.

    Measured, in the same loop shape, rather than assumed: it counts the
    list, the loop variable and getrefcount's argument, whatever this
    interpreter counts of those.
    """
    probe = [object()]
    for item in probe:
        return _getrefcount(item)
    raise AssertionError("unreachable")


_UNHELD = _unheld_count()


def _unheld_base_excess() -> int:
    """What :meth:`ReplySlots.held` reads for the array under ``n`` views, beyond ``n``, when nothing else refers to it."""
    whole = np.frombuffer(bytearray(8), np.uint8)
    views = [np.ndarray((1,), np.uint8, buffer=whole)]
    del whole
    return _getrefcount(views[0].base) - len(views)


_UNHELD_BASE = _unheld_base_excess()


class ReplySlots:
    """The reply slots of one arena generation and what of each the caller may still hold.

    Args:
        prepared: per slot, the receiver's prepared layouts ``{layout id: (program, views, layout)}``
            (the views the fast path returns).
    """

    def __init__(self, prepared: list[dict[int, tuple[Any, list, Any]]]) -> None:
        self.count = len(prepared)
        self.bounce = self.count - 1
        self._prepared = prepared
        self._decoded: list[list[Any]] = [[] for _ in prepared]  # buffers the general decoder built arrays on

    def held(self, slot: int) -> bool:
        """Whether an array built on ``slot``'s memory may still be alive."""
        for entry in self._prepared[slot].values():
            views = entry[1]
            for view in views:
                if _getrefcount(view) > _UNHELD:
                    return True
            if views and _getrefcount(views[0].base) > _UNHELD_BASE + len(views):
                return True  # a view of a view: numpy made it refer to the array under the layout's views
        for buffer in self._decoded[slot]:
            if _getrefcount(buffer) > _UNHELD:
                return True
        return False

    def next_seq(self, last: int) -> int:
        """The first sequence number after ``last`` whose slot is the lowest free one (else the bounce slot).

        Taking the lowest free slot keeps a caller that drops its values on
        the same two or three slots (warm in the CPU caches), however many
        the arena has.
        """
        first = last + 1
        slot = 0
        while slot < self.bounce and self.held(slot):
            slot += 1
        return first + (slot - first) % self.count

    def copies(self, seq: int) -> bool:
        """Whether the reply to ``seq`` must be copied out (it lands in the bounce slot)."""
        return seq % self.count == self.bounce

    def decoded(self, slot: int, buffers: list[Any]) -> None:
        """Record the buffers the general decoder builds the reply in ``slot`` on."""
        self._decoded[slot] = buffers
