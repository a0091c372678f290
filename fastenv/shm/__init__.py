"""fastenv's shared-memory data plane.

:mod:`~fastenv.shm.arena` (segments and the envelope format),
:mod:`~fastenv.shm.doorbell` and :mod:`~fastenv.shm.futex` (waking the peer),
:mod:`~fastenv.shm.layouts` (compiled layouts in the arena),
:mod:`~fastenv.shm.client` and :mod:`~fastenv.shm.worker` (the two ends),
:mod:`~fastenv.shm.plane` (what the ends share).
"""

from fastenv.shm.doorbell import Doorbell

__all__ = ["Doorbell"]
