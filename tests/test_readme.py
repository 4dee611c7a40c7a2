"""The README tells the truth: the repository paths it names exist, and its step-by-step commands run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKER = "<!-- readme-test: run -->"
TOP_LEVEL = ("resnext_deploy/", "calibration/", "scripts/", "tests/", "docs/")


def command_blocks(text: str) -> list[list[str]]:
    """The fenced blocks right after a ``readme-test: run`` marker, as their command lines (comments dropped)."""
    blocks = []
    for found in re.finditer(re.escape(MARKER) + r"\s*```[^\n]*\n(.*?)```", text, re.DOTALL):
        lines = [line.split(" # ", 1)[0].strip() for line in found.group(1).splitlines()]
        blocks.append([line for line in lines if line])
    return blocks


def test_the_repository_paths_the_readme_names_exist() -> None:
    roots = "|".join(map(re.escape, TOP_LEVEL))
    named = set(re.findall(rf"`((?:{roots})[\w./-]*)`", README.read_text()))
    assert "resnext_deploy/demo/digits/" in named  # where the digits are (not calibration/digits)
    assert [path for path in sorted(named) if not (REPO / path).exists()] == []


def test_the_readme_has_a_step_by_step_block_with_the_cpu_flags() -> None:
    [block] = command_blocks(README.read_text())
    assert all(line.startswith("resnext-deploy ") for line in block)
    assert all("--onnx-only" in line for line in block if line.startswith("resnext-deploy build-trt"))


@pytest.mark.slow
def test_the_readmes_step_by_step_commands_run_as_written_on_a_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for block in command_blocks(README.read_text()):
        for line in block:
            argv = shlex.split(line)
            command = [sys.executable, "-m", "resnext_deploy", *argv[1:]]
            done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"`{line}` exited {done.returncode}: {done.stderr.strip()[-500:]}"
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "model.int8.onnx").is_file()
