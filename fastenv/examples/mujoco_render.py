"""MuJoCo's offscreen OpenGL for the stack-cube env: choosing the backend, and a renderer bound to one thread.

:func:`configure_gl` picks ``MUJOCO_GL`` (EGL, else OSMesa, on Linux without a
display) before ``mujoco`` is imported; :func:`import_mujoco` does both, with
an error that names the extra to install.

An OpenGL context can be used only on the thread that made it current.
:class:`ThreadBoundRenderer` is bound to the thread that made it (for the env,
the thread that built the env): it creates MuJoCo's ``Renderer`` there on the
first :meth:`~ThreadBoundRenderer.render`, renders there and frees it there,
and refuses any other thread with :class:`GLThreadError` instead of letting
OpenGL fail or crash. Served by fastenv, such an env needs
``fastenv serve TARGET --env-thread main`` (or ``dedicated``), or
``fastenv.EnvServer(..., env_thread="main")`` (or ``"dedicated"``): then the
server builds, calls and closes it on one thread whichever session a call
comes from (:mod:`fastenv.session.envthread`).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastenv.errors import FastEnvError, MissingDependency
from fastenv.loans import reply_array

__all__ = ["GL_APT_PACKAGES", "GLThreadError", "ThreadBoundRenderer", "configure_gl", "import_mujoco"]

#: Debian/Ubuntu packages for headless EGL rendering (Mesa; software rasterizer without a GPU).
GL_APT_PACKAGES: tuple[str, ...] = ("libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libopengl0")

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


class GLThreadError(FastEnvError, RuntimeError):
    """Rendering (or freeing the renderer) was asked of a thread other than the one its OpenGL context belongs to."""


class ThreadBoundRenderer:
    """MuJoCo's offscreen ``Renderer`` for one model, made, used and freed on the thread that made this object.

    Making this object creates no OpenGL context: the first :meth:`render`
    does, on that thread. :meth:`render` and :meth:`close` on any other
    thread raise :class:`GLThreadError` (nothing is drawn or freed).

    Args:
        mujoco: the ``mujoco`` module (:func:`import_mujoco`).
        model: the ``MjModel`` to draw.
        height, width: image size (pixels).
        owner_of: what owns this renderer, for the error messages (``"StackCubeEnv"``).
    """

    def __init__(self, mujoco: Any, model: Any, height: int, width: int, *, owner_of: str = "the env") -> None:
        self._mujoco = mujoco
        self._model = model
        self.height, self.width = int(height), int(width)
        self.thread = threading.current_thread()  # the thread the GL context is (to be) made and used on
        self._owner_of = owner_of
        self._renderer: Any = None

    @property
    def active(self) -> bool:
        """Whether the OpenGL context exists (made by a :meth:`render`, not freed by :meth:`close` yet)."""
        return self._renderer is not None

    def on_own_thread(self) -> bool:
        """Whether the calling thread is the one this renderer belongs to."""
        return threading.current_thread() is self.thread

    def check_thread(self, doing: str = "render") -> None:
        """Raise :class:`GLThreadError` unless the calling thread is the one this renderer belongs to."""
        if self.on_own_thread():
            return
        raise GLThreadError(
            f"{self._owner_of} cannot {doing} on thread {threading.current_thread().name!r}: it renders on thread "
            f"{self.thread.name!r}, the one that built it, because an OpenGL context can be used only on the thread "
            "that made it. Serve it so that it is built, called and closed on one thread: "
            "`fastenv serve TARGET --env-thread main` (or `--env-thread dedicated`), or "
            '`fastenv.EnvServer(..., env_thread="main")` (or `env_thread="dedicated"`)'
        )

    def render(self, data: Any, cameras: Sequence[str]) -> list[np.ndarray]:
        """One new uint8[H, W, 3] image per camera, for the state in ``data``.

        The images are :func:`fastenv.reply_array` arrays: served over shared
        memory, MuJoCo can render straight into the reply.

        Raises:
            GLThreadError: called on another thread than the one that made this renderer.
            MissingDependency: the first call could not create an offscreen OpenGL context.
        """
        self.check_thread("render")
        renderer = self._renderer
        if renderer is None:
            renderer = self._renderer = self._create()
        images = [reply_array((self.height, self.width, 3), np.uint8) for _ in cameras]
        for camera, image in zip(cameras, images):
            renderer.update_scene(data, camera=camera)
            renderer.render(out=image)
        return images

    def _create(self) -> Any:
        try:
            return self._mujoco.Renderer(self._model, self.height, self.width)
        except Exception as exc:  # GL context creation failed: translate at the edge
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

    def close(self) -> None:
        """Free the OpenGL context, if one was made. Safe to call twice.

        Raises:
            GLThreadError: a context exists and this is not its thread (it is
                left as it is, for :meth:`close` on its own thread).
        """
        renderer = self._renderer
        if renderer is None:
            return
        self.check_thread("free its renderer")
        self._renderer = None
        renderer.close()

    def abandon(self) -> None:
        """Forget the context without freeing it: for a thread that may not touch it (the process exit frees it)."""
        renderer, self._renderer = self._renderer, None
        if renderer is not None:
            _ABANDONED.append(renderer)  # kept alive: its own __del__ would free it on this wrong thread


# Renderers given up by ThreadBoundRenderer.abandon(), never to be freed off their thread.
_ABANDONED: list[Any] = []
