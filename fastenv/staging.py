"""Tensors between a device and host memory: what is sent is staged to the host, what is received placed on a device.

Sending: every tensor of a message that lives on a device is copied to host
memory before the message is packed (:func:`staged`): each into pinned
memory, without waiting, and then each device is synchronised once, so a
message waits for its device once, however many tensors it holds.

Receiving: ``FastRemoteEnv(..., device="cuda:0")`` copies every received
tensor to the device (:func:`to_device`), queued on the current stream
without waiting: work the caller then queues on that stream runs after the
copies. A small tensor is copied straight from the received memory (CUDA
reads pageable memory before the call returns); a large one through a
pinned copy, which the device reads at full speed (torch's host allocator
reuses the pinned block only once that copy is done).

On an H200 host (``benchmarks/bench_cuda_staging.py``) one pinned copy per
tensor beat one gathered block (a gathering kernel and one copy) for
camera frames and tied for small tensors, and small tensors arrived sooner
from pageable memory than through pinned copies.
"""

from __future__ import annotations

import sys
from typing import Any

from fastenv.errors import EncodeError
from fastenv.tensors import map_tensors

PINNED_PLACEMENT_MIN = 256 * 1024  # bytes: a received tensor this large goes to the device through pinned memory


def _host_copy(torch: Any, tensor: Any) -> tuple[Any, bool]:
    """An uninitialised host tensor like ``tensor``, pinned where this process can pin memory; and whether it is."""
    try:
        return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True), True
    except RuntimeError:  # no device driver here: pageable memory, and copies that complete on return
        return torch.empty(tensor.shape, dtype=tensor.dtype), False


# ----------------------------------------------------------------------------- sending


class HostCopies:
    """Pinned host copies of device tensors, queued without waiting; :meth:`wait` once before reading any.

    The codec copies each device tensor of a message as it meets it
    (whatever holds it: a registered type, a set), then waits once.
    """

    def __init__(self) -> None:
        self._torch = sys.modules["torch"]
        self._devices: list[Any] = []

    def copy(self, tensor: Any) -> Any:
        """A host tensor that holds ``tensor``'s values once :meth:`wait` has returned."""
        if tensor.device.type == "meta":
            raise EncodeError("cannot send a torch tensor on the meta device: it has no values")
        host, pinned = _host_copy(self._torch, tensor)
        host.copy_(tensor.detach(), non_blocking=pinned)
        if pinned and tensor.device not in self._devices:
            self._devices.append(tensor.device)
        return host

    def wait(self) -> None:
        """Wait, once per device, for the copies queued so far."""
        devices, self._devices = self._devices, []
        for device in devices:
            _synchronize(self._torch, device)


def staged(value: Any) -> Any:
    """``value`` with every tensor on a device replaced by a host copy, with one synchronisation per device.

    Walks what :func:`~fastenv.tensors.map_tensors` walks (containers and
    dataclasses); a tensor already in host memory is kept as it is. Raises
    :class:`~fastenv.errors.EncodeError` for a tensor on the meta device.
    """
    found: dict[int, Any] = {}

    def collect(tensor: Any) -> Any:
        if tensor.device.type != "cpu":
            found[id(tensor)] = tensor
        return tensor

    map_tensors(value, collect)
    if not found:
        return value
    copies = HostCopies()
    hosts = {key: copies.copy(tensor) for key, tensor in found.items()}
    copies.wait()
    return map_tensors(value, lambda tensor: hosts.get(id(tensor), tensor))


def _synchronize(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return
    synchronize = getattr(getattr(torch, device.type, None), "synchronize", None)
    if synchronize is not None:
        synchronize()


# ----------------------------------------------------------------------------- receiving


def to_device(value: Any, device: Any) -> Any:
    """``value`` with every tensor copied to ``device`` (a received value is the caller's: these are copies)."""
    torch = sys.modules["torch"]
    target = torch.device(device)
    if target.type != "cuda":
        return map_tensors(value, lambda tensor: tensor.to(target))
    return map_tensors(value, lambda tensor: _to_cuda(torch, tensor, target))


def _to_cuda(torch: Any, tensor: Any, target: Any) -> Any:
    """``tensor`` copied to CUDA device ``target`` without waiting for the copy."""
    if tensor.device.type != "cpu":
        return tensor.to(target)
    if tensor.numel() * tensor.element_size() < PINNED_PLACEMENT_MIN:
        return tensor.to(target, non_blocking=True)  # pageable memory is read before this returns
    host, pinned = _host_copy(torch, tensor)
    return host.copy_(tensor).to(target, non_blocking=pinned)
