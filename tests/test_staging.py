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
from fastenv.tcp.layouts import StreamDecoder, StreamEncoder
from fastenv.tensors import STAGING, staged

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
    if isinstance(value, list):
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
    assert synchronisations == [] and STAGING.devices == []
