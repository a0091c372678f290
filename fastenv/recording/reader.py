"""Reading a recording's calls back (see :mod:`fastenv.recording.format`).

Values are rebuilt by the data-only codec and the layout of each channel's
schema, validated as strictly as a peer's layout: reading a recording never
imports or calls anything it names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastenv.errors import DecodeError, FastEnvError, MissingDependency
from fastenv.layout import compile_spec
from fastenv.recording import format as fmt


class RecordingError(FastEnvError):
    """A file is not a fastenv recording, or it is damaged."""


@dataclass(frozen=True)
class RecordedCall:
    """One call of a recorded session.

    Attributes:
        seq: the server's call number (a gap before it: calls were dropped).
        session: the id of the session that made it.
        method: the env method called.
        args: its positional arguments.
        kwargs: its keyword arguments.
        ok: whether the env returned (False: it raised, and ``value`` is the error body).
        value: what the env returned, or the error body.
        fallback: whether the server made the call itself, as a missed deadline's fallback.
        time_ns: when it was recorded (Unix time, ns).
    """

    seq: int
    session: str
    method: str
    args: tuple
    kwargs: dict
    ok: bool
    value: Any
    fallback: bool
    time_ns: int


def _open_reader(stream: Any) -> Any:
    try:
        from mcap.reader import make_reader
    except ImportError as exc:
        raise MissingDependency('reading recordings needs the mcap package: pip install "fastenv[record]"') from exc
    return make_reader(stream)


def read_calls(path: str) -> Iterator[RecordedCall]:
    """Every recorded call of ``path``, in the order the server made them."""
    layouts: dict[int, Any] = {}
    with open(path, "rb") as stream:
        reader = _open_reader(stream)
        try:
            for schema, channel, message in reader.iter_messages(log_time_order=False):
                encoding = channel.message_encoding
                if encoding == fmt.LAYOUT_ENCODING and schema is not None:
                    layout = layouts.get(schema.id)
                    if layout is None:
                        layout = layouts[schema.id] = compile_spec(fmt.decode_value(schema.data))
                    data = bytearray(message.data)
                    if len(data) < layout.size:
                        raise RecordingError(f"message {message.sequence} is shorter than its layout")
                    value = layout.unpack(data, 0, layout.views(data, 0), True)
                elif encoding == fmt.CODEC_ENCODING:
                    value = fmt.decode_value(message.data)
                else:
                    continue  # camera frames and other views for people
                args, kwargs, result = value
                meta = channel.metadata
                yield RecordedCall(
                    seq=message.sequence,
                    session=meta.get("session", ""),
                    method=meta.get("method", ""),
                    args=tuple(args),
                    kwargs=dict(kwargs),
                    ok=meta.get("outcome", "ok") == "ok",
                    value=result,
                    fallback=meta.get("fallback") == "true",
                    time_ns=message.log_time,
                )
        except (DecodeError, ValueError, TypeError) as exc:
            raise RecordingError(f"{path}: {exc}") from exc


def read_metadata(path: str) -> dict[str, dict[str, str]]:
    """The recording's metadata records by name (``fastenv.recording``, ``fastenv.recording.summary``)."""
    with open(path, "rb") as stream:
        reader = _open_reader(stream)
        return {record.name: dict(record.metadata) for record in reader.iter_metadata()}


def read_descriptions(path: str) -> dict[str, dict[str, Any]]:
    """Each recorded session's ``{"env": number, "description": ...}`` by session id."""
    found: dict[str, dict[str, Any]] = {}
    with open(path, "rb") as stream:
        reader = _open_reader(stream)
        for attachment in reader.iter_attachments():
            if attachment.name.startswith(fmt.DESCRIPTION_PREFIX):
                value = fmt.decode_value(attachment.data)
                found[value["session"]] = value
    return found
