"""Request tensors a shared-memory server reuses: only once the env let go of them, in every way it can hold one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fastenv import layout as layout_module
from fastenv.layout import Layout
from fastenv.layout_spec import infer_spec
from fastenv.shm.kept import KeptTensors

torch = pytest.importorskip("torch")
ops = layout_module._native_layout
pytestmark = pytest.mark.skipif(ops is None, reason="the C unpacker is not in use")


class Region:
    """A request region with one prepared layout and its kept tensors, as a server worker has them."""

    def __init__(self, value: Any) -> None:
        self.layout = Layout(infer_spec(value), native=True)
        self.buffer = bytearray(self.layout.size + 128)
        self.views = self.layout.views(self.buffer, 64)
        self.prepared: dict[int, tuple] = {7: (self.layout.program, self.views, self.layout)}
        self.kept = KeptTensors(ops)
        self.kept.attach(self.prepared)

    def receive(self, value: Any) -> Any:
        """``value`` written into the region, then unpacked as the server's take does (copy, kept tensors)."""
        self.kept.refresh()
        self.layout.pack_into(self.buffer, 64, value, self.views)
        return ops.unpack(self.layout.program, self.buffer, 64, self.views, True, self.prepared[7][3])


def _action(step: int) -> dict[str, Any]:
    return {"arm": torch.full((2, 3), float(step)), "grip": torch.tensor(step % 2 == 1), "step": step}


def test_a_tensor_the_env_let_go_of_is_reused() -> None:
    region = Region(_action(0))
    assert len(region.prepared[7]) == 4
    first = region.receive(_action(1))
    arm = first["arm"]
    assert torch.equal(arm, torch.full((2, 3), 1.0)) and first["grip"].item() is True
    del first, arm
    second = region.receive(_action(2))
    assert torch.equal(second["arm"], torch.full((2, 3), 2.0))
    kept_arm = region.prepared[7][3][region.layout.program[2][0][4][6]][0]
    assert second["arm"] is kept_arm  # the same tensor, filled with the new bytes


HOLDS: dict[str, Callable[[Any], Any]] = {
    "the tensor": lambda arm: arm,
    "a view": lambda arm: arm[1],
    "a reshaped view": lambda arm: arm.view(-1),
    "its numpy array": lambda arm: arm.numpy(),
    "a detached tensor": lambda arm: arm.detach(),
    "an autograd graph": lambda arm: arm.requires_grad_() * 2,
    "a list holding it": lambda arm: [arm],
}


@pytest.mark.parametrize("how", HOLDS)
def test_a_tensor_the_env_still_holds_never_changes(how: str) -> None:
    region = Region(_action(0))
    received = region.receive(_action(1))
    held = HOLDS[how](received["arm"])
    before = _values(held)
    del received
    for step in range(2, 6):
        again = region.receive(_action(step))
        assert torch.equal(again["arm"], torch.full((2, 3), float(step)))
    assert torch.equal(_values(held), before)


def _values(held: Any) -> Any:
    """An owned copy of what ``held`` holds."""
    return torch.as_tensor(held[0] if isinstance(held, list) else held).detach().clone()


def test_arrays_and_layouts_without_tensors_keep_nothing() -> None:
    region = Region({"arm": np.zeros((2, 3), np.float32), "step": 1})
    assert region.prepared[7][3] == [None]
    value = region.receive({"arm": np.ones((2, 3), np.float32), "step": 2})
    assert type(value["arm"]) is np.ndarray and value["arm"].sum() == 6


CHANGES: dict[str, Callable[[Any], Any]] = {
    "values in place": lambda arm: arm.add_(100),
    "unsqueeze_": lambda arm: arm.unsqueeze_(0),
    "transposed in place": lambda arm: arm.t_(),
    "its data replaced": lambda arm: setattr(arm, "data", torch.zeros(5)),
    "requires_grad_": lambda arm: arm.requires_grad_(),
    "a gradient": lambda arm: setattr(arm, "grad", torch.ones(2, 3)),
    "an attribute": lambda arm: setattr(arm, "note", "seen"),
}


@pytest.mark.parametrize("how", CHANGES)
def test_a_tensor_the_env_changed_is_not_handed_out_again(how: str) -> None:
    """What the env did to an action it dropped never shows in a later action."""
    region = Region(_action(0))
    received = region.receive(_action(1))
    CHANGES[how](received["arm"])
    del received
    for step in range(2, 5):
        again = region.receive(_action(step))["arm"]
        assert again.shape == (2, 3) and again.stride() == (3, 1), how
        assert torch.equal(again, torch.full((2, 3), float(step))), how
        assert not again.requires_grad and again.grad is None and not again.__dict__, how
        del again
