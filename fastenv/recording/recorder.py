"""Recording a server's calls to an MCAP file without slowing its sessions.

The call path (:meth:`Recorder.record`, run by the dispatcher under the env's
lock) does only what must happen before the env's next step may overwrite
its arrays: it packs ``(args, kwargs, result)`` with the call's compiled
layout into a buffer taken from a free list (a struct pack and one copy per
array, in C) and appends it to a queue. A writer thread turns queued records
into MCAP messages and returns their buffers.

The queue is bounded twice: by records and by the bytes of buffers in use.
When the disk is slower than the loop, the queue fills and further calls are
*dropped* (counted in :attr:`Recorder.dropped`; a recording's sequence
numbers show where), never waited for: a step is never stalled by the disk.
A disk that fails (full, gone) ends the recording: the error is logged,
:attr:`Recorder.failure` says why, and every later call counts as dropped.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from fastenv import envinfo
from fastenv import layout as layout_module
from fastenv._version import __version__
from fastenv.errors import FastEnvError, ServerConfigError
from fastenv.layout import Layout, LayoutMismatch, copy_strided
from fastenv.layout_spec import infer_spec
from fastenv.recording import format as fmt
from fastenv.recording.mcap_writer import McapWriter

log = logging.getLogger("fastenv.recording")

DEFAULT_MAX_RECORDS = 4096  # records waiting for the writer before calls are dropped
DEFAULT_MAX_BYTES = 256 << 20  # bytes of record buffers in use before calls are dropped
MAX_LAYOUTS_PER_METHOD = 32  # past this many structures of one method's calls, the codec encodes them
CHUNK_BYTES = 256 << 10  # MCAP chunk size: what a crash or a failing disk can lose
WRITER_POLL_S = 0.0005  # how long the writer sleeps when the queue is empty
WRITE_BATCH = 1024  # most records the writer takes from the queue at once
LARGE_RECORD_BYTES = 64 << 10  # records from this size on are written as chunks of their own
WRITER_CPU_SHARE = 0.25  # the writer rests between batches so as to use at most this share of a core
WRITER_WORK_S = 0.002  # seconds of work between two rests
_REST_PER_WORK = (1 - WRITER_CPU_SHARE) / WRITER_CPU_SHARE
_time_ns = time.time_ns


@dataclass(eq=False)
class _Channel:
    """Where one kind of call goes: one session's calls of one method with one structure and outcome."""

    session: str
    method: str
    fallback: bool
    outcome: str  # "ok" or "error"
    layout: Layout | None  # None: values go through the codec
    free: list[tuple[bytearray, list[np.ndarray]]] = field(default_factory=list)
    images: list[tuple[int, str, str]] = field(default_factory=list)  # (array index, path, encoding)
    retired: bool = False  # replaced by a channel of a newer structure: its buffers are not reused
    mcap_id: int | None = None  # set by the writer thread
    image_ids: list[int] = field(default_factory=list)


class Recorder:
    """Records every call of a server's sessions to an MCAP file (``fastenv serve --record PATH``).

    Args:
        path: the file to write (created or truncated; a FIFO works too).
        mode: the server's mode, kept in the recording for replay.
        target: what the server serves, kept in the recording for people.
        max_records: records waiting for the writer before calls are dropped.
        max_bytes: bytes of record buffers in use before calls are dropped.

    Attributes:
        recorded: calls written to the file.
        dropped: calls not recorded because the writer was behind or had failed.
        failure: why the writer stopped (None while it works).
    """

    def __init__(
        self,
        path: str,
        *,
        mode: str = "shared",
        target: str = "",
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        try:
            self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by the writer thread or close())
        except OSError as exc:
            raise ServerConfigError(f"cannot record to {path}: {exc.strerror}") from exc
        self.path = path
        self.recorded = 0
        self.dropped = 0
        self.failure: str | None = None
        self._room = max_records  # records the queue may hold before calls are dropped (0 once the writer failed)
        self._max_bytes = max_bytes
        self._allocated = 0
        self._lock = threading.Lock()  # the slow path: new channels and buffers
        self._queue: collections.deque[tuple] = collections.deque()
        self._channels: dict[tuple[str, str, bool], _Channel] = {}
        self._layouts: dict[tuple[str, str, bool], dict[str, Layout]] = {}
        self._envs: dict[int, int] = {}  # id of an env handle -> its number in the recording
        self._sessions: set[str] = set()
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._closed = False
        self._writer = McapWriter(
            self._file, profile=fmt.PROFILE, library=f"fastenv {__version__}", chunk_size=CHUNK_BYTES
        )
        self._header = {"version": fmt.FORMAT_VERSION, "fastenv": __version__, "mode": mode, "target": target}
        self._thread = threading.Thread(target=self._run, name="fastenv-recorder", daemon=True)
        self._thread.start()

    @property
    def bytes_written(self) -> int:
        """Bytes of MCAP written to the file so far (chunks as compressed)."""
        return self._writer.position

    @property
    def queued(self) -> int:
        """Records waiting for the writer."""
        return len(self._queue)

    # ------------------------------------------------------------------ the call path

    def record(self, session: Any, name: str, args: tuple, kwargs: dict, result: Any, fallback: bool = False) -> None:
        """Queue one call that returned ``result`` (never blocks; a full queue drops it)."""
        seq = next(self._seq)
        queue = self._queue
        if len(queue) >= self._room:
            self.dropped += 1
            return
        channel = self._channels.get((session.session_id, name, fallback))
        if channel is not None and channel.layout is not None:
            free = channel.free
            record = free.pop() if free else self._new_buffer(channel)
            if record is None:
                self.dropped += 1
                return
            program = channel.layout.program
            if program is not None:  # the C packer, called directly: this runs on every step
                packed = layout_module.native_pack(program, record[0], 0, (args, kwargs, result), record[1], copy_strided)
            else:
                packed = _pack_in_python(channel.layout, record, (args, kwargs, result))
            if packed:
                queue.append((channel, record, seq, _time_ns()))
                return
            free.append(record)
        self._record_slow(session, name, args, kwargs, result, fallback, seq)

    def record_error(self, session: Any, name: str, args: tuple, kwargs: dict, error: dict, fallback: bool = False) -> None:
        """Queue one call the env raised from (``error``: the error body sent to the client)."""
        seq = next(self._seq)
        if len(self._queue) >= self._room:
            self.dropped += 1
            return
        with self._lock:
            self._describe(session)
            key = (session.session_id, name, fallback)
            channel = _Channel(session.session_id, name, fallback, "error", None)
        self._queue_encoded(channel, (args, kwargs, error), seq, key)

    def _record_slow(
        self, session: Any, name: str, args: tuple, kwargs: dict, result: Any, fallback: bool, seq: int
    ) -> None:
        """A session's first call of a method, or a call whose structure changed: find or make its channel."""
        key = (session.session_id, name, fallback)
        value = (args, kwargs, result)
        with self._lock:
            self._describe(session)
            old = self._channels.get(key)
            if old is not None:
                self._retire(old)
            layouts = self._layouts.setdefault(key, {})
            channel = _Channel(session.session_id, name, fallback, "ok", None)
            try:
                spec = infer_spec(value)
                spec_key = repr(spec)
                layout = layouts.get(spec_key)
                if layout is None and len(layouts) < MAX_LAYOUTS_PER_METHOD:
                    layout = layouts[spec_key] = Layout(spec)
                channel.layout = layout
            except (LayoutMismatch, ValueError, TypeError):  # no fixed layout: the codec encodes it
                pass
            self._channels[key] = channel
            if channel.layout is not None:
                channel.images = _image_arrays(channel.layout, name)
                record = self._new_buffer(channel, locked=True)
                if record is not None:
                    try:
                        channel.layout.pack_into(record[0], 0, value, record[1])
                    except Exception:  # a tensor the layout cannot copy (on a device): the codec stages it
                        channel.layout = None
                    else:
                        self._queue.append((channel, record, seq, _time_ns()))
                        return
                else:
                    self.dropped += 1
                    return
        self._queue_encoded(channel, value, seq, key)

    def _queue_encoded(self, channel: _Channel, value: Any, seq: int, key: tuple) -> None:
        try:
            data = fmt.encode_value(value)
        except FastEnvError as exc:
            self.dropped += 1
            log.warning("a %s call of session %s cannot be recorded: %s", key[1], key[0], exc)
            return
        self._queue.append((channel, data, seq, _time_ns()))

    def _describe(self, session: Any) -> None:
        """Queue a session's env description the first time it calls (lock held)."""
        if session.session_id in self._sessions:
            return
        self._sessions.add(session.session_id)
        env_number = self._envs.setdefault(id(session.handle), len(self._envs))
        try:
            description = envinfo.describe(session.env)
        except Exception:  # an env whose attributes cannot be read: replay serves it without them
            log.exception("cannot describe the env of session %s for the recording", session.session_id)
            description = {}
        try:
            data = fmt.encode_value({"session": session.session_id, "env": env_number, "description": description})
        except FastEnvError:
            data = fmt.encode_value({"session": session.session_id, "env": env_number, "description": {}})
        self._queue.append(("description", session.session_id, data))

    def _new_buffer(self, channel: _Channel, locked: bool = False) -> tuple[bytearray, list[np.ndarray]] | None:
        """A record buffer for ``channel``'s layout, or None when the buffers in use reach the bound."""
        assert channel.layout is not None
        size = max(channel.layout.size, 1)
        if not locked:
            with self._lock:
                return self._new_buffer(channel, locked=True)
        if self._allocated + size > self._max_bytes:
            return None
        self._allocated += size
        buffer = bytearray(size)
        return buffer, channel.layout.views(buffer, 0)

    def _retire(self, channel: _Channel) -> None:
        """Stop reusing ``channel``'s buffers (lock held): its structure gave way to another."""
        channel.retired = True
        for buffer, _ in channel.free:
            self._allocated -= len(buffer)
        channel.free.clear()

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        queue = self._queue
        try:
            self._writer.start()
            self._writer.add_metadata(fmt.RECORDING_METADATA, self._header)
            self._image_schema: int | None = None
            self._schemas: dict[int, int] = {}
            worked = 0.0  # seconds of writing since the writer last rested
            while True:
                if not queue:
                    if self._stop.is_set():
                        break
                    time.sleep(WRITER_POLL_S)
                    continue
                popleft = queue.popleft
                began = time.perf_counter()
                self._write_batch([popleft() for _ in range(min(len(queue), WRITE_BATCH))])
                # At most WRITER_CPU_SHARE of a core: past it the queue fills and calls are dropped,
                # rather than the writer taking a core the sessions' threads (and their clients) need.
                # It rests once per WRITER_WORK_S of work, so light loads see no extra wake-ups.
                worked += time.perf_counter() - began
                if worked >= WRITER_WORK_S:
                    time.sleep(worked * _REST_PER_WORK)
                    worked = 0.0
            self._writer.add_metadata(
                fmt.SUMMARY_METADATA, {"recorded": str(self.recorded), "dropped": str(self.dropped + len(queue))}
            )
            self._writer.finish()
            self._file.close()
        except OSError as exc:
            self._fail(f"{exc.strerror or exc}")
        except Exception as exc:  # the recording must never take the server down
            log.exception("the recorder stopped")
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, reason: str) -> None:
        self._room = 0  # every later call is dropped
        self.failure = reason
        self.dropped += len(self._queue)
        self._queue.clear()
        log.error("recording to %s stopped: %s; later calls are not recorded", self.path, reason)
        try:
            self._file.close()
        except OSError:
            pass

    def _write_batch(self, batch: list[tuple]) -> None:
        """Write queued records: each run of one channel's packed calls (without images) at once, the rest one by one."""
        run: _Channel | None = None
        records: list[tuple[bytearray, list[np.ndarray]]] = []
        sequences: list[int] = []
        stamps: list[int] = []
        for item in batch:
            channel = item[0]
            if channel is not run:
                if run is not None:
                    self._write_run(run, records, sequences, stamps)
                    records, sequences, stamps = [], [], []
                if channel == "description" or channel.layout is None or channel.images:
                    run = None
                    self._write(item)
                    continue
                run = channel
            records.append(item[1])
            sequences.append(item[2])
            stamps.append(item[3])
        if run is not None:
            self._write_run(run, records, sequences, stamps)

    def _write_run(
        self, channel: _Channel, records: list[tuple[bytearray, list[np.ndarray]]], sequences: list[int], stamps: list[int]
    ) -> None:
        """Write consecutive packed calls of ``channel`` as one block of messages, then recycle their buffers."""
        if channel.mcap_id is None:
            self._register(channel)
        assert channel.layout is not None
        try:
            self._writer.add_messages(
                channel.mcap_id, sequences, stamps, [buffer for buffer, _ in records], max(channel.layout.size, 1)
            )
        finally:
            if channel.retired:
                with self._lock:
                    self._allocated -= sum(len(buffer) for buffer, _ in records)
            else:
                channel.free.extend(records)
        self.recorded += len(records)

    def _write(self, item: tuple) -> None:
        if item[0] == "description":
            _, session_id, data = item
            self._writer.add_attachment(fmt.DESCRIPTION_PREFIX + session_id, "application/x-fastenv-codec", data)
            return
        channel, payload, seq, stamp = item
        if channel.mcap_id is None:
            self._register(channel)
        if channel.layout is None:
            self._writer.add_message(channel.mcap_id, seq, stamp, payload)
        else:
            buffer, views = payload
            try:
                if len(buffer) >= LARGE_RECORD_BYTES:  # written as they are: no copy, no GIL held
                    self._writer.add_large_message(channel.mcap_id, seq, stamp, [buffer])
                else:
                    self._writer.add_message(channel.mcap_id, seq, stamp, buffer)
                for (index, path, encoding), image_id in zip(channel.images, channel.image_ids):
                    frame = fmt.image_message_parts(views[index], encoding, stamp, path)
                    self._writer.add_large_message(image_id, seq, stamp, frame)
            finally:
                if channel.retired:
                    with self._lock:
                        self._allocated -= len(buffer)
                else:
                    channel.free.append(payload)
        self.recorded += 1

    def _register(self, channel: _Channel) -> None:
        """Register ``channel`` (and its image topics) with the MCAP writer."""
        writer = self._writer
        metadata = {
            "session": channel.session,
            "method": channel.method,
            "fallback": "true" if channel.fallback else "false",
            "outcome": channel.outcome,
        }
        topic = fmt.call_topic(channel.method)
        if channel.layout is None:
            channel.mcap_id = writer.add_channel(topic, fmt.CODEC_ENCODING, 0, metadata)
            return
        schema = self._schemas.get(id(channel.layout))
        if schema is None:
            schema = writer.add_schema(
                f"fastenv.layout/{len(self._schemas)}", fmt.LAYOUT_ENCODING, fmt.encode_value(channel.layout.spec)
            )
            self._schemas[id(channel.layout)] = schema
        channel.mcap_id = writer.add_channel(topic, fmt.LAYOUT_ENCODING, schema, metadata)
        if channel.images and self._image_schema is None:
            self._image_schema = writer.add_schema(fmt.IMAGE_SCHEMA_NAME, fmt.IMAGE_SCHEMA_ENCODING, fmt.IMAGE_SCHEMA)
        for _, path, _ in channel.images:
            channel.image_ids.append(
                writer.add_channel(f"{topic}/{path}", fmt.IMAGE_MESSAGE_ENCODING, self._image_schema, metadata)
            )

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, finish the file and stop the writer (idempotent).

        A writer still blocked after ``timeout`` (a disk or pipe that stopped
        taking data) is left behind; the recording then has no summary.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the recording to %s did not finish within %g s: its disk is not taking data", self.path, timeout)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pack_in_python(layout: Layout, record: tuple[bytearray, list[np.ndarray]], value: Any) -> bool:
    """``value`` packed into ``record`` by the pure-Python packer; False when it does not fit the layout."""
    try:
        layout.pack_into(record[0], 0, value, record[1])
    except LayoutMismatch:
        return False
    return True


def _image_arrays(layout: Layout, method: str) -> list[tuple[int, str, str]]:
    """The arrays of a call's layout that are camera frames: ``(array index, topic path, encoding)``."""
    found = []
    for index, (path, (dtype, shape, _order, _offset)) in enumerate(zip(fmt.array_paths(layout.spec), layout.arrays)):
        encoding = fmt.image_encoding(dtype, shape)
        if encoding is not None and path.startswith("2"):  # results only (path 0: args, 1: kwargs)
            found.append((index, "result" + path[1:], encoding))
    return found

