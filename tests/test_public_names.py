"""Every name the docs tell users to reach through ``fastenv.`` is importable from the package root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import fastenv
from fastenv import errors

ROOT = Path(__file__).resolve().parent.parent
# `fastenv.name` in prose, docstrings and examples (not in strings such as logger names).
DOTTED = re.compile(r"(?<![\"'\w.])fastenv\.([A-Za-z_][A-Za-z0-9_]*)\b")


def _documented_names() -> set[str]:
    texts = [(ROOT / "README.md").read_text()]
    texts += [path.read_text() for path in (ROOT / "fastenv").rglob("*.py")]
    texts += [path.read_text() for path in (ROOT / "examples").glob("*.py")]
    submodules = {info.name for info in pkgutil.iter_modules(fastenv.__path__)}
    names = set()
    for text in texts:
        for name in DOTTED.findall(text):
            if name not in submodules and not name.startswith("_"):
                names.add(name)
    return names


def test_documented_names_are_importable_from_the_root() -> None:
    names = _documented_names()
    assert {"FastRemoteEnv", "SessionLost", "LeaseHeld"} <= names  # the scan finds them
    missing = sorted(name for name in names if not hasattr(fastenv, name))
    assert not missing, f"documented as fastenv.NAME but not importable: {missing}"


def test_every_public_error_is_exported() -> None:
    public = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.FastEnvError) and not name.startswith("_")
    }
    assert public - set(fastenv.__all__) == set()


@pytest.mark.parametrize("name", sorted(fastenv.__all__))
def test_all_lists_only_real_names(name: str) -> None:
    assert getattr(fastenv, name) is not None
    assert getattr(importlib.import_module("fastenv"), name) is getattr(fastenv, name)
