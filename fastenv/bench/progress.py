"""Progress of a benchmark run on stderr: a rich progress bar, one line per run, or nothing.

:func:`open_progress` yields a :class:`Progress` with two calls, ``start(label)``
before a run and ``finish(label, status)`` after it. The mode:

- ``bar``: a :mod:`rich` progress bar (what is running, runs done of all,
  elapsed time). The default when stderr is a terminal.
- ``lines``: ``  [3/12] fastenv-tcp small: ok``, one line per finished run.
  The default when stderr is not a terminal (CI logs, a redirect).
- ``off``: nothing (``fastenv-bench --no-progress``).

Nothing is ever written to stdout, so the table (or ``--json -``) stays clean.
The bar redraws only when a run starts or finishes, never from a background
timer: a refresh thread would take the GIL in the middle of the timed loop of
an in-process client and show up in its tail latencies.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

from fastenv.bench.render import rich_available

__all__ = ["MODES", "Progress", "choose_mode", "open_progress"]

MODES: tuple[str, ...] = ("bar", "lines", "off")


def choose_mode(stream: TextIO, *, disabled: bool = False) -> str:
    """``off`` when ``disabled``, else ``bar`` if ``stream`` is a terminal and rich is installed, else ``lines``."""
    if disabled:
        return "off"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() and rich_available() else "lines"


class Progress:
    """Reports runs as they start and finish (see the module docstring for the modes)."""

    def __init__(self, total: int, mode: str, stream: TextIO) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; choose one of {', '.join(MODES)}")
        self.total = int(total)
        self.mode = mode
        self.done = 0
        self._stream = stream
        self._bar = None
        self._task = None
        if mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=stream, highlight=False),
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,  # stdout is the table's (or the JSON's), never the bar's
                redirect_stderr=False,
            )

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("starting", total=self.total)
            self._bar.refresh()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start(self, label: str) -> None:
        """A run called ``label`` begins."""
        if self._bar is not None:
            self._bar.update(self._task, description=label)
            self._bar.refresh()

    def finish(self, label: str, status: str) -> None:
        """The run called ``label`` ended with ``status`` (``ok``, ``unavailable``, ...)."""
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{label}: {status}")
            self._bar.refresh()
        elif self.mode == "lines":
            self._stream.write(f"  [{self.done}/{self.total}] {label}: {status}\n")
            self._stream.flush()


@contextlib.contextmanager
def open_progress(total: int, *, disabled: bool = False, stream: TextIO | None = None) -> Iterator[Progress]:
    """A :class:`Progress` over ``total`` runs on ``stream`` (default stderr), mode by :func:`choose_mode`."""
    stream = sys.stderr if stream is None else stream
    with Progress(total, choose_mode(stream, disabled=disabled), stream) as progress:
        yield progress
