"""Tables of benchmark results as plain text, Markdown or a rich-rendered terminal table.

A :class:`Table` is data only: columns, rows of already formatted cells (or a
:class:`Note`, a row that says why it has no figures) and footnotes. The three
renderers turn one into text; :func:`emit` writes it to a stream.

- ``plain``: aligned columns, a dashed rule under the header, footnotes below
  (what ``fastenv-bench`` prints when stdout is not a terminal).
- ``markdown``: a GitHub-flavoured pipe table (numbers right-aligned), then the
  footnotes as a list: for pasting into notes and issues.
- ``rich``: a :class:`rich.table.Table` (the default on a terminal).

Example::

    table = Table([Column("transport", "left"), Column("p50 µs")], [["fastenv-shm", "12.0"]])
    print(render(table, "markdown"))
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TextIO

from fastenv.errors import MissingDependency

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table as RichTable

__all__ = ["FORMATS", "Column", "Note", "Table", "default_format", "emit", "render", "rich_available"]

#: The output formats :func:`render` knows.
FORMATS: tuple[str, ...] = ("plain", "rich", "markdown")

#: Width a rich table may use when the stream is not a terminal (wide enough never to wrap a row).
_RICH_WIDTH = 240


def rich_available() -> bool:
    """Whether the optional ``rich`` package (``pip install "fastenv[bench]"``) is installed."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _require_rich() -> None:
    if not rich_available():
        raise MissingDependency(
            'rich tables need the rich package: pip install "fastenv[bench]" (or use --format plain / markdown)'
        )


@dataclass(frozen=True)
class Column:
    """A column: its header and how its cells are aligned."""

    header: str
    align: Literal["left", "right"] = "right"


@dataclass(frozen=True)
class Note:
    """A row without figures: its name (first column), then a sentence (an unavailable transport)."""

    name: str
    text: str


@dataclass
class Table:
    """Rows of formatted cells under ``columns``; ``title`` above, ``footnotes`` below.

    Every row that is not a :class:`Note` has one cell per column.
    """

    columns: Sequence[Column]
    rows: list[Sequence[str] | Note] = field(default_factory=list)
    title: str | None = None
    footnotes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for row in self.rows:
            if not isinstance(row, Note) and len(row) != len(self.columns):
                raise ValueError(f"row {list(row)!r} has {len(row)} cells for {len(self.columns)} columns")


def default_format(stream: TextIO) -> str:
    """``rich`` when ``stream`` is a terminal and rich is installed, else ``plain``."""
    isatty = getattr(stream, "isatty", None)
    return "rich" if isatty is not None and isatty() and rich_available() else "plain"


def render(table: Table, fmt: str = "plain", *, width: int | None = None, color: bool = False) -> str:
    """``table`` as text in format ``fmt`` (one of :data:`FORMATS`), without a trailing newline.

    ``width`` and ``color`` apply to ``rich`` only: the console width (default:
    wide enough not to wrap) and whether to keep ANSI styles.

    Raises:
        ValueError: for an unknown format.
    """
    if fmt == "plain":
        return _render_plain(table)
    if fmt == "markdown":
        return _render_markdown(table)
    if fmt == "rich":
        _require_rich()
        buffer = io.StringIO()
        console = _console(buffer, width=width or _RICH_WIDTH, color=color)
        console.print(_rich_table(table))
        _print_rich_footnotes(console, table)
        return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())
    raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")


def emit(table: Table, fmt: str, stream: TextIO | None = None) -> None:
    """Write ``table`` to ``stream`` (default stdout) in ``fmt``, followed by a newline.

    ``rich`` on a terminal uses the terminal's width and colours.
    """
    stream = sys.stdout if stream is None else stream
    if fmt == "rich" and default_format(stream) == "rich":
        console = _console(stream, width=None, color=True)
        console.print(_rich_table(table))
        _print_rich_footnotes(console, table)
    else:
        stream.write(render(table, fmt) + "\n")
    stream.flush()


# --------------------------------------------------------------------------
# plain
# --------------------------------------------------------------------------


def _render_plain(table: Table) -> str:
    widths = [len(column.header) for column in table.columns]
    for row in table.rows:
        if not isinstance(row, Note):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        out = [
            f"{cell:<{w}}" if column.align == "left" else f"{cell:>{w}}"
            for cell, w, column in zip(cells, widths, table.columns)
        ]
        return "  ".join(out).rstrip()

    text = [] if table.title is None else [table.title]
    text += [line([c.header for c in table.columns]), "  ".join("-" * w for w in widths)]
    for row in table.rows:
        if isinstance(row, Note):
            text.append(f"{row.name:<{widths[0]}}  {row.text}".rstrip())
        else:
            text.append(line(row))
    text += table.footnotes
    return "\n".join(text)


# --------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _render_markdown(table: Table) -> str:
    text = [] if table.title is None else [f"**{_md_cell(table.title)}**", ""]
    text.append("| " + " | ".join(_md_cell(c.header) for c in table.columns) + " |")
    text.append("|" + "|".join(":---" if c.align == "left" else "---:" for c in table.columns) + "|")
    for row in table.rows:
        if isinstance(row, Note):
            cells = [row.name, f"*{row.text}*"] + [""] * (len(table.columns) - 2)
            cells = cells[: max(len(table.columns), 2)]
        else:
            cells = list(row)
        text.append("| " + " | ".join(_md_cell(cell) for cell in cells) + " |")
    if table.footnotes:
        text.append("")
        text += [f"- {note}" for note in table.footnotes]
    return "\n".join(text)


# --------------------------------------------------------------------------
# rich
# --------------------------------------------------------------------------


def _console(stream: TextIO, *, width: int | None, color: bool) -> Console:
    from rich.console import Console

    return Console(
        file=stream,
        width=width,
        force_terminal=color if width is not None else None,
        no_color=not color,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )


def _rich_table(table: Table) -> RichTable:
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    out = RichTable(title=table.title, box=box.ROUNDED, header_style="bold", title_justify="left")
    for i, column in enumerate(table.columns):
        out.add_column(
            column.header,
            justify=column.align,
            no_wrap=column.align == "right",
            style="bold" if i == 0 else None,
        )
    for row in table.rows:
        if isinstance(row, Note):
            filler = ["—"] * (len(table.columns) - 1)
            out.add_row(Text(row.name, style="yellow"), *filler)
        else:
            out.add_row(*row)
    return out


def _print_rich_footnotes(console: Console, table: Table) -> None:
    from rich.text import Text

    for row in table.rows:
        if isinstance(row, Note):
            console.print(Text(f"{row.name}: {row.text}", style="yellow"))
    for note in table.footnotes:
        console.print(Text(note, style="dim"))
