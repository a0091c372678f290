"""Device tensors are staged to host memory by the sender: pinned copies, one synchronisation per message.

The codec and both compiled-layout encoders are checked in this process,
counting ``torch.cuda.synchronize`` calls; the round trips through a real
server are in the tensor conformance suite. Without a CUDA device only the
fallback (no pinned memory) runs here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fastenv import codec
from fastenv.errors import EncodeError
from fastenv.staging import PINNED_PLACEMENT_MIN, staged, to_device
from fastenv.tcp.layouts import StreamDecoder, StreamEncoder

torch = pytest.importorskip("torch")

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (none here)"
)


def _message(device: str) -> dict[str, Any]:
    """Several tensors on ``device``, in nested containers, one of them transposed and one bfloat16."""
    generator = torch.Generator().manual_seed(3)
    return {
        "policy": [torch.randn(64, generator=generator).to(device) for _ in range(6)],
        "camera": torch.randint(
            0, 255, (48, 64, 3), dtype=torch.uint8, generator=generator
        ).to(device),
        "joints": torch.randn(7, 5, generator=generator).to(device).T,
        "half": torch.ones(4, dtype=torch.bfloat16, device=device),
    }


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _assert_equal_on_host(got: Any, sent: Any) -> None:
    for out, tensor in zip(_leaves(got), _leaves(sent), strict=True):
        assert type(out) is torch.Tensor and out.device.type == "cpu"
        assert out.dtype == tensor.dtype and out.shape == tensor.shape
        assert torch.equal(out, tensor.cpu())


@pytest.fixture
def synchronisations(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The devices ``torch.cuda.synchronize`` was called for, in order (it still synchronises)."""
    calls: list[Any] = []
    real = torch.cuda.synchronize

    def counted(device: Any = None) -> None:
        calls.append(device)
        real(device)

    monkeypatch.setattr(torch.cuda, "synchronize", counted)
    return calls


@needs_cuda
def test_the_codec_synchronises_once_per_message(synchronisations: list[Any]) -> None:
    message = _message("cuda:0")
    for _ in range(3):
        synchronisations.clear()
        skeleton, buffers = codec.encode(message)
        assert len(synchronisations) == 1, synchronisations
        _assert_equal_on_host(codec.decode(skeleton, buffers), message)


class _Trajectory:
    """A user type the codec carries through register_type: its tensors are reached only through to_data."""

    def __init__(self, steps: Any) -> None:
        self.steps = steps


codec.register_type(_Trajectory, "test_staging.Trajectory", lambda t: {"steps": t.steps}, lambda d: _Trajectory(d["steps"]))


@needs_cuda
def test_device_tensors_inside_registered_types_and_sets_are_staged(synchronisations: list[Any]) -> None:
    """The codec stages every device tensor it meets, wherever it is held, and still waits once."""
    generator = torch.Generator().manual_seed(5)
    tensors = [torch.randn(3, generator=generator).to("cuda:0") for _ in range(3)]
    value = {"trajectory": _Trajectory([tensors[0], tensors[1]]), "set": frozenset([tensors[2]])}
    skeleton, buffers = codec.encode(value)
    assert len(synchronisations) == 1, synchronisations
    out = codec.decode(skeleton, buffers)
    _assert_equal_on_host(out["trajectory"].steps, tensors[:2])
    (received,) = out["set"]
    assert torch.equal(received, tensors[2].cpu())


@needs_cuda
def test_a_compiled_layout_stages_the_whole_message_once(
    synchronisations: list[Any],
) -> None:
    message = _message("cuda:0")
    encoder, decoder = StreamEncoder(), StreamDecoder(codec.DEFAULT_LIMITS)
    for sent in range(
        4
    ):  # the first message defines the layout, the others are packed by it
        synchronisations.clear()
        skeleton, buffers, flags, layout_id = encoder.encode("step", message)
        assert len(synchronisations) == 1, (sent, synchronisations)
        wires = [
            np.frombuffer(bytes(memoryview(buffer).cast("B")), np.uint8)
            for buffer in buffers
        ]
        _assert_equal_on_host(
            decoder.decode(bytes(skeleton), wires, flags, layout_id), message
        )
        assert bool(layout_id) == (sent > 0)


@needs_cuda
def test_staged_copies_are_pinned_host_tensors(synchronisations: list[Any]) -> None:
    message = _message("cuda:0")
    copies = staged(message)
    assert len(synchronisations) == 1
    for copy in _leaves(copies):
        assert copy.device.type == "cpu" and copy.is_pinned()
    _assert_equal_on_host(copies, message)
    host = torch.arange(3.0)
    assert staged({"host": host})["host"] is host  # a host tensor is not copied


def test_host_tensors_are_sent_as_they_are(synchronisations: list[Any]) -> None:
    """Staging touches only device tensors: a host message is packed from its own memory, with no wait."""
    message = _message("cpu")
    encoder, decoder = StreamEncoder(), StreamDecoder(codec.DEFAULT_LIMITS)
    for _ in range(3):
        skeleton, buffers, flags, layout_id = encoder.encode("step", message)
        wires = [
            np.frombuffer(bytes(memoryview(buffer).cast("B")), np.uint8)
            for buffer in buffers
        ]
        _assert_equal_on_host(
            decoder.decode(bytes(skeleton), wires, flags, layout_id), message
        )
    host = torch.arange(3.0)
    assert staged({"host": host})["host"] is host
    assert synchronisations == []


def test_a_tensor_on_the_meta_device_is_refused() -> None:
    value = {"obs": torch.zeros(2, device="meta")}
    with pytest.raises(EncodeError, match="meta device"):
        codec.encode(value)
    with pytest.raises(EncodeError, match="meta device"):
        staged(value)


@needs_cuda
def test_received_tensors_are_placed_on_the_device() -> None:
    """Small tensors straight from received memory, large ones through pinned memory: each arrives equal."""
    frame = torch.randint(0, 255, (480, 640, 3), dtype=torch.uint8)
    assert frame.numel() >= PINNED_PLACEMENT_MIN
    received = {
        "frame": frame,
        "policy": torch.randn(4, 16),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "flags": torch.tensor([True, False, True]),
        "half": torch.ones(3, dtype=torch.bfloat16),
        "nested": [torch.arange(5, dtype=torch.int16), (torch.arange(3.0),)],
    }
    for _ in range(3):
        placed = to_device(received, "cuda:0")
        torch.cuda.synchronize()
        for got, sent in zip(_leaves(placed), _leaves(received), strict=True):
            assert got.device.type == "cuda" and got.dtype == sent.dtype and got.shape == sent.shape
            assert torch.equal(got.cpu(), sent)


@needs_cuda
def test_a_received_tensor_reused_at_once_was_already_read() -> None:
    """The memory a tensor was received in may be reused as soon as it is placed: the copy read it first."""
    for size in (64, PINNED_PLACEMENT_MIN):
        source = torch.arange(size, dtype=torch.uint8)
        expected = source.clone()
        placed = to_device({"obs": source}, "cuda:0")["obs"]
        source.fill_(7)  # a reply slot written again
        assert torch.equal(placed.cpu(), expected)
