"""The skeleton's reader: a protocol-5 pickle of plain data, checked before it is loaded.

A skeleton (:mod:`fastenv.codec`) is a tree of lists, tuples and atoms. Before
the unpickler runs, :func:`check_opcodes` refuses any pickle that holds an
opcode such a tree is not made of: no global, no call, no indexed memo
write. The unpickler that then loads it refuses every global as well, so
nothing a peer sends can name a class or a function.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from fastenv.errors import DecodeError

# The pickle opcodes a protocol-5 pickle of a skeleton tree (lists, tuples, atoms) is made of.
# Everything else is refused before the unpickler runs: opcodes that name globals or call
# anything, and the memo writes that take an index (PUT, BINPUT, LONG_BINPUT), with which a
# 20-byte payload makes the unpickler allocate and zero gigabytes for its memo table.
_FIXED_ARGUMENT = {
    0x80: 1,  # PROTO
    0x95: 8,  # FRAME
    0x28: 0,  # MARK
    0x5D: 0,  # EMPTY_LIST
    0x29: 0,  # EMPTY_TUPLE
    0x61: 0,  # APPEND
    0x65: 0,  # APPENDS
    0x74: 0,  # TUPLE
    0x85: 0,  # TUPLE1
    0x86: 0,  # TUPLE2
    0x87: 0,  # TUPLE3
    0x94: 0,  # MEMOIZE (appends to the memo: it grows one entry per opcode at most)
    0x68: 1,  # BINGET
    0x6A: 4,  # LONG_BINGET
    0x4E: 0,  # NONE
    0x88: 0,  # NEWTRUE
    0x89: 0,  # NEWFALSE
    0x4A: 4,  # BININT
    0x4B: 1,  # BININT1
    0x4D: 2,  # BININT2
    0x47: 8,  # BINFLOAT
}
_COUNTED_ARGUMENT = {  # opcode -> width of the length that precedes the argument
    0x8A: 1,  # LONG1
    0x8B: 4,  # LONG4
    0x8C: 1,  # SHORT_BINUNICODE
    0x58: 4,  # BINUNICODE
    0x8D: 8,  # BINUNICODE8
    0x43: 1,  # SHORT_BINBYTES
    0x42: 4,  # BINBYTES
    0x8E: 8,  # BINBYTES8
}
_STOP = 0x2E
_REFUSED, _END = 1000, 1001
# One entry per byte value: the fixed argument size, -width for a counted argument, or a marker.
_OPCODES = [_REFUSED] * 256
for _op, _size in _FIXED_ARGUMENT.items():
    _OPCODES[_op] = _size
for _op, _width in _COUNTED_ARGUMENT.items():
    _OPCODES[_op] = -_width
_OPCODES[_STOP] = _END


def check_opcodes(data: bytes) -> None:
    """Refuse a pickle unless it is only the opcodes of a skeleton tree, whole and in bounds."""
    table = _OPCODES
    end = len(data)
    at = 0
    while at < end:
        size = table[data[at]]
        at += 1
        if size < 0:  # a counted argument: its length, then that many bytes
            if size == -1:
                at += 1 + (data[at] if at < end else 0)
            else:
                at += -size + int.from_bytes(data[at : at - size], "little")
        elif size < _REFUSED:
            at += size
        elif size == _END:
            if at != end:
                raise DecodeError("malformed payload: data after the end of the skeleton")
            return
        else:
            raise DecodeError(
                f"refused pickle opcode {data[at - 1]:#04x}: fastenv payloads are data only "
                "(a peer tried to send code, an object or a memo write)"
            )
    raise DecodeError("malformed payload: the skeleton is truncated")


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build only builtin data: every global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise DecodeError(
            f"refused to load {module}.{name}: fastenv payloads are data only "
            "(a peer tried to send code or an object)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DecodeError("refused a persistent reference in a fastenv payload")


def load_skeleton(data: bytes) -> Any:
    """The tree a skeleton pickle holds, refusing anything but plain data (:class:`DecodeError`)."""
    check_opcodes(data)
    try:
        return _DataOnlyUnpickler(io.BytesIO(data), buffers=()).load()
    except DecodeError:
        raise
    except Exception as exc:  # any unpickling failure is a protocol error, never a crash
        raise DecodeError(f"malformed payload: {type(exc).__name__}: {exc}") from exc
