"""MuJoCo's offscreen OpenGL for the stack-cube env: choosing the backend, and a thread that owns the context.

:func:`configure_gl` picks ``MUJOCO_GL`` (EGL, else OSMesa, on Linux without a
display) before ``mujoco`` is imported; :func:`import_mujoco` does both, with
an error that names the extra to install. :class:`RenderThread` creates, uses
and frees MuJoCo's ``Renderer`` on one thread of its own, because an OpenGL
context belongs to the thread that made it current while fastenv's server
calls an env from its sessions' threads.
"""

from __future__ import annotations

import concurrent.futures
import ctypes.util
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastenv.errors import FastEnvTimeout, MissingDependency
from fastenv.loans import reply_array

__all__ = ["GL_APT_PACKAGES", "RENDER_TIMEOUT_S", "RenderThread", "configure_gl", "import_mujoco"]

#: Debian/Ubuntu packages for headless EGL rendering (Mesa; software rasterizer without a GPU).
GL_APT_PACKAGES: tuple[str, ...] = ("libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libopengl0")

#: Seconds one render (all cameras) may take before :class:`~fastenv.FastEnvTimeout`.
RENDER_TIMEOUT_S = 60.0

# Whether something imported mujoco before this module could choose MUJOCO_GL (None: not known yet).
_MUJOCO_IMPORTED_FIRST: bool | None = None


def configure_gl() -> str:
    """Choose MuJoCo's offscreen OpenGL backend (``MUJOCO_GL``) before ``mujoco`` is imported.

    A ``MUJOCO_GL`` already set is kept. On Linux: ``egl`` when libEGL is
    installed, else ``osmesa`` when libOSMesa is, else MuJoCo's default
    (GLFW, which needs a display). Elsewhere MuJoCo's default (CGL on macOS,
    WGL on Windows). Returns the value now in effect (``""`` for the default).
    """
    global _MUJOCO_IMPORTED_FIRST
    if _MUJOCO_IMPORTED_FIRST is None:
        _MUJOCO_IMPORTED_FIRST = "mujoco" in sys.modules
    chosen = os.environ.get("MUJOCO_GL", "")
    if chosen or not sys.platform.startswith("linux"):
        return chosen
    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = backend
            return backend
    return ""


def import_mujoco() -> Any:
    """The ``mujoco`` module, imported after :func:`configure_gl` (``MissingDependency`` when it is not installed)."""
    configure_gl()
    try:
        import mujoco
    except ImportError as exc:
        raise MissingDependency(f'the MuJoCo stack-cube env needs MuJoCo: pip install "fastenv[sim]" ({exc})') from exc
    return mujoco


class RenderThread:
    """MuJoCo's offscreen renderer, created, used and freed on one thread of its own.

    An OpenGL context can be current in one thread only; the thread that
    calls the env may change from call to call (fastenv's server runs each
    session's calls on that session's thread), so all GL work goes here.
    """

    def __init__(self, mujoco: Any, model: Any, height: int, width: int) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mujoco-render")
        self._renderer: Any = None
        try:
            self._renderer = self._run(mujoco.Renderer, model, height, width)
        except FastEnvTimeout:
            self._executor.shutdown(wait=False)
            raise
        except Exception as exc:  # GL context creation failed: translate at the edge
            self._executor.shutdown(wait=True)
            backend = os.environ.get("MUJOCO_GL") or "MuJoCo's default (GLFW, needs a display)"
            if _MUJOCO_IMPORTED_FIRST:
                backend += (
                    " (but mujoco was imported before fastenv could set MUJOCO_GL: set it in the environment, "
                    "or import fastenv.examples.mujoco_stack first)"
                )
            raise MissingDependency(
                f"offscreen rendering with MUJOCO_GL={backend} failed ({type(exc).__name__}: {exc}); "
                f"on Debian/Ubuntu: apt-get install {' '.join(GL_APT_PACKAGES)} (EGL) or libosmesa6 "
                "(MUJOCO_GL=osmesa)"
            ) from exc

    def _run(self, function: Any, *args: Any) -> Any:
        future = self._executor.submit(function, *args)
        try:
            return future.result(timeout=RENDER_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise FastEnvTimeout(f"MuJoCo rendering took longer than {RENDER_TIMEOUT_S:.0f}s") from None

    def render(self, data: Any, cameras: Sequence[str]) -> list[np.ndarray]:
        """One new uint8[H, W, 3] image per camera, for the state in ``data``.

        The images are :func:`fastenv.reply_array` arrays, taken here on the
        caller's thread (the one fastenv serves the call on): served over
        shared memory, MuJoCo renders straight into the reply.
        """
        renderer = self._renderer
        images = [reply_array((renderer.height, renderer.width, 3), np.uint8) for _ in cameras]
        return self._run(self._render, data, tuple(cameras), images)

    def _render(self, data: Any, cameras: tuple[str, ...], images: list[np.ndarray]) -> list[np.ndarray]:
        for camera, image in zip(cameras, images):
            self._renderer.update_scene(data, camera=camera)
            self._renderer.render(out=image)
        return images

    def close(self) -> None:
        """Free the GL context (on its thread) and stop the thread. Safe to call twice."""
        renderer, self._renderer = self._renderer, None
        if renderer is not None:
            try:
                self._run(renderer.close)
            except RuntimeError:
                pass  # interpreter shutdown stopped the thread already; the process exit frees the context
            finally:
                self._executor.shutdown(wait=True)
