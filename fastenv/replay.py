"""Exactly-once calls across dropped connections.

Every call a client sends carries a sequence number that keeps counting
across reconnections. The server keeps, per session and path, the last call
it ran and the reply it produced. A call re-sent after a drop (same number)
is answered from that record, never run again, even when the first attempt
is still running in a worker whose connection died: the second attempt waits
for it and sends its reply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastenv.errors import ProtocolError

Reply = tuple[Any, Any]  # (kind or ok flag, value): whatever the path's executor returns


class StaleRequest(ProtocolError):
    """A request older than the last one the session ran (a duplicate from before a reconnection)."""


class ReplyRecord:
    """The last call of one session's path and its reply."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seq = 0
        self._running = False
        self._reply: Reply | None = None
        self.replayed = 0

    def run(self, seq: int, execute: Callable[[], Reply], check: Callable[[], None] | None = None) -> Reply:
        """Run call ``seq`` once; a repeat of the last call gets the recorded reply.

        ``check`` is called while waiting for a running first attempt (raise
        from it to give up, for example when the worker is stopping).
        """
        with self._cond:
            if seq < self.seq:
                raise StaleRequest(f"request {seq} is older than the last one run ({self.seq})")
            if seq == self.seq and self.seq:
                while self._running:
                    self._cond.wait(0.05)
                    if check is not None:
                        check()
                self.replayed += 1
                assert self._reply is not None
                return self._reply
            self.seq = seq
            self._running = True
            self._reply = None
        reply: Reply | None = None
        try:
            reply = execute()
            return reply
        finally:
            with self._cond:
                self._reply = reply if reply is not None else (False, None)
                self._running = False
                self._cond.notify_all()


__all__ = ["ReplyRecord", "StaleRequest"]
