"""report: built from real verify and bench runs on the tiny ResNeXt; its numbers are the JSON files' numbers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import bench_report, copy_dir, edit_initializers

from resnext_deploy.artifacts import Manifest
from resnext_deploy.backends.base import Candidate
from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate.bench import (
    UNSTABLE_FLOOR,
    LoadRecord,
    NoiseFloor,
    add_speedups,
    bench_warnings,
    measured_row,
    run_bench,
)
from resnext_deploy.evaluate.settings import BenchSettings
from resnext_deploy.evaluate.verify import ReferenceRecord, VerifyRecord, VerifyRow, run_verify
from resnext_deploy.parity import Tolerance
from resnext_deploy.report import build_report, render_markdown, write_report
from resnext_deploy.serde import encode
from resnext_deploy.source import ModelSource


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def measured(low_precision_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = copy_dir(low_precision_template, tmp_path_factory.mktemp("report") / "tiny")
    run_verify(directory, count=16, log=quiet)
    settings = BenchSettings(batch_sizes=(1, 2), warmup_ms=10, duration_s=0.1, min_iterations=3, threads=1)
    run_bench(directory, settings, log=quiet, progress=False)
    return directory


def _line(markdown: str, *cells: str) -> str:
    """The one table line that starts with these cells."""
    start = "| " + " | ".join(cells) + " |"
    [line] = [line for line in markdown.splitlines() if line.startswith(start)]
    return line


@pytest.mark.slow  # reads a verify and bench run (once per module)
def test_report_numbers_are_the_json_numbers(measured: Path, tmp_path: Path) -> None:
    directory = copy_dir(measured, tmp_path / "d")
    Manifest(directory).record_skipped("tensorrt", "no GPU on this machine")
    path = write_report(directory, log=quiet).path
    markdown = path.read_text()
    report = json.loads((directory / "report.json").read_text())
    verify = json.loads((directory / "verify.json").read_text())
    bench = json.loads((directory / "bench.json").read_text())
    manifest = Manifest(directory)

    assert report["verify"]["results"] == verify["results"]
    assert report["bench"]["results"] == bench["results"]
    assert report["machine"] == bench["machine"]
    parity = markdown[markdown.index("## Parity and accuracy") : markdown.index("## Latency and throughput")]
    for result in verify["results"]:
        line = _line(parity, f"{result['backend']}-{result['device']}:{result['precision']}", result["artifact"])
        assert f" {result['cosine_min']:.6f} " in line and f" {result['max_abs']:.3g} " in line
        assert f" {result['top1_agreement']:.2%} " in line and line.endswith("| pass |")
    for row in bench["results"]:
        line = _line(markdown, row["backend"], row["precision"], row["device"], str(row["batch_size"]))
        assert f" {row['median_ms']:.3f} (" in line and f" {row['p99_ms']:.3f} " in line
        assert f" {row['throughput_ips']:.1f} " in line and f" {row['speedup_vs_reference']:.2f}x " in line
    for name, entry in manifest.artifacts.items():
        line = _line(markdown, name, entry.precision)
        assert f"`{entry.sha256[:12]}`" in line
    passed = {(r["backend"], r["precision"], r["artifact"]) for r in verify["results"] if r["passed"]}
    for ratio in report["fastest_verified_vs_torch"]:  # the fastest verified artifact, whichever runtime runs it
        rows = [
            r
            for r in bench["results"]
            if r["batch_size"] == ratio["batch_size"] and (r["backend"], r["precision"], r["artifact"]) in passed
        ]
        fastest = min(rows, key=lambda r: r["median_ms"])
        assert (ratio["backend"], ratio["precision"]) == (fastest["backend"], fastest["precision"])
        assert ratio["speedup"].startswith(f"{fastest['speedup_vs_reference']:.2f}x")
        assert f"batch {ratio['batch_size']}: the fastest verified artifact, {ratio['backend']}" in markdown
    assert len(report["fastest_verified_vs_torch"]) == 2
    assert "![median latency and speedup against batch size, log scale, 95% intervals](bench.png)" in markdown
    assert "- tensorrt: no GPU on this machine" in markdown
    assert "Result: **passed**." in markdown and "## Machine" in markdown


@pytest.mark.slow  # reads a verify and bench run (once per module)
def test_results_measured_on_an_earlier_artifact_are_marked_out_of_date(measured: Path, tmp_path: Path) -> None:
    directory = copy_dir(measured, tmp_path / "d")
    write_report(directory, log=quiet)
    assert json.loads((directory / "report.json").read_text())["stale"] == []
    edit_initializers(directory / "model.int8.onnx", lambda name: name.endswith("_scale"), lambda a: a * 2)
    Manifest(directory).record("model.int8.onnx", "int8")  # a newer, properly recorded file
    markdown = write_report(directory, log=quiet).path.read_text()
    stale = json.loads((directory / "report.json").read_text())["stale"]
    assert stale == [
        "verify.json was measured on an earlier model.int8.onnx; run verify again",
        "bench.json was measured on an earlier model.int8.onnx; run bench again",
    ]
    assert f"**Out of date:** {stale[0]}." in markdown


@pytest.mark.slow  # reads a verify and bench run (once per module)
def test_steps_recorded_in_the_manifest_are_reported(measured: Path, tmp_path: Path) -> None:
    directory = copy_dir(measured, tmp_path / "d")
    manifest = Manifest(directory)
    manifest.record_skipped("int8 calibration", "no calibration images")
    write_report(directory, log=quiet)
    report = json.loads((directory / "report.json").read_text())
    assert {"step": "int8 calibration", "reason": "no calibration images"} in report["skipped"]


def test_a_report_without_verify_or_bench_says_so(tiny_dir: Path) -> None:
    markdown = write_report(tiny_dir, log=quiet).path.read_text()
    assert "verify did not run." in markdown and "bench did not run." in markdown
    assert "- verify: no verify.json in the directory" in markdown
    assert "model.onnx" in markdown


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="export"):
        write_report(tmp_path, log=quiet)


NOISE = NoiseFloor(0.01, UNSTABLE_FLOOR, 15, "test")
QUIET_LOAD = LoadRecord(True, 0.0, 0, 20, None, None, False)


def _report_from_rounds(tmp_path: Path, candidate_rounds: list[list[float]]) -> tuple[dict, str]:
    """Torch fp32 (a steady 10 ms a call) against an ONNX Runtime candidate's calls, round by round; the report."""
    reference = Candidate("torch", "fp32", "cpu", None)
    candidate = Candidate("onnxruntime", "fp32", "cpu", "model.onnx")
    reference_rounds = [[10.0] * 20 for _ in candidate_rounds]
    rows = [measured_row(reference, 1, reference_rounds, NOISE), measured_row(candidate, 1, candidate_rounds, NOISE)]
    add_speedups(rows, {id(rows[0]): reference_rounds, id(rows[1]): candidate_rounds})
    warnings = bench_warnings(rows, NOISE, QUIET_LOAD)
    bench = replace(bench_report(), results=rows, noise=NOISE, load=QUIET_LOAD, warnings=warnings, skipped=[])
    passed = VerifyRow(*candidate.key, candidate.artifact, parity=None, passed=True, failures=(), tolerance=Tolerance())
    source = ModelSource("resnext_tiny", 10, 32, None, None)
    reference = ReferenceRecord("torch", "fp32", "cpu", None, source, 0, None, 0, "-", "-", False, ())
    verify = VerifyRecord(reference, [passed])
    report = build_report(Manifest(tmp_path), verify, bench, [])
    return encode(rows[1]), render_markdown(replace(report, verify=None))


def test_a_noisy_timer_does_not_make_a_headline(tmp_path: Path) -> None:
    # Half of the rounds the machine is idle and the candidate takes 5 µs a call, the other half it is
    # starved (20 ms): the ratio of medians is large while the rounds disagree by four orders of magnitude.
    rounds = [[0.005] * 100 if i % 2 == 0 else [20.0] * 5 for i in range(10)]
    row, markdown = _report_from_rounds(tmp_path, rounds)
    assert row["speedup_vs_reference"] > 100 and not row["speedup_reliable"] and row["unstable"]
    assert row["speedup_low"] <= row["speedup_vs_reference"] <= row["speedup_high"]
    summary = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "- CPU: no headline: no verified speedup is reliable" in summary
    assert f"onnxruntime fp32 at batch 1, {row['speedup_vs_reference']:.2f}x" in summary
    assert "unreliable, not a result" in summary
    assert markdown.index("## Summary") < markdown.index("## Artifacts")
    assert "unstable, round spread" in markdown


def test_an_idle_machine_with_outliers_is_headlined_and_not_called_unstable(tmp_path: Path) -> None:
    # A VM at rest: a steady 4 ms with a slow call (3x) now and then, which puts the CV far over
    # trtexec's 2.5% while every round's median is the same.
    rounds = [[12.0] + [4.0] * 9 for _ in range(10)]
    row, markdown = _report_from_rounds(tmp_path, rounds)
    assert row["cv"] > 0.025 and row["round_spread"] < UNSTABLE_FLOOR and row["speedup_reliable"]
    summary = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    headline = "- CPU: fastest verified artifact: **onnxruntime fp32** (`model.onnx`), batch 1"
    assert f"{headline}: **{row['speedup_vs_reference']:.2f}x (" in summary
    assert summary.splitlines()[2] == "- Verdict: **passed**."
    assert "unstable, round spread" not in markdown and "bench warnings" not in markdown
