"""The native backend: one switch for everything fastenv compiles.

fastenv compiles two extensions from ``native/``: :mod:`fastenv._native` (the
futex doorbell's atomic words, waits and rings, and the TCP stream's receive
spin) and :mod:`fastenv._layout` (the layout packer, and the shared-memory
plane's fast path ``put`` / ``take``). Either both are used or neither: the
choice is made once, here, when fastenv is imported, in the style of pyzmq's
backend selection:

* ``FASTENV_NATIVE`` unset (or anything but ``0`` / ``1``): the compiled
  backend when both extensions import, export the functions in
  :data:`PUBLIC_API` and agree with the Python side on every constant they
  share with it; the pure-Python fallback otherwise, with the reason recorded;
* ``FASTENV_NATIVE=0``: always the pure-Python fallback;
* ``FASTENV_NATIVE=1``: the compiled backend, or :class:`NativeBackendError`
  (an ``ImportError``) carrying the first reason it cannot be used.

The modules that use compiled code (:mod:`fastenv.shm.futex`,
:mod:`fastenv.layout`, the TCP stream) take it from :data:`BACKEND` and never
choose themselves. A module that owns a value the C code hardcodes calls
:func:`verify_constants` when it is imported: a mismatch makes the extension
unusable (``auto`` falls back to Python, ``FASTENV_NATIVE=1`` fails), so a
stale build can never write envelopes or doorbells in a layout the Python side
does not read. Tests switch everything at once with :func:`select_backend`.
This module imports nothing from fastenv but its errors.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fastenv.errors import FastEnvError

__all__ = [
    "BACKEND",
    "ENV_VAR",
    "MODULES",
    "PUBLIC_API",
    "REQUESTED",
    "Backend",
    "NativeBackendError",
    "Part",
    "backend_info",
    "bind",
    "check_constants",
    "part",
    "select_backend",
    "verify_constants",
]

#: The environment variable that forces a backend (``0``: Python, ``1``: native).
ENV_VAR = "FASTENV_NATIVE"

NATIVE_MODULE = "fastenv._native"
LAYOUT_MODULE = "fastenv._layout"
#: The compiled modules, in the order they are imported.
MODULES: tuple[str, ...] = (NATIVE_MODULE, LAYOUT_MODULE)

#: The functions each compiled module must export.
PUBLIC_API: dict[str, tuple[str, ...]] = {
    NATIVE_MODULE: ("load", "store", "add", "compare_exchange", "wait", "wake", "ring", "spin_readable"),
    LAYOUT_MODULE: ("pack", "extract", "unpack", "put", "take", "ChangedView"),
}

#: A constant the C code hardcodes: its name on the compiled module -> (the Python name it
#: mirrors, for messages, and the Python value).
Expected = Mapping[str, tuple[str, Any]]


class NativeBackendError(FastEnvError, ImportError):
    """The compiled backend was required (``FASTENV_NATIVE=1`` or ``select_backend("native")``)
    and cannot be used: an extension is not built, lacks a function, or disagrees with the
    Python side on a constant. The message names the module and the reason."""


@dataclass(frozen=True)
class Part:
    """One compiled module and whether it can be used.

    Attributes:
        module_name: ``"fastenv._native"`` or ``"fastenv._layout"``.
        module: the imported module, or ``None`` when it cannot be used.
        error: why it cannot be used (import error, missing function, constant
            mismatch); ``None`` when it can.
    """

    module_name: str
    module: ModuleType | None
    error: str | None

    @property
    def available(self) -> bool:
        """Whether the module imported and passed every check."""
        return self.module is not None


@dataclass(frozen=True)
class Backend:
    """The selected backend.

    Attributes:
        name: ``"native"`` or ``"python"``.
        reason: why this backend was chosen.
        native: :mod:`fastenv._native` when ``name == "native"``, else ``None``.
        layout: :mod:`fastenv._layout` when ``name == "native"``, else ``None``.
    """

    name: str
    reason: str
    native: ModuleType | None
    layout: ModuleType | None


def _requested(value: str | None) -> str:
    """``"python"``, ``"native"`` or ``"auto"`` for a value of :data:`ENV_VAR`."""
    value = (value or "").strip()
    if value == "0":
        return "python"
    if value == "1":
        return "native"
    return "auto"


def _load(module_name: str) -> tuple[Part, BaseException | None]:
    """Import one compiled module and check its API; the part and the exception that stopped it."""
    try:
        # By name: ``from fastenv import _native`` would report a "circular import" while the
        # package is still initialising, hiding the real reason.
        module = importlib.import_module(module_name)
    except ImportError as exc:  # not built, or built for another interpreter
        return Part(module_name, None, f"{module_name} unavailable: {exc}"), exc
    missing = [name for name in PUBLIC_API[module_name] if not callable(getattr(module, name, None))]
    if missing:
        error = f"{module_name} lacks {', '.join(missing)}; rebuild it"
        return Part(module_name, None, error), ImportError(error)
    return Part(module_name, module, None), None


#: How this process asked for a backend (:data:`ENV_VAR`, read once): "auto", "python" or "native".
REQUESTED: str = _requested(os.environ.get(ENV_VAR))

_parts: dict[str, Part] = {}
_first_error: BaseException | None = None
for _name in MODULES:
    _parts[_name], _error = _load(_name)
    if _first_error is None:
        _first_error = _error
del _name, _error

_listeners: list[Callable[[Backend], None]] = []


def part(module_name: str) -> Part:
    """The state of one compiled module (``"fastenv._native"`` or ``"fastenv._layout"``)."""
    try:
        return _parts[module_name]
    except KeyError:
        raise ValueError(f"unknown compiled module {module_name!r}; expected one of {', '.join(MODULES)}") from None


def _unavailable() -> str | None:
    """Why the compiled backend cannot be used (the first part's reason), or None."""
    for name in MODULES:
        if not _parts[name].available:
            return _parts[name].error
    return None


def _native_backend(reason: str) -> Backend:
    return Backend("native", reason, _parts[NATIVE_MODULE].module, _parts[LAYOUT_MODULE].module)


def _python_backend(reason: str) -> Backend:
    return Backend("python", reason, None, None)


def _initial() -> Backend:
    """The backend :data:`REQUESTED` asks for (raises :class:`NativeBackendError` under ``1``)."""
    if REQUESTED == "python":
        return _python_backend(f"{ENV_VAR}=0 forces the pure-Python fallback")
    problem = _unavailable()
    if problem is None:
        if REQUESTED == "native":
            return _native_backend(f"{ENV_VAR}=1 requires the compiled extensions")
        return _native_backend("the compiled extensions are built and match the Python side")
    if REQUESTED == "native":
        raise NativeBackendError(f"{ENV_VAR}=1 but {problem}") from _first_error
    return _python_backend(problem)


#: The selected backend. Read it at use, or register with :func:`bind`: :func:`select_backend`
#: and a failed :func:`verify_constants` replace it.
BACKEND: Backend = _initial()


def _activate(backend: Backend) -> None:
    global BACKEND
    BACKEND = backend
    for listener in list(_listeners):
        listener(backend)


def bind(listener: Callable[[Backend], None]) -> None:
    """Call ``listener(BACKEND)`` now and again whenever the backend or a part's state changes.

    The modules that keep compiled functions in module globals (for the speed of a global
    lookup on the hot path) rebind them here, so that :func:`select_backend` switches them all.
    """
    _listeners.append(listener)
    listener(BACKEND)


def select_backend(name: str | Backend) -> Backend:
    """Switch every compiled part (doorbell, packer, fast path, TCP spin) at once.

    Meant for tests and benchmarks that run the same code on both backends; objects made
    before the switch (doorbells, compiled layouts, streams) keep the backend they were made
    with. Returns the backend that was active, which can be passed back to restore it.

    Args:
        name: ``"native"``, ``"python"``, ``"auto"`` (the rule of an unset
            :data:`ENV_VAR`), or a :class:`Backend` returned earlier.

    Raises:
        NativeBackendError: the compiled backend was asked for and a part cannot be used.
        ValueError: ``name`` is none of the above.
    """
    previous = BACKEND
    if isinstance(name, Backend):
        if name.name == "native" and _unavailable() is not None:
            raise NativeBackendError(f"cannot restore the native backend: {_unavailable()}")
        _activate(name)
        return previous
    problem = _unavailable()
    if name == "python":
        _activate(_python_backend("select_backend('python')"))
    elif name == "native":
        if problem is not None:
            raise NativeBackendError(f"select_backend('native'): {problem}")
        _activate(_native_backend("select_backend('native')"))
    elif name == "auto":
        _activate(_python_backend(problem) if problem else _native_backend("select_backend('auto')"))
    else:
        raise ValueError(f"unknown backend {name!r}; expected 'native', 'python' or 'auto'")
    return previous


def check_constants(module: Any, expected: Expected) -> str | None:
    """Compare the constants a compiled module exports with the Python values it mirrors.

    Args:
        module: the compiled module (or any object with the constants as attributes).
        expected: C name -> (Python name, Python value).

    Returns:
        ``None`` when every constant is present and equal, else a reason that names the first
        one that is missing or differs.
    """
    module_name = getattr(module, "__name__", repr(module))
    for c_name, (py_name, value) in expected.items():
        if not hasattr(module, c_name):
            return f"{module_name} lacks the constant {c_name} (mirrors {py_name} = {value!r}); rebuild it"
        actual = getattr(module, c_name)
        if actual != value:
            return (
                f"{module_name}.{c_name} = {actual!r} but {py_name} = {value!r}: "
                "the C code and the Python side disagree; rebuild the extension"
            )
    return None


def verify_constants(expected: Expected, modules: Iterable[str] = MODULES) -> None:
    """Check the constants of each compiled module in ``modules`` against ``expected``.

    Called at import by the module that owns the Python values. A compiled module that
    disagrees becomes unusable with the reason; if the native backend was selected, the
    backend falls back to Python (``auto``) or :class:`NativeBackendError` is raised
    (``FASTENV_NATIVE=1``). Every :func:`bind` listener then sees the new state.
    """
    changed = False
    for module_name in modules:
        current = part(module_name)
        if current.module is None:
            continue
        problem = check_constants(current.module, expected)
        if problem is not None:
            _parts[module_name] = Part(module_name, None, problem)
            changed = True
    if not changed:
        return
    problem = _unavailable()
    assert problem is not None
    if BACKEND.name == "native":
        if REQUESTED == "native":
            _activate(_python_backend(problem))
            raise NativeBackendError(f"{ENV_VAR}=1 but {problem}")
        _activate(_python_backend(problem))
    else:
        _activate(BACKEND)


def backend_info() -> dict[str, Any]:
    """Describe the switch and each compiled module, for ``fastenv doctor``.

    Keys: ``name`` (``"native"`` or ``"python"``), ``reason``, ``requested`` (``"auto"``,
    ``"python"`` or ``"native"``) and ``parts``: for each compiled module, ``available``,
    ``file`` (where it was loaded from, or None) and ``error`` (why it cannot be used, or None).
    """
    return {
        "name": BACKEND.name,
        "reason": BACKEND.reason,
        "requested": REQUESTED,
        "parts": {
            name: {
                "available": state.available,
                "file": getattr(state.module, "__file__", None),
                "error": state.error,
            }
            for name, state in _parts.items()
        },
    }
