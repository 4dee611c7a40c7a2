"""Tables fit the width COLUMNS gives and never cut a name (the verify table of a real run, through the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnext_deploy.cli import main
from resnext_deploy.ui import render_table, table_width

HEADERS = ["candidate", "artifact", "n", "cos min", "top-1 raw / decisive (count)", "result"]
ROWS = [
    ["onnxruntime-cpu:fp32", "model.onnx", "64", "1.000000", "[100.00%] / 100.00% (64)", "pass"],
    ["openvino-cpu:int8", "model.int8.onnx", "64", "0.996176", "[97.22%] / 98.51% (67)", "pass"],
]


def _cells_whole(text: str, rows: list[list[str]]) -> bool:
    return all(word in text for row in rows for cell in row for word in cell.split())


@pytest.mark.parametrize("columns", [200, 100, 60, 30])
def test_a_table_fits_columns_and_never_cuts_a_name(monkeypatch, columns: int) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    text = render_table(HEADERS, ROWS, title="verify: passed")
    longest = max(len(word) for row in [HEADERS, *ROWS] for cell in row for word in cell.split())
    assert _cells_whole(text, ROWS) and "onnxruntime-cpu:fp32" in text
    assert all(len(line) <= max(columns, 2 + longest) for line in text.splitlines())
    if columns >= 100:  # room for the columns: a table, each row on one line
        assert "┃ candidate" in text and any(
            "onnxruntime-cpu:fp32" in line and "pass" in line for line in text.splitlines()
        )


def test_without_columns_a_file_or_pipe_gets_the_whole_table(monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert table_width() is None  # pytest's stdout is not a terminal: no width to fit
    text = render_table(HEADERS, ROWS * 3)
    assert len(text.splitlines()) == 4 + len(ROWS) * 3  # borders, header, one line per row: nothing wrapped


def test_verifys_table_on_a_narrow_terminal_keeps_names_whole(tiny_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "70")
    assert main(["verify", "--dir", str(tiny_dir), "--backends", "onnxruntime", "--count", "4"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime-cpu:fp32" in out and all(len(line) <= 70 for line in out.splitlines())
