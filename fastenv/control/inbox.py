"""The server's inbox: control messages queued per client, served round-robin.

The control loop reads every message waiting on its ROUTER socket into one
queue per client (ZeroMQ routing id) and then handles them one client at a
time, in turn. So a client that floods the server delays only itself, and the
server can refuse a client's request beyond ``max_pending`` at once (with
:class:`~fastenv.errors.TooManyPending`, to that client only) instead of
letting its backlog grow.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

DEFAULT_CAPACITY = 4096  # messages held in all; beyond it the loop leaves them in ZeroMQ's queues


class Inbox:
    """Per-client FIFO queues of received messages, popped round-robin.

    Args:
        max_pending: most messages one client may have waiting.
        capacity: most messages held in all (:attr:`full` says when to stop reading).
    """

    def __init__(self, max_pending: int, capacity: int = DEFAULT_CAPACITY) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.capacity = capacity
        self._queues: OrderedDict[bytes, deque[Any]] = OrderedDict()
        self._count = 0

    def put(self, client: bytes, message: Any) -> bool:
        """Queue ``message`` from ``client``; False (nothing queued) if it already has ``max_pending``."""
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
        elif len(queue) >= self.max_pending:
            return False
        queue.append(message)
        self._count += 1
        return True

    def pop(self) -> Any | None:
        """The oldest message of the next client in turn, or None when empty."""
        if not self._queues:
            return None
        client, queue = next(iter(self._queues.items()))
        message = queue.popleft()
        self._count -= 1
        if queue:
            self._queues.move_to_end(client)
        else:
            del self._queues[client]
        return message

    def pending(self, client: bytes) -> int:
        """How many messages of ``client`` are waiting."""
        queue = self._queues.get(client)
        return len(queue) if queue is not None else 0

    @property
    def full(self) -> bool:
        """Whether the inbox holds ``capacity`` messages."""
        return self._count >= self.capacity

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0


__all__ = ["Inbox"]
