"""Compiled layouts: the C packer and the pure-Python one agree, and both refuse what does not fit."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
from assertions import assert_same

from fastenv import codec
from fastenv import layout as layout_module
from fastenv.errors import DecodeError
from fastenv.layout import ChangedView, Layout, LayoutMismatch
from fastenv.layout_spec import infer_spec
from fastenv.negotiation import ReceivedLayouts, SentLayouts
from fastenv.tcp.format import FLAG_LAYOUT, FLAG_LAYOUT_DEF
from fastenv.tcp.layouts import StreamDecoder, StreamEncoder

# Both packers when the C one is in use; the Python packer alone otherwise.
BACKENDS = [True, False] if layout_module._native_layout is not None else [False]


@pytest.fixture(params=BACKENDS, ids=lambda native: "c-packer" if native else "python-packer")
def native(request) -> bool:
    return request.param


def _step_result() -> Any:
    return (np.arange(4, dtype=np.float32), -0.5, False, True, {})


def _rich_value() -> Any:
    return {
        "image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "strided": np.arange(10, dtype=np.int32)[::2],
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalars": (1, 2.5, True, None, "text", b"bytes", -(2**63)),
        "numpy": [np.float32(1.5), np.float16(0.25), np.uint64(2**64 - 1), np.int8(-3), np.bool_(True)],
        "nested": OrderedDict([("b", [1, {"c": 2.0}]), ("a", ())]),
    }


VALUES = [_step_result(), _rich_value(), ("step", (np.ones(20, np.float32),), {}), [], {}, 7]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_pack_then_unpack_gives_the_same_value_and_types(native: bool, value: Any) -> None:
    layout = Layout(infer_spec(value), native=native)
    assert layout.native is native
    buffer = bytearray(layout.size + 128)
    views = layout.views(buffer, 64)
    layout.pack_into(buffer, 64, value, views)
    for copy in (False, True):
        assert_same(layout.unpack(buffer, 64, views, copy), value)


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_c_and_python_packers_write_the_same_bytes(value: Any) -> None:
    if BACKENDS == [False]:
        pytest.skip("fastenv._layout is not built")
    spec = infer_spec(value)
    written = []
    for native in (True, False):
        layout = Layout(spec, native=native)
        buffer = bytearray(layout.size)
        layout.pack_into(buffer, 0, value, layout.views(buffer, 0))
        scratch = bytearray(layout.scalars.size)
        arrays = layout.extract_into(scratch, value)
        assert len(arrays) == len(layout.arrays)
        written.append((bytes(buffer), bytes(scratch)))
    assert written[0] == written[1]


@pytest.mark.parametrize(
    "changed",
    [
        lambda v: (v[0].astype(np.float64),) + v[1:],  # dtype
        lambda v: (v[0][:3].copy(),) + v[1:],  # shape
        lambda v: (v[0], 1) + v[2:],  # int where a float was
        lambda v: (v[0], -0.5, 0) + v[3:],  # int where a bool was
        lambda v: v[:4],  # length
        lambda v: list(v),  # list where a tuple was
        lambda v: v[:4] + ({"extra": 1},),  # dict keys
        lambda v: (v[0].tolist(),) + v[1:],  # list where an array was
    ],
)
def test_a_value_of_another_structure_is_refused(native: bool, changed: Any) -> None:
    value = _step_result()
    layout = Layout(infer_spec(value), native=native)
    buffer = bytearray(layout.size)
    views = layout.views(buffer, 0)
    with pytest.raises(LayoutMismatch):
        layout.pack_into(buffer, 0, changed(value), views)
    with pytest.raises(LayoutMismatch):
        layout.extract_into(bytearray(layout.scalars.size), changed(value))


def test_dict_key_order_and_big_ints_are_refused(native: bool) -> None:
    layout = Layout(infer_spec({"a": 1, "b": 2}), native=native)
    buffer = bytearray(layout.size)
    with pytest.raises(LayoutMismatch):
        layout.pack_into(buffer, 0, {"b": 2, "a": 1}, [])
    with pytest.raises(LayoutMismatch):
        layout.pack_into(buffer, 0, {"a": 2**64, "b": 2}, [])  # beyond int64: the codec carries it


def test_c_packer_never_writes_outside_its_buffer() -> None:
    if BACKENDS == [False]:
        pytest.skip("fastenv._layout is not built")
    value = _step_result()
    layout = Layout(infer_spec(value), native=True)
    _dtype, _shape, _order, offset = layout.arrays[-1]
    short = bytearray(offset + value[0].nbytes - 1)  # one byte short of the last array's end
    with pytest.raises(ValueError, match="outside its region"):
        layout.pack_into(short, 0, value, [])
    with pytest.raises(ValueError):
        layout.unpack(bytearray(2), 0, [np.zeros(4, np.float32)], False)


def test_shm_sender_forgets_a_layout_whose_definition_was_not_written() -> None:
    from fastenv.shm.arena import Arena
    from fastenv.shm.layouts import LayoutSender
    from fastenv.shm.plane import DEFAULT_SHAPE

    sender = LayoutSender()
    value = (np.zeros(4, np.float32), 1.0)
    with Arena.create(DEFAULT_SHAPE) as arena:
        arena.unlink()
        first, _ = sender.define("step", value)
        assert sender.prepared(arena, 4096, 65536, "step") is not None
        sender.forget("step")
        assert sender.prepared(arena, 4096, 65536, "step") is None  # nothing refers to the unsent id
        assert not sender.write_fast(arena, 4096, 65536, "step", 1, 1, value)
        second, _ = sender.define("step", value)
        assert second != first


def test_layout_registries_give_up_on_values_without_a_fixed_structure() -> None:
    sent = SentLayouts()
    assert sent.define("step", object()) is None  # no layout for an arbitrary object
    layout_id, spec = sent.define("step", (np.zeros(2), 1.0))
    assert sent.get("step")[0] == layout_id and spec[0] == "tuple"
    received = ReceivedLayouts()
    received.define(layout_id, spec)
    assert received.get(layout_id).spec == spec
    with pytest.raises(DecodeError):
        received.get(layout_id + 1)
    with pytest.raises(DecodeError):
        received.define(0, spec)  # ids start at 1
    with pytest.raises(DecodeError):
        received.define(1, ("array", "<f4", (10**9,), "C"), max_array_elements=10**6)
    with pytest.raises(DecodeError):
        received.define(1, ("callable", "os.system"))
    with pytest.raises(DecodeError):  # a product that would wrap around in int64
        received.define(1, ("array", "<f8", (2**40, 2**40), "C"))


def _through_stream(encoder: StreamEncoder, decoder: StreamDecoder, value: Any) -> tuple[Any, int]:
    skeleton, buffers, flags, layout_id = encoder.encode("step", value)
    received = [np.frombuffer(memoryview(b).cast("B"), np.uint8).copy() for b in buffers]
    return decoder.decode(bytes(skeleton), received, flags, layout_id), flags


def test_stream_layouts_announce_once_then_send_scalars_and_raw_arrays() -> None:
    encoder, decoder = StreamEncoder(), StreamDecoder(codec.DEFAULT_LIMITS)
    value = _rich_value()
    decoded, flags = _through_stream(encoder, decoder, value)
    assert flags == FLAG_LAYOUT_DEF
    assert_same(decoded, value)
    for _ in range(3):
        decoded, flags = _through_stream(encoder, decoder, value)
        assert flags == FLAG_LAYOUT
        assert_same(decoded, value)
        assert decoded["image"].flags.writeable and decoded["fortran"].flags.f_contiguous
    other = {"different": 1}
    decoded, flags = _through_stream(encoder, decoder, other)  # a new structure: announced again
    assert flags == FLAG_LAYOUT_DEF and decoded == other


def test_stream_decoder_refuses_malformed_layout_messages() -> None:
    encoder, decoder = StreamEncoder(), StreamDecoder(codec.DEFAULT_LIMITS)
    value = _step_result()
    _through_stream(encoder, decoder, value)  # announces layout 1
    skeleton, buffers, flags, layout_id = encoder.encode("step", value)
    arrays = [np.frombuffer(memoryview(b).cast("B"), np.uint8).copy() for b in buffers]
    with pytest.raises(DecodeError):
        decoder.decode(bytes(skeleton), arrays, FLAG_LAYOUT, layout_id + 7)  # never announced
    with pytest.raises(DecodeError):
        decoder.decode(bytes(skeleton)[:-1], arrays, FLAG_LAYOUT, layout_id)  # short scalars
    with pytest.raises(DecodeError):
        decoder.decode(bytes(skeleton), [arrays[0][:-1]], FLAG_LAYOUT, layout_id)  # short array
    with pytest.raises(DecodeError):
        decoder.decode(bytes(skeleton), [], FLAG_LAYOUT, layout_id)  # missing array
    bad_definition, _ = codec.encode((1, ("array", "<f4", (10**12,), "C"), None))
    with pytest.raises(DecodeError):
        decoder.decode(bad_definition, [], FLAG_LAYOUT_DEF, 0)
    assert_same(decoder.decode(bytes(skeleton), arrays, FLAG_LAYOUT, layout_id), value)  # still usable


def test_every_route_applies_the_array_element_limit_to_announced_layouts() -> None:
    import dataclasses

    from fastenv.shm.layouts import LayoutReceiver

    limits = dataclasses.replace(codec.DEFAULT_LIMITS, max_array_elements=1000)
    too_big, fits = ("array", "<f4", (5000,), "C"), ("array", "<f4", (1000,), "C")
    definition, _ = codec.encode((1, too_big, None))
    with pytest.raises(DecodeError):  # the TCP stream
        StreamDecoder(limits).decode(definition, [], FLAG_LAYOUT_DEF, 0)
    receiver = LayoutReceiver(limits)  # shared memory
    with pytest.raises(DecodeError):
        receiver.define(1, too_big)
    receiver.define(1, fits)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unpacked_tensors_share_writable_memory_and_copy_read_only_memory(native: bool, dtype: str) -> None:
    torch = pytest.importorskip("torch")
    value = {"obs": torch.arange(6, dtype=getattr(torch, dtype)).reshape(2, 3), "reward": 1.0}
    layout = Layout(infer_spec(value), native=native)
    buffer = bytearray(layout.size + 128)
    layout.pack_into(buffer, 64, value, layout.views(buffer, 64))
    shared = layout.unpack(buffer, 64, layout.views(buffer, 64), False)["obs"]
    assert shared.dtype == value["obs"].dtype and torch.equal(shared, value["obs"])
    shared.add_(1)  # a view of the buffer: the bytes change
    assert torch.equal(layout.unpack(buffer, 64, layout.views(buffer, 64), False)["obs"], value["obs"] + 1)
    frozen = bytes(buffer)
    owned = layout.unpack(frozen, 64, layout.views(frozen, 64), False)["obs"]  # read-only memory: a copy
    owned.add_(1)
    assert torch.equal(owned, value["obs"] + 2)
    assert torch.equal(layout.unpack(frozen, 64, layout.views(frozen, 64), False)["obs"], value["obs"] + 1)


def test_a_tensor_layout_packs_every_form_of_its_dtype_and_shape(native: bool) -> None:
    """Contiguous, transposed, negated-view and grad-requiring tensors of one layout all arrive as their values."""
    torch = pytest.importorskip("torch")
    base = torch.arange(6.0).reshape(2, 3)
    negated = torch.complex(torch.ones(2, 3), base).conj().imag  # a lazily negated view: reads as -base
    assert negated.is_neg()
    forms = {
        "contiguous": base,
        "transposed": torch.arange(6.0).reshape(3, 2).T,
        "negated": negated,
        "requires-grad": base.clone().requires_grad_(),
    }
    layout = Layout(infer_spec({"x": base, "z": torch.zeros(2, dtype=torch.complex64)}), native=native)
    buffer = bytearray(layout.size + 128)
    views = layout.views(buffer, 64)
    for name, tensor in forms.items():
        conj = torch.complex(torch.ones(2), torch.arange(2.0)).conj()  # complex64, lazily conjugated
        layout.pack_into(buffer, 64, {"x": tensor, "z": conj}, views)
        out = layout.unpack(buffer, 64, views, True)
        assert torch.equal(out["x"], tensor.detach().resolve_neg()), name
        assert torch.equal(out["z"], conj.resolve_conj()), name
    with pytest.raises(LayoutMismatch):
        layout.pack_into(buffer, 64, {"x": base.double(), "z": torch.zeros(2, dtype=torch.complex64)}, views)
    with pytest.raises(LayoutMismatch):
        layout.pack_into(buffer, 64, {"x": base[:1], "z": torch.zeros(2, dtype=torch.complex64)}, views)


@pytest.mark.parametrize(
    "change",
    [
        lambda view: setattr(view, "shape", (2, 3)),
        lambda view: setattr(view, "dtype", np.int32),
        lambda view: setattr(view.flags, "writeable", False),
    ],
    ids=["shape", "dtype", "read-only"],
)
def test_reused_views_changed_in_place_are_refused(native: bool, change: Any) -> None:
    """Views handed out on every unpack are checked first: one a caller changed in place raises ChangedView."""
    value = {"obs": np.arange(6, dtype=np.float32), "reward": 1.5}
    layout = Layout(infer_spec(value), native=native)
    buf = bytearray(layout.size)
    views = layout.views(buf, 0)
    layout.pack_into(buf, 0, value, views)
    assert layout.unpack(buf, 0, views, False, reused=True)["obs"] is views[0]
    change(views[0])
    assert layout.unpack(buf, 0, views, False)["obs"] is views[0]  # not reused: handed out as it is
    with pytest.raises(ChangedView):
        layout.unpack(buf, 0, views, False, reused=True)
    fresh = layout.views(buf, 0)
    out = layout.unpack(buf, 0, fresh, False, reused=True)
    assert out["obs"].shape == (6,) and out["obs"].flags.writeable and list(out["obs"]) == list(range(6))
