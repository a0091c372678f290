"""PNG figures of benchmark results (``fastenv-bench --plot PATH``), drawn with matplotlib's Agg canvas.

matplotlib is optional (``pip install "fastenv[plot]"``); without it every
function here raises :class:`fastenv.errors.MissingDependency`. Figures are
built on :class:`matplotlib.figure.Figure` with an explicit
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`: no pyplot, no
display, and the process-wide backend is left alone.

Inputs are plain data, so this module knows nothing of how the numbers were
measured:

- :func:`plot_comparison`: per payload, the latency distribution of every
  transport as an exceedance curve (the fraction of steps slower than x, log
  scales: the median where a curve crosses 0.5, p99 where it crosses 0.01);
  with two or more payloads (``--sweep``) one more panel, observation MB/s
  against observation size per transport (log-log).
- :func:`plot_scaling`: steps/s against the scaling count (clients, or envs
  per vector env) per transport, with each transport's linear-scaling line
  from its first point.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastenv.errors import MissingDependency

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["INSTALL_HINT", "plot_comparison", "plot_scaling", "require_matplotlib"]

INSTALL_HINT = 'pip install "fastenv[plot]"'

_PANEL_INCHES = (6.4, 4.2)
_DPI = 100


def require_matplotlib() -> None:
    """Check that matplotlib can be imported (call before a long run that ends in a plot).

    Raises:
        MissingDependency: matplotlib is missing; the message names the extra.
    """
    _figure_classes()


def _figure_classes() -> tuple[type[Figure], type[Any]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependency(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from exc
    return Figure, FigureCanvasAgg


def _new_figure(panels: int) -> tuple[Figure, Any, list[Axes]]:
    figure_cls, canvas_cls = _figure_classes()
    cols = min(panels, 2)
    rows = math.ceil(panels / cols)
    figure = figure_cls(figsize=(_PANEL_INCHES[0] * cols, _PANEL_INCHES[1] * rows), dpi=_DPI, layout="constrained")
    canvas = canvas_cls(figure)
    axes = [figure.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return figure, canvas, axes


def _colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per name, stable across the panels of a figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _save(canvas: Any, path: str | os.PathLike[str]) -> None:
    with open(path, "wb") as handle:
        canvas.print_png(handle)


def _log_axis(axis: Any) -> None:
    """Log scale with plain-number labels at 1, 2, 5 × 10^k and unlabelled minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.10g}"))
    axis.set_minor_formatter(NullFormatter())


def _null_formatter() -> Any:
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _exceedance(ax: Axes, samples_us: np.ndarray, **style: Any) -> None:
    """Plot the fraction of samples strictly slower than x (log-log), ending at 1/n."""
    data = np.sort(np.asarray(samples_us, dtype=np.float64).ravel())
    if data.size == 0:
        return
    n = data.size
    slower = 1.0 - np.arange(n) / n  # at data[i], the fraction of samples >= data[i]
    ax.step(data, slower, where="post", **style)


def plot_comparison(
    latencies: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    nbytes: Mapping[str, int] | None = None,
    throughput: Mapping[str, Mapping[str, float]] | None = None,
    title: str | None = None,
) -> None:
    """Write a PNG of latency distributions (and, for a sweep, throughput against payload size).

    Args:
        latencies: ``{payload: {transport: round-trip times in µs}}``; one
            panel per payload, one curve per transport (rows without samples
            are left out).
        path: where the PNG goes (overwritten).
        nbytes: ``{payload: observation bytes}``, for the throughput panel.
        throughput: ``{transport: {payload: MB/s}}``; with two or more payloads
            and ``nbytes``, a log-log panel of MB/s against observation size.
        title: the figure's title.

    Raises:
        MissingDependency: matplotlib is not installed.
        ValueError: nothing to plot.
    """
    require_matplotlib()
    payloads = [p for p, rows in latencies.items() if any(np.size(v) for v in rows.values())]
    sweep = bool(throughput) and nbytes is not None and len(nbytes) >= 2
    if not payloads and not sweep:
        raise ValueError("no latency samples to plot")
    names = list(dict.fromkeys(t for rows in latencies.values() for t in rows))
    names += [t for t in (throughput or {}) if t not in names]
    colors = _colors(names)
    figure, canvas, axes = _new_figure(len(payloads) + (1 if sweep else 0))
    for ax, payload in zip(axes, payloads):
        for transport, samples in latencies[payload].items():
            if np.size(samples):
                _exceedance(ax, samples, color=colors[transport], label=transport, linewidth=1.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_axis(ax.xaxis)
        size = f", {nbytes[payload]:,} B observation" if nbytes and payload in nbytes else ""
        ax.set_title(f"step round trip: {payload}{size}")
        ax.set_xlabel("round trip (µs)")
        ax.set_ylabel("fraction of steps slower")
        for level, label in ((0.5, "p50"), (0.01, "p99")):
            ax.axhline(level, color="0.6", linewidth=0.8, linestyle=":")
            ax.annotate(label, (1.0, level), xycoords=("axes fraction", "data"), xytext=(-3, 2),
                        textcoords="offset points", fontsize=8, color="0.4", ha="right")  # fmt: skip
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if sweep:
        assert throughput is not None and nbytes is not None
        ax = axes[-1]
        for transport, rates in throughput.items():
            points = sorted((nbytes[p], r) for p, r in rates.items() if p in nbytes and r > 0 and math.isfinite(r))
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o", color=colors[transport], label=transport, linewidth=1.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title("observation throughput against payload size")
        ax.set_xlabel("observation size (bytes)")
        ax.set_ylabel("MB/s (observation bytes × steps/s)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        figure.suptitle(title)
    _save(canvas, path)


def plot_scaling(
    rates: Mapping[str, Mapping[int, float]],
    path: str | os.PathLike[str],
    *,
    axis_label: str = "concurrent clients",
    title: str | None = None,
    rate_label: str = "steps/s (all clients)",
) -> None:
    """Write a PNG of steps/s against the scaling count, one line per transport.

    Args:
        rates: ``{transport: {count: aggregate steps/s}}``.
        path: where the PNG goes (overwritten).
        axis_label: what the count is (x axis label).
        title: the figure's title.
        rate_label: what the rate counts (y axis label).

    Raises:
        MissingDependency: matplotlib is not installed.
        ValueError: nothing to plot.
    """
    require_matplotlib()
    series = {
        transport: sorted((c, r) for c, r in points.items() if r > 0 and math.isfinite(r))
        for transport, points in rates.items()
    }
    series = {t: points for t, points in series.items() if points}
    if not series:
        raise ValueError("no scaling points to plot")
    colors = _colors(list(series))
    _, canvas, (ax,) = _new_figure(1)
    counts = sorted({c for points in series.values() for c, _ in points})
    for transport, points in series.items():
        x, y = zip(*points)
        ax.plot(x, y, marker="o", color=colors[transport], label=transport, linewidth=1.6)
        first_count, first_rate = points[0]
        ax.plot(counts, [first_rate * c / first_count for c in counts], color=colors[transport],
                linestyle="--", linewidth=0.8, alpha=0.6)  # fmt: skip
    ax.plot([], [], color="0.5", linestyle="--", linewidth=0.8, label="linear scaling from the first point")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.xaxis.set_minor_formatter(_null_formatter())
    ax.set_xlabel(axis_label)
    ax.set_ylabel(rate_label)
    ax.set_title(title or f"throughput against {axis_label}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _save(canvas, path)
