"""A session's shared-memory arena: doorbells, a request region and a ring of reply slots.

Layout of one arena segment (all offsets in bytes)::

    0      header   magic "FEAR", layout version, generation, nonce,
                    request capacity, slot capacity, slot count
    64     request doorbell   (u32, rung by the client)
    128    reply doorbell     (u32, rung by the server)
    4096   request region     (request_capacity bytes)
    ...    reply slots        (slot_count x slot_capacity bytes, 64-aligned)

A region holds one *envelope*: a fixed header (kind, buffer count, skeleton
length, sequence number), a table of (offset, length) for the array buffers,
the codec skeleton, then the buffers themselves, each 64-byte aligned.

Segments are files under ``/dev/shm`` named ``fastenv-<server pid>-<token>``.
The server creates them; once the client has mapped one (and proved it by
echoing the nonce), the server unlinks the name: the memory then lives exactly
as long as some process maps it, so a ``kill -9`` of either side leaves
nothing behind. A name left by a server that died before its client attached
carries the dead pid and is removed by :func:`reclaim_stale` (``fastenv gc``,
and every server start).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fastenv.errors import FrameTooLarge, ProtocolError, TransportError

SHM_DIR = Path(os.environ.get("FASTENV_SHM_DIR", "/dev/shm"))
PREFIX = "fastenv-"
_NAME = re.compile(r"^fastenv-(\d+)-[0-9a-f]+$")

MAGIC = b"FEAR"
LAYOUT_VERSION = 1
ARENA_HEADER = struct.Struct("<4sIQ16sQQI")  # magic, version, generation, nonce, req cap, slot cap, slots
REQUEST_BELL = 64
REPLY_BELL = 128
DATA_START = 4096
ALIGN = 64

ENVELOPE = struct.Struct("<BBHIQ")  # kind, flags, n_buffers, skeleton length, sequence
BUFFER_ENTRY = struct.Struct("<QQ")  # offset from region start, length

# Envelope kinds (data plane only).
CALL, RESULT, ERROR, REMAP, GROW, FAST = 1, 2, 3, 4, 5, 6
# A FAST envelope carries a compiled layout's data: its flags byte holds the
# kind it stands for (CALL or RESULT) and its skeleton-length field the layout id.
FAST_DATA = 64  # a FAST envelope's data starts this far into its region
# Envelope flag: the skeleton is (layout id, layout spec, value), defining a layout.
WITH_LAYOUT = 1


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def envelope_size(skeleton_len: int, buffer_sizes: Sequence[int]) -> int:
    """Bytes an envelope needs in a region."""
    size = _round_up(ENVELOPE.size + BUFFER_ENTRY.size * len(buffer_sizes) + skeleton_len, ALIGN)
    for nbytes in buffer_sizes:
        size += _round_up(nbytes, ALIGN)
    return size


@dataclass(frozen=True)
class ArenaShape:
    """Capacities of an arena."""

    request_capacity: int
    slot_capacity: int
    slots: int

    @property
    def total_size(self) -> int:
        """Bytes of the whole segment."""
        return DATA_START + self.request_capacity + self.slots * self.slot_capacity

    def slot_offset(self, index: int) -> int:
        """Where reply slot ``index`` starts."""
        return DATA_START + self.request_capacity + index * self.slot_capacity


class Arena:
    """One mapped arena segment (either side).

    Use :meth:`create` on the server and :meth:`attach` on the client. The
    mapping stays alive as long as any numpy view into it exists, even after
    :meth:`close`; closing never invalidates memory a caller still holds.
    """

    def __init__(self, path: Path, mapping: mmap.mmap, shape: ArenaShape, generation: int, nonce: bytes) -> None:
        self.path = path
        self.shape = shape
        self.generation = generation
        self.nonce = nonce
        self._mapping: mmap.mmap | None = mapping
        self.linked = True  # whether the name still exists in the shm directory
        self.buf = memoryview(mapping)
        self.readonly = self.buf.toreadonly()

    @property
    def name(self) -> str:
        """The segment's file name (what the peer needs to attach)."""
        return self.path.name

    @classmethod
    def create(cls, shape: ArenaShape, generation: int = 0, directory: Path | None = None) -> Arena:
        """Create a new segment owned by this process."""
        directory = directory or SHM_DIR
        nonce = os.urandom(16)
        path = directory / f"{PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, shape.total_size)
            mapping = mmap.mmap(fd, shape.total_size)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        ARENA_HEADER.pack_into(
            mapping, 0, MAGIC, LAYOUT_VERSION, generation, nonce,
            shape.request_capacity, shape.slot_capacity, shape.slots,
        )
        return cls(path, mapping, shape, generation, nonce)

    @classmethod
    def attach(cls, name: str, nonce: bytes | None = None, directory: Path | None = None) -> Arena:
        """Map the peer's segment; with ``nonce``, check it is the one the peer announced.

        The probe of transport selection reads :attr:`nonce` from the segment and
        echoes it over the control channel. Raises :class:`TransportError` when
        the segment cannot be opened here (another host, another /dev/shm) or is
        not a fastenv arena.
        """
        if not _NAME.match(name):
            raise ProtocolError(f"invalid arena name {name!r}")
        path = (directory or SHM_DIR) / name
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise TransportError(f"cannot open shared memory {path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size < DATA_START:
                raise TransportError(f"shared memory {path} is too small ({size} bytes)")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        magic, version, generation, found, req_cap, slot_cap, slots = ARENA_HEADER.unpack_from(mapping, 0)
        shape = ArenaShape(req_cap, slot_cap, slots)
        if magic != MAGIC or version != LAYOUT_VERSION or shape.total_size != size or nonce not in (None, found):
            mapping.close()
            raise TransportError(f"shared memory {path} is not the arena the server announced (probe failed)")
        return cls(path, mapping, shape, generation, found)

    def unlink(self) -> None:
        """Remove the name (the memory stays until every mapping is gone)."""
        if self.linked:
            self.linked = False
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Drop this side's mapping; views handed out keep the memory alive until they die."""
        mapping, self._mapping = self._mapping, None
        if mapping is None:
            return
        self.buf.release()
        self.readonly.release()
        with contextlib.suppress(BufferError):  # views still exist: the GC unmaps later
            mapping.close()

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- envelopes

    def request_offset(self) -> int:
        """Start of the request region."""
        return DATA_START

    def write_envelope(
        self, offset: int, capacity: int, kind: int, seq: int, skeleton: bytes, buffers: Sequence[Any], flags: int = 0
    ) -> None:
        """Write an envelope at ``offset``; raises :class:`FrameTooLarge` if it does not fit."""
        views = [memoryview(b).cast("B") if not isinstance(b, memoryview) else b.cast("B") for b in buffers]
        sizes = [v.nbytes for v in views]
        if envelope_size(len(skeleton), sizes) > capacity:
            raise FrameTooLarge(f"message of {envelope_size(len(skeleton), sizes)} bytes exceeds {capacity}")
        buf = self.buf
        table = offset + ENVELOPE.size
        position = table + BUFFER_ENTRY.size * len(views)
        buf[position : position + len(skeleton)] = skeleton
        position = offset + _round_up(position + len(skeleton) - offset, ALIGN)
        for index, view in enumerate(views):
            BUFFER_ENTRY.pack_into(buf, table + index * BUFFER_ENTRY.size, position - offset, view.nbytes)
            buf[position : position + view.nbytes] = view
            position += _round_up(view.nbytes, ALIGN)
        # The header (with its sequence number) goes last, so a reader that looks
        # early never matches a half-written envelope. Readers still wait for the
        # doorbell, whose release ordering is what publishes the whole write.
        ENVELOPE.pack_into(buf, offset, kind, flags, len(views), len(skeleton), seq)

    def read_header(self, offset: int) -> tuple[int, int, int, int, int]:
        """``(kind, flags, buffer count, skeleton length, seq)`` of the envelope at ``offset``."""
        return ENVELOPE.unpack_from(self.readonly, offset)

    def read_envelope(
        self, offset: int, capacity: int, *, readonly: bool = True
    ) -> tuple[int, int, memoryview, list[memoryview]]:
        """Read the envelope at ``offset``: ``(kind, seq, skeleton, buffers)`` as views into the arena."""
        view = self.readonly if readonly else self.buf
        kind, _, count, skeleton_len, seq = ENVELOPE.unpack_from(view, offset)
        table = offset + ENVELOPE.size
        start = table + BUFFER_ENTRY.size * count
        end_of_region = offset + capacity
        if start + skeleton_len > end_of_region:
            raise ProtocolError("corrupted envelope in shared memory")
        skeleton = view[start : start + skeleton_len]
        buffers = []
        for index in range(count):
            rel, nbytes = BUFFER_ENTRY.unpack_from(view, table + index * BUFFER_ENTRY.size)
            if offset + rel + nbytes > end_of_region:
                raise ProtocolError("corrupted envelope in shared memory")
            buffers.append(view[offset + rel : offset + rel + nbytes])
        return kind, seq, skeleton, buffers


def segment_owner(name: str) -> int | None:
    """The pid encoded in a fastenv segment name (None for other names)."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def list_segments(directory: Path | None = None) -> Iterator[Path]:
    """All fastenv segments in the shm directory."""
    directory = directory or SHM_DIR
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            if segment_owner(entry.name) is not None:
                yield entry


def reclaim_stale(directory: Path | None = None) -> list[str]:
    """Unlink segments whose owning process is dead; returns the names removed."""
    removed = []
    for path in list_segments(directory):
        owner = segment_owner(path.name)
        if owner is not None and not psutil.pid_exists(owner):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed
