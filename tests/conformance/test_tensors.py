"""torch tensors and registered dataclasses as values, the same on every route.

The counting env (``tests/envs/session_envs.py``) echoes what it is sent,
steps in torch (``torch_step``) and returns a dataclass nobody registered
(``unregistered``); it registers the dataclasses ``Pose`` and ``RobotState``,
and so does this module by importing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastenv.errors import EncodeError, RemoteEnvError

torch = pytest.importorskip("torch")

from envs.session_envs import Pose, RobotState, Unregistered  # noqa: E402  (registers them here too)

T = 20.0
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")


def _catalogue() -> dict[str, Any]:
    """Tensors of every dtype fastenv carries, in the shapes and memory orders that matter."""
    generator = torch.Generator().manual_seed(7)
    values: dict[str, Any] = {}
    for name in (
        "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
    ):
        dtype = getattr(torch, name)
        base = torch.randn(3, 4, generator=generator) * 50
        if dtype is torch.bool:
            values[name] = base > 0
        elif dtype.is_complex:
            values[name] = torch.complex(base, -base).to(dtype)
        elif dtype.is_floating_point:
            values[name] = base.to(dtype)
        else:
            values[name] = base.abs().to(torch.int64).to(dtype)
    values["0-d"] = torch.tensor(2.5)
    values["empty"] = torch.zeros(0, 3)
    values["transposed"] = torch.arange(12.0).reshape(3, 4).T
    values["strided"] = torch.arange(40, dtype=torch.int32).reshape(5, 8)[::2, 1::3]
    values["expanded"] = torch.arange(3.0).expand(4, 3)
    values["requires-grad"] = torch.ones(2, 2, requires_grad=True)
    values["conjugated"] = torch.complex(torch.ones(2), torch.ones(2)).conj()
    values["large"] = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB: past a slot and a TCP chunk
    return values


CATALOGUE = _catalogue()


def assert_same_tensor(out: Any, sent: Any) -> None:
    assert type(out) is torch.Tensor, type(out)
    assert out.dtype == sent.dtype and out.shape == sent.shape, (out.dtype, out.shape, sent.dtype, sent.shape)
    expected = sent.detach().resolve_conj()
    if sent.dtype.itemsize == 1 and sent.dtype.is_floating_point:  # float8: compare the bits
        assert torch.equal(out.view(torch.uint8), expected.contiguous().view(torch.uint8))
    else:
        assert torch.equal(out, expected)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_tensors_round_trip(env, name: str) -> None:
    tensor = CATALOGUE[name]
    for _ in range(3):  # the first call defines the layout, the later ones use it
        assert_same_tensor(env.call("echo", tensor), tensor)


def test_nested_tensors_keep_their_containers(env) -> None:
    value = {
        "policy": torch.randn(4, 3),
        "groups": [torch.zeros(2, dtype=torch.bfloat16), (np.arange(3), torch.tensor(True))],
        "scalar": 1.5,
    }
    for _ in range(3):
        out = env.call("echo", value)
        assert list(out) == ["policy", "groups", "scalar"] and out["scalar"] == 1.5
        assert_same_tensor(out["policy"], value["policy"])
        assert_same_tensor(out["groups"][0], value["groups"][0])
        assert isinstance(out["groups"][1], tuple) and type(out["groups"][1][0]) is np.ndarray
        assert_same_tensor(out["groups"][1][1], value["groups"][1][1])


def test_a_torch_step_takes_and_returns_tensors(env) -> None:
    env.reset()
    for step in range(1, 4):
        action = torch.full((3,), float(step))
        obs, reward, terminated, truncated, info = env.call("torch_step", action)
        assert_same_tensor(obs["policy"], action * 2)
        assert obs["count"].dtype == torch.float32 and reward.shape == () and reward.item() == step
        assert terminated.dtype == torch.bool and not terminated.item() and not truncated.item()
        assert info["steps"].item() == step


def test_held_tensors_are_never_written_again(env) -> None:
    """Tensors views of a reply (on shared memory) stay as they were while the caller keeps them."""
    env.reset()
    kept = [env.call("torch_step", torch.full((3,), float(step))) for step in range(40)]
    for step, (obs, reward, *_rest) in enumerate(kept):
        assert torch.equal(obs["policy"], torch.full((3,), 2.0 * step)) and reward.item() == step + 1


def test_reply_tensors_kept_in_any_form_never_change(env) -> None:
    """What the caller keeps of a reply tensor (a view, its numpy array, a detached or reshaped one) stays as it was."""
    env.reset()
    forms = (lambda t: t[1:], lambda t: t.numpy(), lambda t: t.detach(), lambda t: t.view(3, 1), lambda t: None)
    kept = []
    for step in range(30):
        policy = env.call("torch_step", torch.full((3,), float(step)))[0]["policy"]
        kept.append(forms[step % len(forms)](policy))
        del policy
    for step, form in enumerate(kept):
        if form is not None:
            assert (torch.as_tensor(form) == 2.0 * step).all(), f"what was kept of step {step} changed"


def test_tensors_the_env_keeps_from_its_calls_never_change(env) -> None:
    """A request's tensors are the env's: what it keeps (the tensor, a view, its numpy array) stays as it was."""
    sent = []
    for step in range(24):
        how = ("tensor", "view", "numpy", "nothing")[step % 4]
        action = torch.full((3,), float(step))
        env.call("hold", action, how)
        sent.append((how, action))
    expected = [action if how != "view" else action[1:] for how, action in sent if how != "nothing"]
    for held, action in zip(env.call("held_values"), expected, strict=True):
        assert_same_tensor(held, action)


def test_registered_dataclasses_travel_as_themselves(env) -> None:
    state = RobotState(
        "franka",
        Pose(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)),
        {"dof_pos": torch.linspace(0, 1, 9), "gripper": Pose(torch.zeros(3), None)},
    )
    for _ in range(2):
        out = env.call("echo", state)
        assert type(out) is RobotState and type(out.root) is Pose and type(out.joints["gripper"]) is Pose
        assert out.name == "franka" and out.joints["gripper"].orientation is None
        assert_same_tensor(out.root.position, state.root.position)
        assert_same_tensor(out.root.orientation, state.root.orientation)
        assert_same_tensor(out.joints["dof_pos"], state.joints["dof_pos"])


def test_an_unregistered_dataclass_is_a_typed_error_naming_the_call(env) -> None:
    with pytest.raises(EncodeError, match=r"echo.*register_dataclass|register_dataclass.*echo"):
        env.call("echo", Unregistered(3))
    with pytest.raises(EncodeError, match=r"unregistered.*register_dataclass|register_dataclass.*unregistered"):
        env.call("unregistered")
    assert env.call("echo", 1) == 1  # the session goes on


def test_tensors_can_arrive_as_numpy_arrays(connect) -> None:
    env = connect(tensors="numpy")
    out = env.call("echo", {"f": torch.arange(4.0), "b": torch.ones(2, dtype=torch.bfloat16), "n": np.ones(2)})
    assert type(out["f"]) is np.ndarray and out["f"].dtype == np.float32 and list(out["f"]) == [0, 1, 2, 3]
    assert out["b"].dtype == np.float32 and list(out["b"]) == [1.0, 1.0]  # numpy has no bfloat16: widened
    state = env.call("echo", RobotState("r", Pose(torch.zeros(2), torch.ones(1))))
    assert type(state.root.position) is np.ndarray


def test_received_tensors_can_be_placed_on_a_device(connect) -> None:
    """``device=`` moves every received tensor (the meta device stands in for a GPU: it needs none)."""
    env = connect(device="meta")
    out = env.call("echo", {"obs": torch.ones(3), "state": RobotState("r", Pose(torch.zeros(2), None))})
    assert out["obs"].device.type == "meta" and out["obs"].shape == (3,)
    assert out["state"].root.position.device.type == "meta"


_WITHOUT_TORCH = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None  # this process cannot import torch
    import fastenv

    address, options = sys.argv[1], json.loads(sys.argv[2])
    with fastenv.FastRemoteEnv(address, timeout=20, **options) as env:
        try:
            env.call("torch_step", 1.0)
        except fastenv.TorchRequired as exc:
            print("refused:", exc)
        assert env.call("echo", 5) == 5
    with fastenv.FastRemoteEnv(address, timeout=20, tensors="numpy", **options) as env:
        obs = env.call("torch_step", 1.0)[0]
        print("numpy:", type(obs["count"]).__name__, obs["count"].dtype)
    """
)


def test_a_client_without_torch_gets_a_clear_error_or_asks_for_numpy(route) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, route.address, json.dumps(route.client_options())],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "fastenv[torch]" in done.stdout and "tensors='numpy'" in done.stdout, done.stdout
    assert "numpy: ndarray float32" in done.stdout, done.stdout


def test_an_env_error_about_tensors_keeps_the_session(env) -> None:
    with pytest.raises(RemoteEnvError):
        env.call("torch_step", None)
    assert_same_tensor(env.call("echo", torch.ones(2)), torch.ones(2))


def _on_gpu(tensor: Any) -> Any:
    """``tensor`` on the GPU, in its memory order where torch keeps it (a transposed copy stays transposed)."""
    return tensor.detach().to("cuda:0")


@needs_cuda
def test_cuda_tensors_are_staged_on_send_and_placed_on_receive(connect) -> None:
    """Every tensor of the catalogue, sent from the GPU and received onto it, comes back equal."""
    env = connect(device="cuda:0")
    sent = {name: _on_gpu(tensor) for name, tensor in CATALOGUE.items()}
    for _ in range(3):  # the codec, then the compiled layout
        out = env.call("echo", sent)
        assert list(out) == list(sent)
        for name, tensor in sent.items():
            assert out[name].device == tensor.device, name
            assert_same_tensor(out[name].cpu(), tensor.cpu())


@needs_cuda
def test_an_env_returning_cuda_tensors(connect) -> None:
    """An env whose results live on the GPU: the server stages them, the client gets host tensors."""
    env = connect()
    for _ in range(3):
        out = env.call("placed", CATALOGUE, "cuda:0")
        for name, tensor in CATALOGUE.items():
            assert out[name].device.type == "cpu", name
            assert_same_tensor(out[name], tensor)
    host = torch.arange(6.0).reshape(2, 3)
    out = env.call("on_device", host, "cuda:0")
    assert torch.equal(out["moved"], host) and torch.equal(out["twice"], host * 2) and torch.equal(out["host"], host)


@needs_cuda
def test_dataclasses_of_cuda_tensors_travel_both_ways(connect) -> None:
    env = connect(device="cuda:0")
    state = RobotState(
        "franka",
        Pose(torch.tensor([0.1, 0.2, 0.3], device="cuda:0"), torch.ones(4, dtype=torch.bfloat16, device="cuda:0")),
        {"dof_pos": torch.linspace(0, 1, 9, device="cuda:0"), "gripper": Pose(torch.zeros(3), None)},
    )
    for _ in range(3):
        out = env.call("placed", state, "cuda:0")  # sent from the GPU, returned from it, received onto it
        assert type(out) is RobotState and type(out.root) is Pose and out.joints["gripper"].orientation is None
        for got, sent in (
            (out.root.position, state.root.position),
            (out.root.orientation, state.root.orientation),
            (out.joints["dof_pos"], state.joints["dof_pos"]),
        ):
            assert got.device.type == "cuda"
            assert_same_tensor(got.cpu(), sent.cpu())
        assert out.joints["gripper"].position.device.type == "cuda"  # placed: every received tensor
