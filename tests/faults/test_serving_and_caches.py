"""Hostile requests to the served endpoint, stale and tampered caches, resources, protected files, offline runs.

Like the first two batteries (test_faults.py, test_inputs_second_battery.py), every case asserts the
documented exit code, one ``error:`` line and no traceback, and that nothing is written outside ``--dir``;
where memory is the point, the case runs in a child process whose peak RSS is bounded. Cases that need
PyTriton live in tests/serving (they run in the Triton environment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import QUICK_BENCH, TINY, cli, fails, snapshot, unchanged

from resnext_deploy.artifacts import MANIFEST_NAME
from resnext_deploy.environment import cap_threads, usable_cpus
from resnext_deploy.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]


def child_env(home: Path) -> dict[str, str]:
    """A fresh process's environment: this checkout first on the path, HOME a folder the test watches."""
    return {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO), "RESNEXT_DEPLOY_DEBUG": ""}


# ----------------------------------------------------------------------------------------------
# Offline by default


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("strace"),
    reason="needs root (a network namespace) and strace",
)
def test_verify_makes_no_lookup_and_writes_nothing_under_home(tiny_dir: Path, tmp_path: Path) -> None:
    """In a namespace without a network, strace sees no resolver read and no internet socket; HOME stays empty."""
    home = tmp_path / "home"
    home.mkdir()
    trace = tmp_path / "trace.txt"
    command = ["unshare", "-n", "strace", "-f", "-qq", "-e", "trace=connect,openat", "-o", str(trace)]
    command += [sys.executable, "-m", "resnext_deploy", "verify", "--dir", str(tiny_dir), "--count", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env(home), cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    lines = trace.read_text().splitlines()
    lookups = [line for line in lines if "resolv.conf" in line or "AF_INET" in line]
    assert lookups == [], lookups[:5]
    assert list(home.rglob("*")) == []


# ----------------------------------------------------------------------------------------------
# Protected files and the tool's own temporary files


@pytest.mark.parametrize(
    ("command", "target"),
    [
        (["verify", "--count", "2"], MANIFEST_NAME),
        (["verify", "--count", "2"], "model.onnx"),
        (["bench", "--backends", "onnxruntime", "--precisions", "fp32", *QUICK_BENCH], "model.onnx"),
        (["bench", "--backends", "onnxruntime", "--precisions", "fp32", *QUICK_BENCH], "verify.json"),
        (["verify", "--count", "2"], "report.md"),
    ],
)
def test_json_never_replaces_a_file_the_tool_owns(capsys, tiny_dir: Path, command: list[str], target: str) -> None:
    before = snapshot(tiny_dir)
    outcome = cli(capsys, command[0], "--dir", tiny_dir, *command[1:], "--json", tiny_dir / target)
    fails(outcome, ExitCode.BAD_INPUT, "owns", target)
    unchanged(tiny_dir, before)


def test_json_may_go_to_another_name_in_the_directory(capsys, tiny_dir: Path) -> None:
    outcome = cli(capsys, "verify", "--dir", tiny_dir, "--count", "2", "--json", tiny_dir / "mine.json")
    assert outcome.code in (ExitCode.OK, ExitCode.VERIFY_FAILED), outcome.err
    assert json.loads((tiny_dir / "mine.json").read_text())


# ----------------------------------------------------------------------------------------------
# Special files, cycles and deep nesting in recorded paths and manifests


def _record_checkpoint(directory: Path, checkpoint: Path) -> None:
    """The manifest now says model.onnx came from ``checkpoint`` (as a hostile or careless edit would)."""
    data = json.loads((directory / MANIFEST_NAME).read_text())
    source = data["artifacts"]["model.onnx"]["options"]["source"]
    source["checkpoint"], source["checkpoint_sha256"] = str(checkpoint), "0" * 64
    (directory / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize("kind", ["device", "fifo"])
@pytest.mark.parametrize("command", [["verify", "--count", "2"], ["bench", "--backends", "torch", *QUICK_BENCH]])
def test_a_recorded_checkpoint_that_is_a_special_file_is_refused(
    capsys, tiny_dir: Path, tmp_path: Path, kind: str, command: list[str]
) -> None:
    special = Path("/dev/zero")
    if kind == "fifo":
        special = tmp_path / "weights.pth"
        os.mkfifo(special)
    _record_checkpoint(tiny_dir, special)
    outcome = cli(capsys, command[0], "--dir", tiny_dir, *command[1:])
    assert outcome.code in (ExitCode.BAD_INPUT, ExitCode.VERIFY_FAILED, ExitCode.OK), outcome.err
    assert "not a regular file" in outcome.err + outcome.out
    assert "Traceback" not in outcome.err


def test_manifest_parents_in_a_cycle_are_refused(capsys, tmp_path: Path, low_precision_template: Path) -> None:
    directory = tmp_path / "tiny"
    shutil.copytree(low_precision_template, directory)
    data = json.loads((directory / MANIFEST_NAME).read_text())
    fp16, int8 = data["artifacts"]["model.fp16.onnx"], data["artifacts"]["model.int8.onnx"]
    fp16["parent_sha256"], int8["parent_sha256"] = int8["sha256"], fp16["sha256"]
    (directory / MANIFEST_NAME).write_text(json.dumps(data))
    fails(cli(capsys, "verify", "--dir", directory, "--count", "2"), ExitCode.BAD_INPUT, "cycle", MANIFEST_NAME)


def test_a_deeply_nested_manifest_is_refused(capsys, tiny_dir: Path) -> None:
    (tiny_dir / MANIFEST_NAME).write_text("[" * 200_000 + "]" * 200_000)
    fails(cli(capsys, "verify", "--dir", tiny_dir, "--count", "2"), ExitCode.BAD_INPUT, "nested too deeply")


# ----------------------------------------------------------------------------------------------
# Numbers: non-finite and upper bounds


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["build-trt", "--int8", "--onnx-only", "--search-minutes", "nan"], "--search-minutes"),
        (["build-trt", "--int8", "--onnx-only", "--search-minutes", "inf"], "--search-minutes"),
        (["build-trt", "--max-batch", "1000000"], "--max-batch"),
        (["build-trt", "--trt-major", "1000"], "--trt-major"),
    ],
)
def test_out_of_range_numbers_are_refused_before_any_work(capsys, tiny_dir: Path, args: list[str], fragment: str):
    before = snapshot(tiny_dir)
    fails(cli(capsys, args[0], "--dir", tiny_dir, *args[1:]), ExitCode.BAD_INPUT, fragment)
    unchanged(tiny_dir, before)


def test_a_huge_static_batch_is_refused_before_the_directory_is_made(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "export", "--dir", tmp_path / "d", *TINY, "--static-batch", "1000000")
    fails(outcome, ExitCode.BAD_INPUT, "--static-batch")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------
# --threads


def test_threads_are_capped_at_the_usable_cpus_with_a_warning() -> None:
    said: list[str] = []
    assert cap_threads(10_000, said.append) == usable_cpus()
    assert len(said) == 1 and "--threads 10000" in said[0]
    assert cap_threads(1, said.append) == 1 and cap_threads(None, said.append) is None and len(said) == 1


def test_bench_warns_and_runs_with_too_many_threads(capsys, tiny_dir: Path) -> None:
    args = ["--backends", "onnxruntime", "--precisions", "fp32", *QUICK_BENCH, "--threads", "400"]
    outcome = cli(capsys, "bench", "--dir", tiny_dir, *args)
    assert outcome.code == ExitCode.OK, outcome.err
    assert f"using {usable_cpus()}" in outcome.err
