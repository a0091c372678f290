"""One call per server, sent to every server before any answer is awaited.

:func:`start` sends a call on each :class:`~fastenv.FastRemoteEnv`
(``send_call``); :func:`gather` collects the answers in order
(``receive_result``) under one deadline, so the servers work at the same
time and the slowest one sets the pace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastenv.client import FastRemoteEnv
from fastenv.errors import FastEnvError


class PendingCall:
    """A call of ``name(*args, **kwargs)`` on ``remote``, sent by :func:`start`, answered by :func:`gather`."""

    __slots__ = ("args", "kwargs", "name", "remote", "sent")

    def __init__(self, remote: FastRemoteEnv, name: str, args: tuple, kwargs: dict[str, Any] | None) -> None:
        self.remote = remote
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.sent = False

    def send(self) -> None:
        """Put the call on the wire."""
        self.remote.send_call(self.name, self.args, self.kwargs)
        self.sent = True

    def result(self, timeout: float | None) -> Any:
        """The call's result; ``timeout`` None means the client's own timeout."""
        self.sent = False
        if timeout is None:
            return self.remote.receive_result()
        return self.remote.receive_result(timeout=timeout)

    def discard(self, timeout: float | None) -> None:
        """Read and drop the answer of a sent call, so its client is free for the next one."""
        if self.sent:
            try:
                self.result(timeout)
            except FastEnvError:
                pass  # the caller is already reporting another error


def start(calls: Sequence[PendingCall]) -> None:
    """Send every call; if one cannot be sent, drop the answers of those already sent and raise."""
    for index, call in enumerate(calls):
        try:
            call.send()
        except BaseException:
            for sent in calls[:index]:
                sent.discard(None)
            raise


def gather(calls: Sequence[PendingCall], timeout: float | None) -> list[Any]:
    """Answers of started calls, in order, all within ``timeout`` seconds (None: each client's own).

    If a call fails, the answers of the others are read and dropped (within
    what is left of ``timeout``) and the first error is raised.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    results: list[Any] = []
    for index, call in enumerate(calls):
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            results.append(call.result(remaining))
        except BaseException:
            for rest in calls[index + 1 :]:
                rest.discard(None if deadline is None else max(0.0, deadline - time.monotonic()))
            raise
    return results
