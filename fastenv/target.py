"""Resolve a ``fastenv serve`` TARGET into an env factory.

A target is one of:

- ``package.module:callable`` (``callable`` may be dotted: ``module:Class.make``),
- ``path/to/file.py:callable``,
- a Gymnasium id such as ``CartPole-v1`` (made with ``gymnasium.make``).

The callable is an env class or a function returning an env; it is called
with the ``--env-kwargs``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastenv.errors import TargetError


def _attribute(root: Any, dotted: str, origin: str) -> Any:
    value = root
    for part in dotted.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise TargetError(f"{origin} has no attribute {dotted!r}") from None
    if not callable(value):
        raise TargetError(f"{origin}:{dotted} is not callable (expected an env class or factory)")
    return value


def _from_file(path: str, name: str) -> Callable[..., Any]:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise TargetError(f"no such file: {file}")
    module_name = f"fastenv_target_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise TargetError(f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
    return _attribute(module, name, str(file))


def _from_module(module_name: str, name: str) -> Callable[..., Any]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"cannot import {module_name!r}: {exc}") from exc
    return _attribute(module, name, module_name)


def _from_gymnasium(env_id: str) -> Callable[..., Any]:
    try:
        import gymnasium
    except ImportError:
        raise TargetError(
            f"{env_id!r} is not module:callable or file.py:callable, and Gymnasium is not installed "
            'to make it as an env id (pip install "fastenv[gym]")'
        ) from None
    if env_id not in gymnasium.registry:
        raise TargetError(
            f"{env_id!r} is neither module:callable, file.py:callable, nor a registered Gymnasium id"
        )
    return lambda **kwargs: gymnasium.make(env_id, **kwargs)


def resolve_target(target: str, env_kwargs: dict[str, Any] | None = None) -> Callable[[], Any]:
    """Return a zero-argument factory for ``target`` (imports it now, builds nothing yet)."""
    kwargs = dict(env_kwargs or {})
    location, sep, name = target.rpartition(":")
    if sep and location.endswith(".py"):
        maker = _from_file(location, name)
    elif sep and _is_dotted_identifier(location) and _is_dotted_identifier(name):
        maker = _from_module(location, name)
    else:
        maker = _from_gymnasium(target)
    return lambda: maker(**kwargs)


def _is_dotted_identifier(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))
