"""What the user sees: the one progress helper, and tables as text or Markdown.

Progress goes to stderr: a Rich bar in a terminal, a plain line now and then otherwise (a CI log
or a file), so that stdout stays clean for results.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence

TABLE_WIDTH = 120  # a terminal whose width cannot be read
PLAIN_EVERY_S = 10.0  # a plain progress line at most this often when stderr is not a terminal

Advance = Callable[..., None]


@contextlib.contextmanager
def progress(total: float, description: str, unit: str = "samples") -> Iterator[Advance]:
    """Yield ``advance(amount, description=None)`` for a bar of ``total`` units on stderr.

    The bar is redrawn only when ``advance`` is called, never from a background thread, so it does
    not run while a benchmark is timing.
    """
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield _plain_progress(total, description, unit)
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, auto_refresh=False, transient=True) as bar:
        task = bar.add_task(description, total=total)
        bar.refresh()

        def advance(amount: float, description: str | None = None) -> None:
            bar.update(task, advance=amount, description=description or None)  # None: the description stays
            bar.refresh()

        yield advance


def _plain_progress(total: float, description: str, unit: str) -> Advance:
    """A line on stderr at most every ``PLAIN_EVERY_S`` seconds, and at the end."""
    state = {"done": 0.0, "last": time.monotonic(), "start": time.monotonic()}

    def advance(amount: float, description_now: str | None = None) -> None:
        state["done"] += amount
        now = time.monotonic()
        finished = state["done"] >= total
        if finished or now - state["last"] >= PLAIN_EVERY_S:
            state["last"] = now
            done = f"{state['done']:.0f}" if unit != "s" else f"{state['done']:.1f}"
            print(
                f"{description_now or description}: {done}/{total:g} {unit}, {now - state['start']:.0f} s elapsed",
                file=sys.stderr,
                flush=True,
            )

    return advance


def table_width() -> int | None:
    """The width tables fit: ``COLUMNS`` when set, else the terminal's; None for a file or a pipe (no limit)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size((TABLE_WIDTH, 24)).columns
    return None


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> str:
    """A Rich table as plain text within :func:`table_width` (a file: its natural width); columns with no values
    are left out.

    Cells wrap between words only: each column is at least as wide as its longest word, so a name such as
    ``onnxruntime-cpu:fp32`` is never cut. When the boxed columns cannot fit that way, the table is drawn
    without borders; when even that cannot fit, each row is printed as ``header  value`` lines.
    """
    keep = [i for i in range(len(headers)) if any(row[i] != "-" for row in rows)] if rows else range(len(headers))
    shown_headers = [headers[i] for i in keep]
    shown_rows = [[str(row[i]) for i in keep] for row in rows]
    cells = [[str(header), *(row[j] for row in shown_rows)] for j, header in enumerate(shown_headers)]
    count = len(cells)
    natural = sum(max(len(cell) for cell in column) for column in cells) + 3 * count + 1
    width = table_width() or max(natural, len(title or ""))  # a file or a pipe: the table as wide as it is
    words = {word for column in cells for cell in column for word in cell.split()}
    # boxed: a border and a space either side of each column; bare: one space either side, none at the edges
    for boxed, chrome in ((True, 3 * count + 1), (False, 2 * count - 2)):
        widths = _column_widths(cells, width - chrome)
        text = None if widths is None else _draw(shown_headers, shown_rows, title, widths, boxed, width)
        if text is not None and all(word in text for word in words):  # Rich kept the widths: nothing was cut
            return text
    return _records(shown_headers, shown_rows, title, width)


def _draw(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str | None,
    widths: Sequence[int],
    boxed: bool,
    width: int,
) -> str:
    from rich.console import Console
    from rich.table import Column, Table

    columns = (Column(header, overflow="fold", width=w) for header, w in zip(headers, widths, strict=True))
    style = {} if boxed else {"box": None, "pad_edge": False}
    table = Table(*columns, title=title, **style)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(table)
    return buffer.getvalue().rstrip()


def _column_widths(columns: Sequence[Sequence[str]], room: int) -> list[int] | None:
    """Widths that give each column its longest word, then share what is left toward each one's longest cell;
    None when the longest words alone do not fit in ``room``."""
    least = [max((len(word) for cell in column for word in cell.split()), default=1) for column in columns]
    most = [max(least[i], *(len(cell) for cell in column)) for i, column in enumerate(columns)]
    spare = room - sum(least)
    if spare < 0:
        return None
    widths = list(least)
    for i in sorted(range(len(columns)), key=lambda i: most[i] - least[i]):  # the narrow ones whole first
        grant = min(spare, most[i] - least[i])
        widths[i] += grant
        spare -= grant
    return widths


def _records(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None, width: int) -> str:
    """Each row as ``header  value`` lines, a blank line between rows: for widths too small for the columns.

    A value that does not fit beside its header goes below it, wrapped between words (a word longer than the
    width stays whole).
    """
    label = max((len(h) for h in headers), default=0)
    blocks = []
    for row in rows:
        lines = []
        for header, value in zip(headers, row, strict=True):
            line = f"{header:<{label}}  {value}"
            if len(line) <= width:
                lines.append(line)
                continue
            wrapped = textwrap.wrap(str(value), max(1, width - 2), break_long_words=False, break_on_hyphens=False)
            lines += [header, *(f"  {part}" for part in wrapped)]
        blocks.append("\n".join(lines))
    return "\n\n".join(([title] if title else []) + blocks)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(row) for row in rows)])
