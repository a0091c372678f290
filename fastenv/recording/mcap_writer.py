"""A chunked MCAP writer whose per-message cost is one ``struct`` pack and one copy.

The recorder's writer thread shares the server's GIL with the sessions it
records, so every microsecond it spends in Python per message is taken from
their steps. :class:`McapWriter` writes the MCAP format (version 0, see
https://mcap.dev/spec) with the least Python per message: a message is
appended to the open chunk as one packed header and its payload, and its
index entry to a flat array; everything else (compression, CRCs, message
indexes, the summary) happens once per chunk or once per file.

The file it writes has the layout readers expect: a header, then chunks
(schemas, channels and messages; LZ4-compressed when ``lz4`` is installed),
each followed by its message indexes, with attachments and metadata between
chunks; then the summary section (schemas, channels, statistics, chunk,
attachment and metadata indexes), summary offsets and the footer. Compressed
chunks and attachments carry their CRCs, and the summary its own; a message
written as a chunk of its own (:meth:`McapWriter.add_large_message`) and the
data section as a whole do not (0, as MCAP allows: readers skip the check),
since those CRCs would read every byte of every camera frame once more.
"""

from __future__ import annotations

import functools
import struct
import zlib
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

MAGIC = b"\x89MCAP0\r\n"
NO_CRC = 0  # what MCAP writes where a CRC was not computed

OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE = 0x01, 0x02, 0x03, 0x04, 0x05
OP_CHUNK, OP_MESSAGE_INDEX, OP_CHUNK_INDEX, OP_ATTACHMENT, OP_ATTACHMENT_INDEX = 0x06, 0x07, 0x08, 0x09, 0x0A
OP_STATISTICS, OP_METADATA, OP_METADATA_INDEX, OP_SUMMARY_OFFSET, OP_DATA_END = 0x0B, 0x0C, 0x0D, 0x0E, 0x0F

_RECORD_HEAD = struct.Struct("<BQ")  # opcode, content length
_MESSAGE_HEAD = struct.Struct("<BQHIQQ")  # record head, channel id, sequence, log time, publish time
_MESSAGE_FIXED = _MESSAGE_HEAD.size - _RECORD_HEAD.size
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_INDEX_ENTRY = struct.Struct("<HQ")  # channel id, offset (a chunk index's message index offsets)
_COUNT_ENTRY = struct.Struct("<HQ")  # channel id, message count (statistics)


def _string(text: str) -> bytes:
    data = text.encode()
    return _U32.pack(len(data)) + data


def _string_map(values: Mapping[str, str]) -> bytes:
    body = b"".join(_string(key) + _string(value) for key, value in values.items())
    return _U32.pack(len(body)) + body


def _record(opcode: int, content: bytes) -> bytes:
    return _RECORD_HEAD.pack(opcode, len(content)) + content


@functools.lru_cache(maxsize=64)
def _message_dtype(size: int) -> np.dtype:
    """A message record with a ``size``-byte payload, as a packed numpy record (the MCAP layout, little-endian)."""
    return np.dtype(
        [
            ("opcode", "u1"),
            ("length", "<u8"),
            ("channel", "<u2"),
            ("sequence", "<u4"),
            ("log_time", "<u8"),
            ("publish_time", "<u8"),
            ("data", f"V{size}"),
        ]
    )


def _lz4_compressor() -> Callable[[bytes], bytes] | None:
    try:
        import lz4.frame
    except ImportError:
        return None
    return lz4.frame.compress


class McapWriter:
    """Writes one MCAP file to ``stream`` (which it does not close).

    Args:
        stream: a binary file open for writing (a FIFO works: nothing is sought).
        profile: the header's profile.
        library: the header's library.
        chunk_size: uncompressed bytes a chunk holds before it is written.
        compress: compress chunks with LZ4 when the ``lz4`` package is there.

    Call :meth:`start`, add schemas, channels, messages, attachments and
    metadata, then :meth:`finish`. Not thread-safe: one thread writes.
    """

    def __init__(
        self, stream: BinaryIO, *, profile: str, library: str, chunk_size: int = 256 << 10, compress: bool = True
    ) -> None:
        self._stream = stream
        self._profile, self._library = profile, library
        self._chunk_size = chunk_size
        self._compress = _lz4_compressor() if compress else None
        self._position = 0
        self._schemas: list[bytes] = []  # record contents, for the summary
        self._channels: list[bytes] = []
        self._chunk_indexes: list[bytes] = []
        self._attachment_indexes: list[bytes] = []
        self._metadata_indexes: list[bytes] = []
        self._counts: dict[int, int] = {}  # messages per channel, whole file
        self._message_count = 0
        self._start_time: int | None = None
        self._end_time = 0
        self._chunk = bytearray()
        self._chunk_entries = array("Q")  # (channel id, log time, offset) per message of the open chunk
        self._chunk_start: int | None = None
        self._chunk_end = 0

    @property
    def position(self) -> int:
        """Bytes written to the stream so far."""
        return self._position

    # ------------------------------------------------------------------ data section

    def start(self) -> None:
        """Write the magic and the header."""
        self._write(MAGIC)
        self._write(_record(OP_HEADER, _string(self._profile) + _string(self._library)))

    def add_schema(self, name: str, encoding: str, data: bytes) -> int:
        """Register a schema; returns its id (1 and up)."""
        schema_id = len(self._schemas) + 1
        content = _U16.pack(schema_id) + _string(name) + _string(encoding) + _U32.pack(len(data)) + bytes(data)
        self._schemas.append(content)
        self._chunk += _record(OP_SCHEMA, content)
        return schema_id

    def add_channel(self, topic: str, message_encoding: str, schema_id: int, metadata: Mapping[str, str]) -> int:
        """Register a channel (``schema_id`` 0: none); returns its id (0 and up)."""
        channel_id = len(self._channels)
        content = (
            _U16.pack(channel_id)
            + _U16.pack(schema_id)
            + _string(topic)
            + _string(message_encoding)
            + _string_map(metadata)
        )
        self._channels.append(content)
        self._counts[channel_id] = 0
        self._chunk += _record(OP_CHANNEL, content)
        return channel_id

    def add_message(self, channel_id: int, sequence: int, log_time: int, data: bytes | bytearray | memoryview) -> None:
        """Append one message (its publish time is its log time; its sequence wraps at 2**32) to the open chunk."""
        chunk = self._chunk
        offset = len(chunk)
        head = _MESSAGE_HEAD.pack(
            OP_MESSAGE, _MESSAGE_FIXED + len(data), channel_id, sequence & 0xFFFFFFFF, log_time, log_time
        )
        chunk += head
        chunk += data
        self._chunk_entries.extend((channel_id, log_time, offset))
        self._counts[channel_id] += 1
        if self._chunk_start is None:
            self._chunk_start = log_time
        self._chunk_end = log_time
        if len(chunk) >= self._chunk_size:
            self.flush_chunk()

    def add_messages(
        self, channel_id: int, sequences: list[int], log_times: list[int], payloads: list[bytearray], size: int
    ) -> None:
        """Append messages of ``size`` bytes each on one channel, with a few numpy operations for all of them.

        The records are built as one structured array (header fields as
        columns, payloads as one fixed-size field), so the Python cost per
        message is what the caller spends collecting the lists.
        """
        count = len(payloads)
        if not count:
            return
        chunk = self._chunk
        start = len(chunk)
        block = np.empty(count, _message_dtype(size))
        block["opcode"] = OP_MESSAGE
        block["length"] = _MESSAGE_FIXED + size
        block["channel"] = channel_id
        block["sequence"] = np.asarray(sequences, np.uint64) & 0xFFFFFFFF
        times = np.asarray(log_times, np.uint64)
        block["log_time"] = times
        block["publish_time"] = times
        block["data"] = np.frombuffer(b"".join(payloads), dtype=block.dtype["data"])
        chunk += block.tobytes()
        entries = np.empty((count, 3), np.uint64)
        entries[:, 0] = channel_id
        entries[:, 1] = times
        entries[:, 2] = start + np.arange(count, dtype=np.uint64) * block.dtype.itemsize
        self._chunk_entries.frombytes(entries.tobytes())  # native order, as add_message appends
        self._counts[channel_id] += count
        first, last = int(times.min()), int(times.max())
        self._chunk_start = first if self._chunk_start is None else min(self._chunk_start, first)
        self._chunk_end = max(self._chunk_end, last)
        if len(chunk) >= self._chunk_size:
            self.flush_chunk()

    def add_attachment(self, name: str, media_type: str, data: bytes, log_time: int = 0, create_time: int = 0) -> None:
        """Write an attachment (between chunks)."""
        head = _U64.pack(log_time) + _U64.pack(create_time) + _string(name) + _string(media_type)
        body = head + _U64.pack(len(data)) + bytes(data)
        content = body + _U32.pack(zlib.crc32(body))
        offset = self._position
        self._write(_record(OP_ATTACHMENT, content))
        self._attachment_indexes.append(
            _U64.pack(offset)
            + _U64.pack(self._position - offset)
            + _U64.pack(log_time)
            + _U64.pack(create_time)
            + _U64.pack(len(data))
            + _string(name)
            + _string(media_type)
        )

    def add_metadata(self, name: str, values: Mapping[str, str]) -> None:
        """Write a metadata record (between chunks)."""
        offset = self._position
        self._write(_record(OP_METADATA, _string(name) + _string_map(values)))
        self._metadata_indexes.append(_U64.pack(offset) + _U64.pack(self._position - offset) + _string(name))

    def add_large_message(
        self, channel_id: int, sequence: int, log_time: int, parts: Sequence[bytes | bytearray | memoryview]
    ) -> None:
        """Write one message as a chunk of its own, uncompressed, from ``parts`` (its payload, in pieces).

        For payloads of many kilobytes (camera frames): the pieces go to the
        file as they are, so the writer makes no copy and holds the GIL for
        none (the CRC and the write release it), where appending to the open
        chunk would copy the payload twice with the GIL held and LZ4 would
        spend a core on pixels it barely shrinks.
        """
        self.flush_chunk()  # messages stay in the order they were added
        views = [memoryview(part).cast("B") for part in parts]
        size = sum(view.nbytes for view in views)
        head = _MESSAGE_HEAD.pack(OP_MESSAGE, _MESSAGE_FIXED + size, channel_id, sequence & 0xFFFFFFFF, log_time, log_time)
        self._counts[channel_id] += 1
        entries = array("Q", (channel_id, log_time, 0))
        self._write_chunk([head, *views], len(head) + size, NO_CRC, "", entries, log_time, log_time)

    def flush_chunk(self) -> None:
        """Write the open chunk and its message indexes (nothing when it is empty)."""
        records = self._chunk
        if not records:
            return
        data, compression = records, ""
        if self._compress is not None:
            data, compression = self._compress(records), "lz4"
        start_time = self._chunk_start if self._chunk_start is not None else 0
        self._write_chunk([data], len(records), zlib.crc32(records), compression, self._chunk_entries, start_time, self._chunk_end)
        self._chunk = bytearray()
        self._chunk_entries = array("Q")
        self._chunk_start = None

    def _write_chunk(
        self,
        data: list[Any],
        uncompressed_size: int,
        crc: int,
        compression: str,
        entries: array,
        start_time: int,
        end_time: int,
    ) -> None:
        """Write a chunk record holding ``data`` (its records, compressed or not, in pieces), then its message indexes.

        ``entries``: ``(channel id, log time, offset in the uncompressed records)`` per message.
        """
        data_size = sum(memoryview(piece).nbytes for piece in data)
        content = (
            _U64.pack(start_time)
            + _U64.pack(end_time)
            + _U64.pack(uncompressed_size)
            + _U32.pack(crc)
            + _string(compression)
            + _U64.pack(data_size)
        )
        chunk_offset = self._position
        self._write(_RECORD_HEAD.pack(OP_CHUNK, len(content) + data_size) + content)
        for piece in data:
            self._write(piece)
        chunk_length = self._position - chunk_offset
        index_offsets = bytearray()
        index_start = self._position
        table = np.frombuffer(entries, np.uint64).reshape(-1, 3)
        for channel_id in dict.fromkeys(table[:, 0].tolist()):  # channels in order of first message
            pairs = table[table[:, 0] == channel_id, 1:].astype("<u8").tobytes()
            index_offsets += _INDEX_ENTRY.pack(channel_id, self._position)
            self._write(_record(OP_MESSAGE_INDEX, _U16.pack(channel_id) + _U32.pack(len(pairs)) + pairs))
        self._chunk_indexes.append(
            _U64.pack(start_time)
            + _U64.pack(end_time)
            + _U64.pack(chunk_offset)
            + _U64.pack(chunk_length)
            + _U32.pack(len(index_offsets))
            + bytes(index_offsets)
            + _U64.pack(self._position - index_start)
            + _string(compression)
            + _U64.pack(data_size)
            + _U64.pack(uncompressed_size)
        )
        if len(table):
            self._message_count += len(table)
            self._start_time = start_time if self._start_time is None else min(self._start_time, start_time)
            self._end_time = max(self._end_time, end_time)

    # ------------------------------------------------------------------ summary

    def finish(self) -> None:
        """Write the last chunk, the data end, the summary, the footer and the closing magic."""
        self.flush_chunk()
        self._write(_record(OP_DATA_END, _U32.pack(NO_CRC)))  # a CRC of the whole file would read every byte again
        summary_start = self._position
        summary_crc = 0
        groups: list[tuple[int, int, int]] = []

        def group(opcode: int, contents: list[bytes]) -> None:
            nonlocal summary_crc
            if not contents:
                return
            data = b"".join(_record(opcode, content) for content in contents)
            groups.append((opcode, self._position, len(data)))
            summary_crc = zlib.crc32(data, summary_crc)
            self._write(data)

        counts = b"".join(_COUNT_ENTRY.pack(channel, count) for channel, count in self._counts.items())
        statistics = (
            _U64.pack(self._message_count)
            + _U16.pack(len(self._schemas))
            + _U32.pack(len(self._channels))
            + _U32.pack(len(self._attachment_indexes))
            + _U32.pack(len(self._metadata_indexes))
            + _U32.pack(len(self._chunk_indexes))
            + _U64.pack(self._start_time or 0)
            + _U64.pack(self._end_time)
            + _U32.pack(len(counts))
            + counts
        )
        group(OP_SCHEMA, self._schemas)
        group(OP_CHANNEL, self._channels)
        group(OP_STATISTICS, [statistics])
        group(OP_CHUNK_INDEX, self._chunk_indexes)
        group(OP_ATTACHMENT_INDEX, self._attachment_indexes)
        group(OP_METADATA_INDEX, self._metadata_indexes)
        offsets_start = self._position
        offsets = b"".join(
            _record(OP_SUMMARY_OFFSET, bytes([opcode]) + _U64.pack(start) + _U64.pack(length))
            for opcode, start, length in groups
        )
        summary_crc = zlib.crc32(offsets, summary_crc)
        self._write(offsets)
        footer_fields = _U64.pack(summary_start) + _U64.pack(offsets_start)
        footer_head = _RECORD_HEAD.pack(OP_FOOTER, len(footer_fields) + 4)
        summary_crc = zlib.crc32(footer_head + footer_fields, summary_crc)
        self._write(footer_head + footer_fields + _U32.pack(summary_crc))
        self._write(MAGIC)
        self._stream.flush()

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.write(data)
        self._position += len(data)
