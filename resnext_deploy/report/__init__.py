"""One page for a review: DIR/report.md and DIR/report.json, built only from the JSON files in DIR.

:mod:`.model` reads the files into a :class:`Report`; :mod:`.render` writes report.md from it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..artifacts import atomic_path
from .model import (
    REPORT_JSON,
    REPORT_MD,
    FastestRatio,
    Headline,
    Report,
    WrittenReport,
    build_report,
    read_report,
    report_json,
)
from .render import render_markdown, triton_section, where_markdown

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "FastestRatio",
    "Headline",
    "Report",
    "WrittenReport",
    "build_report",
    "read_report",
    "render_markdown",
    "write_report",
]


def write_report(directory: str | Path, log: Callable[[str], None] = print) -> WrittenReport:
    """Write DIR/report.md and DIR/report.json from the directory alone; return where, and the run's status.

    Every file is read (and a malformed one refused) and both files are rendered before either is renamed
    into place, so a report is written whole or not at all.
    """
    directory = Path(directory)
    report = read_report(directory)
    markdown = render_markdown(report) + triton_section(directory) + where_markdown(directory)
    data = report_json(report)
    path, json_path = directory / REPORT_MD, directory / REPORT_JSON
    with atomic_path(json_path) as json_tmp, atomic_path(path) as markdown_tmp:
        json_tmp.write_bytes(data.encode("utf-8", "backslashreplace"))
        markdown_tmp.write_bytes(markdown.encode("utf-8", "backslashreplace"))
    log(f"wrote {path} and {json_path}")
    return WrittenReport(path, json_path, report.status)
