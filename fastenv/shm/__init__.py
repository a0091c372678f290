"""fastenv's shared-memory data plane."""

from fastenv.shm.doorbell import Doorbell
from fastenv.shm.futex import BACKEND, backend_info

__all__ = ["BACKEND", "Doorbell", "backend_info"]
