"""fastenv's MCAP writer: files the official mcap reader opens, indexes and CRC-checks."""

from __future__ import annotations

import io
import struct

import pytest

pytest.importorskip("mcap", reason='reading recordings needs mcap (pip install "fastenv[record]")')

from mcap.reader import NonSeekingReader, make_reader
from mcap.stream_reader import StreamReader

from fastenv.recording.mcap_writer import McapWriter


def _write(*, compress: bool, chunk_size: int, messages: int) -> bytes:
    stream = io.BytesIO()
    writer = McapWriter(stream, profile="fastenv", library="test", chunk_size=chunk_size, compress=compress)
    writer.start()
    schema = writer.add_schema("layout/0", "fastenv.layout", b"spec bytes")
    first = writer.add_channel("/fastenv/step", "fastenv.layout", schema, {"session": "a", "method": "step"})
    second = writer.add_channel("/fastenv/reset", "fastenv.codec", 0, {})
    for number in range(messages):
        channel = second if number % 4 == 0 else first
        writer.add_message(channel, number + 1, 1_000 + number, bytes([number % 256]) * (number % 97))
        if number == messages // 2:
            writer.add_attachment("description/a", "application/x-fastenv-codec", b"described", 7, 8)
            writer.add_metadata("fastenv.recording", {"version": "1"})
    writer.finish()
    return stream.getvalue()


@pytest.mark.parametrize("compress", [True, False], ids=["lz4", "uncompressed"])
@pytest.mark.parametrize("chunk_size", [512, 1 << 20], ids=["many-chunks", "one-chunk"])
def test_the_mcap_reader_reads_back_every_message_and_record(compress: bool, chunk_size: int) -> None:
    data = _write(compress=compress, chunk_size=chunk_size, messages=200)

    reader = make_reader(io.BytesIO(data))
    read = [(channel.topic, message.sequence, message.log_time, message.data) for _, channel, message in reader.iter_messages()]
    assert len(read) == 200
    for number, (topic, sequence, log_time, payload) in enumerate(read):
        assert topic == ("/fastenv/reset" if number % 4 == 0 else "/fastenv/step")
        assert (sequence, log_time) == (number + 1, 1_000 + number)
        assert payload == bytes([number % 256]) * (number % 97)

    summary = reader.get_summary()
    assert summary is not None
    assert summary.statistics.message_count == 200
    assert summary.statistics.channel_message_counts == {0: 150, 1: 50}
    assert (summary.statistics.message_start_time, summary.statistics.message_end_time) == (1_000, 1_199)
    assert summary.schemas[1].data == b"spec bytes"
    assert summary.channels[0].metadata == {"session": "a", "method": "step"}
    assert len(summary.chunk_indexes) == summary.statistics.chunk_count >= (2 if chunk_size == 512 else 1)
    assert [(a.name, a.data, a.log_time) for a in reader.iter_attachments()] == [("description/a", b"described", 7)]
    assert [(m.name, m.metadata) for m in reader.iter_metadata()] == [("fastenv.recording", {"version": "1"})]

    # Read front to back with every CRC checked: the data section's, each chunk's.
    assert len(list(NonSeekingReader(io.BytesIO(data), validate_crcs=True).iter_messages())) == 200
    assert sum(1 for _ in StreamReader(io.BytesIO(data), validate_crcs=True).records) > 200


def test_a_file_with_no_messages_is_still_a_valid_recording() -> None:
    stream = io.BytesIO()
    writer = McapWriter(stream, profile="fastenv", library="test")
    writer.start()
    writer.add_metadata("fastenv.recording", {"version": "1"})
    writer.finish()

    reader = make_reader(io.BytesIO(stream.getvalue()))
    assert list(reader.iter_messages()) == []
    assert reader.get_summary().statistics.message_count == 0
    assert [m.name for m in reader.iter_metadata()] == ["fastenv.recording"]


def test_a_message_index_points_at_each_message_of_its_chunk() -> None:
    lz4 = pytest.importorskip("lz4")
    import lz4.frame
    from mcap.records import Chunk, MessageIndex

    data = _write(compress=True, chunk_size=2048, messages=60)
    records = list(StreamReader(io.BytesIO(data), emit_chunks=True).records)
    seen = 0
    chunk = None
    for record in records:
        if isinstance(record, Chunk):
            chunk = lz4.frame.decompress(record.data) if record.compression == "lz4" else record.data
        elif isinstance(record, MessageIndex):
            assert chunk is not None
            for log_time, offset in record.records:
                opcode, _length, channel, _sequence, stamp = struct.unpack_from("<BQHIQ", chunk, offset)
                assert (opcode, channel, stamp) == (0x05, record.channel_id, log_time)
                seen += 1
    assert seen == 60


@pytest.mark.parametrize("chunk_size", [700, 1 << 20], ids=["split-across-chunks", "one-chunk"])
def test_a_block_of_fixed_size_messages_reads_back_like_single_ones(chunk_size: int) -> None:
    stream = io.BytesIO()
    writer = McapWriter(stream, profile="fastenv", library="test", chunk_size=chunk_size)
    writer.start()
    single = writer.add_channel("/fastenv/reset", "fastenv.codec", 0, {})
    block = writer.add_channel("/fastenv/step", "fastenv.layout", 0, {})
    writer.add_message(single, 1, 10, b"reset")
    payloads = [bytearray([number]) * 24 for number in range(50)]
    writer.add_messages(block, list(range(2, 32)), list(range(11, 41)), payloads[:30], 24)
    writer.add_messages(block, list(range(32, 52)), list(range(41, 61)), payloads[30:], 24)
    writer.add_messages(block, [], [], [], 24)  # nothing to write
    writer.add_message(single, 2**32 + 5, 90, b"again")  # sequences wrap to u32 as MCAP has them
    writer.finish()

    reader = make_reader(io.BytesIO(stream.getvalue()))
    read = [(channel.topic, message.sequence, message.log_time, message.data) for _, channel, message in reader.iter_messages()]
    assert read[0] == ("/fastenv/reset", 1, 10, b"reset")
    assert read[1:51] == [("/fastenv/step", 2 + n, 11 + n, bytes([n]) * 24) for n in range(50)]
    assert read[51] == ("/fastenv/reset", 5, 90, b"again")
    assert reader.get_summary().statistics.channel_message_counts == {0: 2, 1: 50}
    assert len(list(NonSeekingReader(io.BytesIO(stream.getvalue()), validate_crcs=True).iter_messages())) == 52


def test_a_large_message_is_a_chunk_of_its_own_written_from_its_pieces() -> None:
    stream = io.BytesIO()
    writer = McapWriter(stream, profile="fastenv", library="test")
    writer.start()
    camera = writer.add_channel("/fastenv/step/result/image", "cdr", 0, {})
    step = writer.add_channel("/fastenv/step", "fastenv.layout", 0, {})
    frame = bytearray(range(256)) * 1024  # 256 KB
    writer.add_message(step, 1, 100, b"before")
    writer.add_large_message(camera, 1, 100, [b"header", memoryview(frame)])
    writer.add_message(step, 2, 200, b"after")
    writer.finish()

    data = stream.getvalue()
    reader = make_reader(io.BytesIO(data))
    read = [(channel.topic, message.sequence, message.data) for _, channel, message in reader.iter_messages()]
    assert read == [
        ("/fastenv/step", 1, b"before"),
        ("/fastenv/step/result/image", 1, b"header" + bytes(frame)),
        ("/fastenv/step", 2, b"after"),
    ]
    summary = reader.get_summary()
    assert summary.statistics.chunk_count == 3 and summary.statistics.channel_message_counts == {0: 1, 1: 2}
    assert [index.compression for index in summary.chunk_indexes] == ["lz4", "", "lz4"]
    assert len(list(NonSeekingReader(io.BytesIO(data), validate_crcs=True).iter_messages())) == 3
