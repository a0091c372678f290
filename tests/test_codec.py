"""The codec: everything a step can return survives unchanged; nothing a peer sends can run code."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastenv.gym_types  # noqa: F401  (registers spaces)
from fastenv import codec
from fastenv.errors import DecodeError, EncodeError, FrameTooLarge

from assertions import assert_same


AWKWARD_ARRAYS = {
    "float32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
    "non_contiguous": np.arange(40, dtype=np.float64).reshape(5, 8)[::2, 1::3],
    "zero_strides": np.broadcast_to(np.arange(3, dtype=np.int32), (4, 3)),
    "empty": np.empty((0, 5), dtype=np.uint8),
    "zero_dim": np.array(3.5, dtype=np.float64),
    "bool": np.array([True, False, True]),
    "complex": np.array([1 + 2j, -3j], dtype=np.complex64),
    "float16": np.array([0.5, np.inf, -np.inf], dtype=np.float16),
    "big_endian": np.arange(4, dtype=">i4"),
    "datetime": np.array(["2026-01-01", "2026-06-01"], dtype="datetime64[D]"),
    "timedelta": np.array([1, 2, 3], dtype="timedelta64[ms]"),
    "structured": np.zeros(3, dtype=[("x", "<f4"), ("y", "<i8", (2,))]),
    "unicode": np.array(["a", "fastenv"]),
    "bytes": np.array([b"ab", b"c"]),
    "uint64_max": np.array([np.iinfo(np.uint64).max], dtype=np.uint64),
    "nan": np.array([np.nan, 1.0]),
    "image": np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8),
    "transposed": np.arange(24, dtype=np.float32).reshape(2, 3, 4).transpose(2, 0, 1),
}


@pytest.mark.parametrize("name", sorted(AWKWARD_ARRAYS))
def test_awkward_arrays_roundtrip(name: str) -> None:
    array = AWKWARD_ARRAYS[name]
    out = codec.roundtrip(array)
    assert out.dtype == array.dtype and out.shape == array.shape
    assert np.array_equal(out, array, equal_nan=array.dtype.kind in "fc")
    if name == "fortran":
        assert out.flags.f_contiguous


SCALARS = [
    None, True, False, 0, -1, 2**100, 1.5, float("inf"), float("nan"), "text", "ünïcode", b"\x00\xff",
    complex(1, -2), np.float32(1.5), np.float64(2.5), np.int8(-3), np.uint64(2**63), np.bool_(True),
    np.float16(0.25), np.complex128(1j), np.datetime64("2026-11-23T12:00"), np.str_("np-str"),
]


@pytest.mark.parametrize("value", SCALARS, ids=lambda v: type(v).__name__)
def test_scalars_keep_their_type(value: Any) -> None:
    assert_same(codec.roundtrip(value), value)


def test_containers_keep_their_structure() -> None:
    value = {
        "tuple": (1, (2, 3), []),
        "list": [1, [2, [3]], ()],
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "set": {1, 2, 3},
        "frozen": frozenset({"a"}),
        (1, "tuple-key"): "value",
        7: np.arange(3),
        "nested": [{"obs": np.zeros((2, 2), np.float32)}, (np.int64(5), {"deep": [None]})],
        "bytearray": bytearray(b"xy"),
    }
    out = codec.roundtrip(value)
    expected = dict(value, bytearray=b"xy")  # bytearray travels as bytes
    assert_same(out, expected)


def test_step_tuples_from_example_envs_roundtrip() -> None:
    from fastenv.examples import CameraEnv, LegacyEnv, StructuredEnv

    for env in (StructuredEnv(), CameraEnv(height=12, width=16)):
        first = env.reset(seed=3)
        assert_same(codec.roundtrip(first), first)
        result = env.step(env.action_space.sample() if hasattr(env.action_space, "sample") else 1)
        assert_same(codec.roundtrip(result), result)
    legacy = LegacyEnv()
    result = legacy.step(0.5)
    assert_same(codec.roundtrip(result), result)


def test_gymnasium_spaces_roundtrip() -> None:
    from gymnasium import spaces

    cases = [
        spaces.Box(-1.0, 2.0, (3, 2), np.float32),
        spaces.Box(np.array([0, -1]), np.array([1, 5]), dtype=np.int64),
        spaces.Discrete(7, start=-2),
        spaces.MultiDiscrete([3, 4, 5]),
        spaces.MultiBinary([2, 3]),
        spaces.Text(12, min_length=2, charset="abc"),
        spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Tuple((spaces.Box(0, 1, (2,)), spaces.Discrete(3)))}),
        spaces.Sequence(spaces.Discrete(4)),
    ]
    for space in cases:
        out = codec.roundtrip(space)
        assert type(out) is type(space)
        assert out == space, space


def test_arrays_decode_zero_copy_from_buffers() -> None:
    array = np.arange(1000, dtype=np.float64)
    skeleton, buffers = codec.encode(array)
    assert np.shares_memory(np.asarray(buffers[0]), array)  # encode does not copy
    landing = bytearray(memoryview(buffers[0]).cast("B"))
    out = codec.decode(skeleton, [landing])
    out[0] = -1.0  # a view on the received buffer, writable when the buffer is
    assert landing[:8] == np.float64(-1.0).tobytes()


def test_unsupported_types_raise_encode_error() -> None:
    class Opaque:
        pass

    with pytest.raises(EncodeError, match="register_type"):
        codec.encode({"x": Opaque()})
    with pytest.raises(EncodeError, match="object"):
        codec.encode(np.array([object()]))


def test_registered_types_roundtrip() -> None:
    class Pose:
        def __init__(self, xyz: np.ndarray) -> None:
            self.xyz = xyz

    codec.register_type(Pose, "test.Pose", lambda p: {"xyz": p.xyz}, lambda d: Pose(d["xyz"]))
    out = codec.roundtrip([Pose(np.ones(3))])
    assert isinstance(out[0], Pose) and np.array_equal(out[0].xyz, np.ones(3))


def test_too_deep_nesting_is_refused_both_ways() -> None:
    value: Any = []
    for _ in range(200):
        value = [value]
    with pytest.raises(EncodeError):
        codec.encode(value)
    crafted = pickle.dumps(value, protocol=5)
    with pytest.raises(DecodeError, match="deep"):
        codec.decode(crafted)


class _RunsCommand:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # what a malicious peer would send
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickles_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attacks = [
        pickle.dumps(_RunsCommand(marker), protocol=p) for p in range(0, pickle.HIGHEST_PROTOCOL + 1)
    ]
    attacks.append(pickle.dumps((codec.EXT, "x", _RunsCommand(marker))))
    attacks.append(pickle.dumps([1, {"obs": _RunsCommand(marker)}]))
    for payload in attacks:
        with pytest.raises(DecodeError, match="refused"):
            codec.decode(payload)
    assert not marker.exists()


@pytest.mark.parametrize(
    "node, buffers, error",
    [
        ((codec.ARRAY, 0, "<f8", (10,), "C"), [b"\x00" * 8], DecodeError),  # buffer too small
        ((codec.ARRAY, 3, "<f8", (1,), "C"), [b"\x00" * 8], DecodeError),  # no such buffer
        ((codec.ARRAY, 0, "<f8", (1 << 40, 1 << 20), "C"), [b""], FrameTooLarge),  # huge declared size
        ((codec.ARRAY, 0, "|O", (1,), "C"), [b"\x00" * 8], DecodeError),  # object dtype
        ((codec.ARRAY, 0, "not-a-dtype", (1,), "C"), [b"\x00"], DecodeError),
        ((codec.ARRAY, 0, "<f8", (-1,), "C"), [b""], DecodeError),
        ((codec.ARRAY, 0, "<f8", (1,), "X"), [b"\x00" * 8], DecodeError),
        ((codec.SCALAR, "<f8", b"\x00"), [], DecodeError),
        ((codec.EXT, "no.such.type", None), [], DecodeError),
        ((codec.DICT, [1]), [], DecodeError),
        ((codec.DICT, [[1], 2]), [], DecodeError),  # unhashable key
        ((99, []), [], DecodeError),
        ((), [], DecodeError),
        ((codec.COMPLEX, "1", "2"), [], DecodeError),
    ],
)
def test_malformed_nodes_raise_typed_errors(node: Any, buffers: list, error: type) -> None:
    with pytest.raises(error):
        codec.decode(pickle.dumps(node, protocol=5), buffers)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    try:
        codec.decode(data, [data])
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(min_value=0, max_value=199))
def test_truncated_and_corrupted_skeletons_raise_decode_error(extra: bytes, cut: int) -> None:
    skeleton, buffers = codec.encode({"obs": np.arange(4), "info": [1, "x", (2.5, None)]})
    for bad in (skeleton[: cut % len(skeleton)], skeleton[:cut] + extra + skeleton[cut:]):
        try:
            codec.decode(bad, buffers)
        except DecodeError:
            pass


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(plain_values)
def test_plain_values_roundtrip(value: Any) -> None:
    assert_same(codec.roundtrip(value), value)
