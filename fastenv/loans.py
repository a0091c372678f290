"""Reply arrays: let an env write its observation straight into the reply slot.

An env that renders into a buffer it is given (MuJoCo's ``Renderer.render(out=...)``,
``np.add(..., out=...)``, a camera driver filling a frame) can ask fastenv for
that buffer::

    frame = fastenv.reply_array((480, 640, 3), np.uint8)
    renderer.render(out=frame)
    return {"rgb": frame, ...}, reward, terminated, truncated, info

Anywhere but a shared-memory session, :func:`reply_array` is ``np.empty``. On
a shared-memory session the server lends the env the reply slot's own memory
at the place where that array travels in the reply, so sending it costs no
copy (a 1.8 MB camera step saves one full copy of its frames).

How the server knows the place: the first call of a kind (``step``, ``reset``)
gets ordinary arrays; once its reply has a compiled layout
(:mod:`fastenv.layout`), the server records at which array of the reply each
lent array ended up (by identity). From then on, the n-th ``reply_array`` of
that call is the slot memory of that place, when its shape and dtype match.
The packer writing the reply checks that each lent place still holds the
array lent from it, before it writes over any lent place; if the env did
something else (returned arrays in another order, changed the structure), the
reply goes the general way from copies of its arrays and the places are
learnt again. Nothing the env does with these
arrays can make a reply wrong; only the copy is saved or not.

The contract for the env: a reply array is yours until the call returns.
Do not keep it for a later call (the slot is reused ``slots`` calls later and
the client may still be reading it); keep a copy instead.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fastenv.layout import LayoutMismatch
from fastenv.tensors import StagingNeeded

__all__ = ["ReplyLoans", "reply_array"]

_current = threading.local()  # .loans: the ReplyLoans of the shm worker running on this thread


def reply_array(shape: int | tuple[int, ...], dtype: Any = float) -> np.ndarray:
    """An uninitialised array for the env's result, like ``np.empty(shape, dtype)``.

    On a shared-memory session it may be the reply slot's own memory, so
    returning it (anywhere in the result) sends it without a copy. Write it
    completely, return it, and do not keep it after the call.
    """
    loans = getattr(_current, "loans", None)
    if loans is not None:
        lent = loans.lend(shape, dtype)
        if lent is not None:
            return lent
    return np.empty(shape, dtype)


def current_loans() -> ReplyLoans | None:
    """The loans :func:`reply_array` uses on this thread (None: it allocates)."""
    return getattr(_current, "loans", None)


def use_loans(loans: ReplyLoans | None) -> ReplyLoans | None:
    """Make :func:`reply_array` on this thread use ``loans`` (a call run for another thread); returns the previous."""
    previous = getattr(_current, "loans", None)
    _current.loans = loans
    return previous


def _shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(side) for side in shape)


class ReplyLoans:
    """Lends reply-slot memory to the env during the calls of one shared-memory worker.

    The worker binds it to its thread once (:meth:`bind`), sets :attr:`call`
    for the duration of each call and closes it with :meth:`end` when the call
    lent anything; in between, the env's :func:`reply_array` calls come to
    :meth:`lend`.

    Args:
        views_of: ``views_of(call) -> (views, layout) | None``: the arrays of
            the reply layout of the call in its reply slot, and the layout
            (None while the call's key has no layout that fits the slot).
    """

    def __init__(self, views_of: Any) -> None:
        self._views_of = views_of
        #: ``(key, arena, seq)`` of the call in progress (the worker sets and clears it), or None.
        self.call: tuple[str, Any, int] | None = None
        #: This call's arrays so far: ``(array, reply array index it was lent at, or None)``.
        self.lent: list[tuple[np.ndarray, int | None]] = []
        #: How many of them are reply-slot memory (a general-path reply must then copy its arrays first).
        self.from_slot = 0
        self._places: dict[str, list[int | None]] = {}  # per key: the reply array index of each loan, in order

    def bind(self) -> None:
        """Route :func:`reply_array` calls made on this thread to these loans."""
        _current.loans = self

    @staticmethod
    def unbind() -> None:
        """:func:`reply_array` on this thread is ``np.empty`` again."""
        _current.loans = None

    def lend(self, shape: int | tuple[int, ...], dtype: Any) -> np.ndarray | None:
        """The array for the next :func:`reply_array` of this call, or None outside a call."""
        call = self.call
        if call is None:
            return None
        array, place = None, None
        places = self._places.get(call[0])
        index = len(self.lent)
        if places is not None and index < len(places) and places[index] is not None:
            found = self._views_of(call)
            if found is not None:
                view = found[0][places[index]]
                wanted = shape if type(shape) is tuple else _shape(shape)
                if view.shape == wanted and view.dtype == dtype and view.flags.c_contiguous:
                    array, place = view, places[index]
        if array is None:
            array = np.empty(shape, dtype)
        else:
            self.from_slot += 1
        self.lent.append((array, place))
        return array

    def places(self) -> bytes | None:
        """A flag per reply array whose place was lent in this call (what the packers check), or None."""
        if not self.from_slot:
            return None
        flags = bytearray(max(place for _, place in self.lent if place is not None) + 1)
        for _, place in self.lent:
            if place is not None:
                flags[place] = 1
        return bytes(flags)

    def end(self, value: Any, settled: bool) -> None:
        """Close a call that lent arrays; ``settled``: its reply went through the layout, every loan in place.

        Otherwise the places are learnt (again) from ``value`` and the layout
        now current for the call.
        """
        lent, call = self.lent, self.call
        self.lent, self.call, self.from_slot = [], None, 0
        if call is None:
            return
        if settled and [place for _, place in lent] == self._places.get(call[0]):
            return  # every loan went where the places said (a loan kept out of the reply stays out)
        arrays = self._arrays(value, call)
        if arrays is None:
            self._places.pop(call[0], None)
            return
        self._places[call[0]] = [
            next((index for index, candidate in enumerate(arrays) if candidate is array), None) for array, _ in lent
        ]

    def _arrays(self, value: Any, call: tuple[str, Any, int] | None) -> list[Any] | None:
        """The arrays of ``value`` in the order of ``call``'s reply layout, or None without a layout that fits it."""
        found = None if call is None else self._views_of(call)
        if found is None:
            return None
        layout = found[1]
        try:
            return layout.extract_into(bytearray(layout.scalars.size), value)
        except (LayoutMismatch, StagingNeeded):  # a device tensor was not lent a place in the reply
            return None
