"""One status, derived from the directory: a failed step is recorded, and verify, report and pipeline agree on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli

from resnext_deploy.artifacts import Manifest
from resnext_deploy.errors import ExitCode


@pytest.mark.slow  # an INT8 build, verify and report of the demo model
def test_failed_build_step_fails_verify_and_report_in_their_first_line(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = cli(
        capsys, "build-trt", "--dir", demo_dir, "--int8", "--no-search", "--int8-cosine", "0.999999", "--onnx-only"
    )
    assert failed.code == ExitCode.VERIFY_FAILED, failed.err
    assert not (demo_dir / "model.int8.onnx").exists()
    [step] = [s for s in Manifest(demo_dir).skipped if s.failed]
    assert (step.step, step.artifact) == ("int8 ONNX", "model.int8.onnx") and "min cosine" in step.reason

    verified = cli(capsys, "verify", "--dir", demo_dir, "--backends", "onnxruntime", "--count", "64")
    assert verified.code == ExitCode.VERIFY_FAILED, verified.err
    assert verified.out.strip().splitlines()[0].strip() == "verify: FAILED"
    assert "int8 ONNX (model.int8.onnx was not made)" in verified.out
    assert json.loads((demo_dir / "verify.json").read_text())["passed"] is False

    reported = cli(capsys, "report", "--dir", demo_dir)
    assert reported.code == ExitCode.VERIFY_FAILED, reported.err
    first = reported.out.splitlines()[0]
    assert first.startswith("report: FAILED (1 problem): int8 ONNX (model.int8.onnx was not made)"), first
    markdown = (demo_dir / "report.md").read_text().splitlines()
    assert markdown[0].endswith(": FAILED") and markdown[2].startswith("**Status: FAILED** (1 problem)")
    assert json.loads((demo_dir / "report.json").read_text())["status"]["exit_code"] == ExitCode.VERIFY_FAILED

    # The step succeeds again (the default tolerance): its failure is cleared, and the status is passed.
    assert cli(capsys, "build-trt", "--dir", demo_dir, "--int8", "--onnx-only").code == 0
    assert cli(capsys, "verify", "--dir", demo_dir, "--backends", "onnxruntime", "--count", "64").code == 0
    reported = cli(capsys, "report", "--dir", demo_dir)
    assert reported.code == 0 and reported.out.startswith("report: passed\n"), reported.out


def test_report_without_verify_is_not_verified_and_gates(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reported = cli(capsys, "report", "--dir", tiny_dir)
    assert reported.code == ExitCode.VERIFY_FAILED
    assert reported.out.startswith("report: NOT VERIFIED (1 problem): verify: did not run")
    assert (tiny_dir / "report.md").read_text().splitlines()[0].endswith(": NOT VERIFIED")


def test_a_failure_on_bad_input_is_recorded_and_report_exits_3(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Too few calibration images: exit 3 from build-trt, recorded, and report exits 3 as pipeline would."""
    from helpers import noise_images

    images = noise_images(tmp_path / "few", 6)
    built = cli(capsys, "build-trt", "--dir", tiny_dir, "--int8", "--calib-dir", images, "--onnx-only")
    assert built.code == ExitCode.BAD_INPUT, built.err
    [step] = [s for s in Manifest(tiny_dir).skipped if s.failed]
    assert step.bad_input and step.artifact == "model.int8.onnx"
    reported = cli(capsys, "report", "--dir", tiny_dir)
    assert reported.code == ExitCode.BAD_INPUT and reported.out.startswith("report: FAILED"), reported.out
