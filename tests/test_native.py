"""The native backend switch (fastenv.native): one choice for every compiled part,
and the constants the C code shares with Python checked at import."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastenv import doctor, layout, native
from fastenv.layout_spec import infer_spec
from fastenv.shm import arena, doorbell, futex
from fastenv.shm.doorbell import Doorbell
from fastenv.tcp.framing import MessageStream

REPO_ROOT = Path(__file__).resolve().parent.parent
BOTH_BUILT = native.part(native.NATIVE_MODULE).available and native.part(native.LAYOUT_MODULE).available


@pytest.fixture
def restore_backend() -> Iterator[None]:
    """Puts back the backend that was active when the test started."""
    previous = native.BACKEND
    yield
    native.select_backend(previous)


def _child(code: str, value: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(native.ENV_VAR, None)
    if value is not None:
        env[native.ENV_VAR] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60, check=False
    )


# ---------------------------------------------------------------- the constants check


def test_check_constants_names_the_constant_that_differs() -> None:
    fake = types.SimpleNamespace(__name__="fastenv._fake", FAST_KIND=7, FAST_DATA=64)
    expected = {"FAST_DATA": ("fastenv.shm.arena.FAST_DATA", 64), "FAST_KIND": ("fastenv.shm.arena.FAST", 6)}
    reason = native.check_constants(fake, expected)
    assert reason is not None
    assert "fastenv._fake.FAST_KIND = 7" in reason and "fastenv.shm.arena.FAST = 6" in reason
    assert native.check_constants(fake, {"FAST_DATA": ("fastenv.shm.arena.FAST_DATA", 64)}) is None


def test_check_constants_names_a_constant_the_build_lacks() -> None:
    fake = types.SimpleNamespace(__name__="fastenv._fake")
    reason = native.check_constants(fake, {"BELL_SLEEPERS": ("fastenv.shm.doorbell.SLEEPERS_OFFSET", 4)})
    assert reason is not None and "lacks the constant BELL_SLEEPERS" in reason and "rebuild" in reason


@pytest.mark.skipif(not native.part(native.LAYOUT_MODULE).available, reason="fastenv._layout is not usable")
def test_the_built_extensions_export_what_the_python_side_holds() -> None:
    compiled = native.part(native.LAYOUT_MODULE).module
    offsets, sizes = futex._envelope_fields()
    assert compiled.FAST_KIND == arena.FAST and compiled.FAST_DATA == arena.FAST_DATA
    assert compiled.ENVELOPE_SIZE == arena.ENVELOPE.size
    assert compiled.ENVELOPE_OFFSETS == offsets == (0, 1, 2, 4, 8)
    assert compiled.ENVELOPE_FIELD_SIZES == sizes == (1, 1, 2, 4, 8)
    assert compiled.BELL_SLEEPERS == doorbell.SLEEPERS_OFFSET
    assert compiled.BELL_BYTES == doorbell.DOORBELL_BYTES
    assert compiled.MAX_SPIN_US == futex.MAX_SPIN_US
    # a doctored Python value is caught on the real module, by name
    reason = native.check_constants(compiled, {"FAST_KIND": ("fastenv.shm.arena.FAST", arena.FAST + 1)})
    assert reason is not None and "FAST_KIND" in reason


_MISMATCH = (
    "from fastenv import native, layout\n"
    "from fastenv.shm import futex\n"
    "try:\n"
    "    native.verify_constants({'FAST_KIND': ('fastenv.shm.arena.FAST', 99)}, (native.LAYOUT_MODULE,))\n"
    "except native.NativeBackendError as exc:\n"
    "    print('raised', exc)\n"
    "    raise SystemExit(3)\n"
    "print(native.BACKEND.name, futex.BACKEND, layout._native_layout is None, layout.native_take is None)\n"
    "print(native.BACKEND.reason)\n"
)


@pytest.mark.skipif(not BOTH_BUILT, reason="the compiled extensions are not built")
def test_a_mismatch_falls_back_to_python_when_auto() -> None:
    result = _child(_MISMATCH, None)
    assert result.returncode == 0, result.stderr
    names, reason = result.stdout.split("\n", 1)
    assert names == "python python True True"
    assert "FAST_KIND" in reason and "fastenv.shm.arena.FAST = 99" in reason


@pytest.mark.skipif(not BOTH_BUILT, reason="the compiled extensions are not built")
def test_a_mismatch_fails_loudly_when_native_is_forced() -> None:
    result = _child(_MISMATCH, "1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("raised FASTENV_NATIVE=1 but") and "FAST_KIND" in result.stdout


def test_native_backend_error_is_an_import_error() -> None:
    assert issubclass(native.NativeBackendError, ImportError)


# ---------------------------------------------------------------- one switch


def _spin_of_a_new_stream() -> object:
    left, right = socket.socketpair()
    try:
        return MessageStream(left, spin_us=100)._spin
    finally:
        left.close()
        right.close()


def test_select_python_switches_every_part(restore_backend: None) -> None:
    previous = native.select_backend("python")
    assert isinstance(previous, native.Backend)
    assert native.BACKEND.name == "python" and native.BACKEND.native is None and native.BACKEND.layout is None
    assert futex.BACKEND == "python" and futex.get_backend(None) is futex.python_backend
    assert futex.load is futex.python_backend.load
    assert Doorbell(bytearray(8), 0).backend is futex.python_backend
    assert layout._native_layout is None
    assert not layout.Layout(infer_spec((1.0, 2))).native
    assert _spin_of_a_new_stream() is None


@pytest.mark.skipif(not BOTH_BUILT, reason="the compiled extensions are not built")
def test_select_native_switches_every_part(restore_backend: None) -> None:
    native.select_backend("native")
    assert native.BACKEND.name == "native"
    assert futex.BACKEND == "native" and futex.get_backend(None) is futex.native_backend
    assert futex.wait is futex.native_backend.wait
    assert Doorbell(bytearray(8), 0).backend is futex.native_backend
    assert layout._native_layout is native.part(native.LAYOUT_MODULE).module
    assert layout.Layout(infer_spec((1.0, 2))).native
    assert layout.native_take is native.BACKEND.layout.take
    assert _spin_of_a_new_stream() is native.BACKEND.native.spin_readable
    assert futex.backend_info()["reason"] is None


def test_select_backend_restores_what_it_returns(restore_backend: None) -> None:
    before = native.BACKEND
    previous = native.select_backend("python")
    assert previous is before
    native.select_backend(previous)
    assert native.BACKEND is before and futex.BACKEND == before.name


def test_select_backend_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        native.select_backend("fortran")


@pytest.mark.skipif(BOTH_BUILT, reason="the compiled extensions are built")
def test_select_native_without_the_extensions_raises(restore_backend: None) -> None:
    with pytest.raises(native.NativeBackendError):
        native.select_backend("native")


def test_env_var_zero_selects_python_for_every_part() -> None:
    code = (
        "from fastenv import native, layout\nfrom fastenv.shm import futex\n"
        "print(native.BACKEND.name, futex.BACKEND, layout._native_layout is None)\nprint(native.BACKEND.reason)\n"
    )
    result = _child(code, "0")
    assert result.returncode == 0, result.stderr
    names, reason = result.stdout.split("\n", 1)
    assert names == "python python True" and "FASTENV_NATIVE=0" in reason


# ---------------------------------------------------------------- reporting and layering


def test_backend_info_reports_the_switch_and_each_part() -> None:
    info = native.backend_info()
    assert info["name"] == native.BACKEND.name and info["reason"] == native.BACKEND.reason
    assert info["requested"] in ("auto", "python", "native")
    assert set(info["parts"]) == set(native.MODULES)
    for name, state in info["parts"].items():
        assert state["available"] is native.part(name).available
        assert (state["error"] is None) is state["available"]


def test_doctor_prints_one_backend_line_and_each_part() -> None:
    report = doctor.report()
    assert report["native backend"] == f"{native.BACKEND.name} ({native.BACKEND.reason})"
    for key in ("futex doorbell", "layout packer", "shm fast path", "tcp receive spin"):
        assert key in report
    if native.BACKEND.name == "python":
        assert report["layout packer"].startswith("python") and report["shm fast path"].startswith("off")


def _fastenv_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("fastenv")}


@pytest.mark.parametrize(
    "module", ["fastenv/native.py", "fastenv/layout.py", "fastenv/codec.py", "fastenv/tcp/framing.py"]
)
def test_native_helpers_come_from_fastenv_native_not_from_shm(module: str) -> None:
    imports = _fastenv_imports(REPO_ROOT / module)
    assert not any(name == "fastenv.shm" or name.startswith("fastenv.shm.") for name in imports), imports
    if module == "fastenv/native.py":
        assert imports <= {"fastenv.errors", "fastenv.errors.FastEnvError"}, imports
