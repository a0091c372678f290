"""The lines the remote agent prints for the launcher.

The agent (:mod:`fastenv.launch.remote`) forwards everything the server
prints, and interleaves its own events as single lines
``fastenv-launch: {"event": ..., ...}`` (JSON). Only these lines drive the
launcher; everything else is log output.
"""

from __future__ import annotations

import json
from typing import Any

EVENT_PREFIX = "fastenv-launch: "

STARTED = "started"  # the server process exists: pid, pgid, log, pidfile
READY = "ready"  # it printed its ready line: address, port, data_port
CLEANED = "cleaned"  # cleanup_old ran: stopped (pids), stale (pid files of dead or reused pids)
EXITED = "exited"  # the server's process group is gone: code, stopped (on request)
FAILED = "failed"  # the agent could not start the server: message


def format_event(kind: str, **fields: Any) -> str:
    """One event line (no newline)."""
    return EVENT_PREFIX + json.dumps({"event": kind, **fields}, separators=(",", ":"))


def parse_event(line: str) -> dict[str, Any] | None:
    """The event of an event line; None for any other line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        value = json.loads(line[len(EVENT_PREFIX) :])
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("event"), str):
        return None
    return value
