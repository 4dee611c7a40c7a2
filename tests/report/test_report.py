"""report: built from real verify and bench runs on the tiny ResNeXt; its numbers are the JSON files' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_artifacts import copy_dir, edit_initializers, with_low_precision

from resnext_deploy.artifacts import Manifest
from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate.bench import BenchSettings, run_bench
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.report import write_report


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def measured(tiny_export_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = with_low_precision(tiny_export_template, tmp_path_factory.mktemp("report") / "tiny")
    run_verify(directory, count=16, log=quiet)
    settings = BenchSettings(batch_sizes=(1, 2), warmup_ms=10, duration_s=0.1, min_iterations=3, threads=1)
    run_bench(directory, settings, log=quiet, progress=False)
    return directory


def _line(markdown: str, *cells: str) -> str:
    """The one table line that starts with these cells."""
    start = "| " + " | ".join(cells) + " |"
    [line] = [line for line in markdown.splitlines() if line.startswith(start)]
    return line


def test_report_numbers_are_the_json_numbers(measured: Path, tmp_path: Path) -> None:
    directory = copy_dir(measured, tmp_path / "d")
    path = write_report(directory, log=quiet, skipped={"tensorrt": "no GPU on this machine"})
    markdown = path.read_text()
    report = json.loads((directory / "report.json").read_text())
    verify = json.loads((directory / "verify.json").read_text())
    bench = json.loads((directory / "bench.json").read_text())
    manifest = Manifest(directory)

    assert report["verify"]["results"] == verify["results"]
    assert report["bench"]["results"] == bench["results"]
    assert report["machine"] == bench["machine"]
    for result in verify["results"]:
        line = _line(markdown, f"{result['backend']}-{result['device']}:{result['precision']}", result["artifact"])
        assert f" {result['cosine_min']:.6f} " in line and f" {result['max_abs']:.3g} " in line
        assert f" {result['top1_agreement']:.2%} " in line and line.endswith("| pass |")
    for row in bench["results"]:
        line = _line(markdown, row["backend"], row["precision"], row["device"], str(row["batch_size"]))
        assert f" {row['median_ms']:.3f} " in line and f" {row['p99_ms']:.3f} " in line
        assert f" {row['throughput_ips']:.1f} " in line and f" {row['speedup_vs_reference']:.2f}x " in line
    for name, entry in manifest.artifacts.items():
        line = _line(markdown, name, entry["precision"])
        assert f"`{entry['sha256'][:12]}`" in line
    for ratio in report["onnxruntime_vs_torch"]:
        [row] = [
            r
            for r in bench["results"]
            if r["backend"] == "onnxruntime" and r["precision"] == "fp32" and r["batch_size"] == ratio["batch_size"]
        ]
        assert ratio["speedup"] == row["speedup_vs_reference"]
        assert f"batch {ratio['batch_size']}: {ratio['speedup']:.2f}x" in markdown
    assert len(report["onnxruntime_vs_torch"]) == 2
    assert "![median latency and throughput against batch size](bench.png)" in markdown
    assert "- tensorrt: no GPU on this machine" in markdown
    assert "Result: **passed**." in markdown and "## Machine" in markdown


def test_results_measured_on_an_earlier_artifact_are_marked_out_of_date(measured: Path, tmp_path: Path) -> None:
    directory = copy_dir(measured, tmp_path / "d")
    write_report(directory, log=quiet)
    assert json.loads((directory / "report.json").read_text())["stale"] == []
    edit_initializers(directory / "model.int8.onnx", lambda name: name.endswith("_scale"), lambda a: a * 2)
    Manifest(directory).record("model.int8.onnx", "int8")  # a newer, properly recorded file
    markdown = write_report(directory, log=quiet).read_text()
    stale = json.loads((directory / "report.json").read_text())["stale"]
    assert stale == [
        "verify.json was measured on an earlier model.int8.onnx; run verify again",
        "bench.json was measured on an earlier model.int8.onnx; run bench again",
    ]
    assert f"**Out of date:** {stale[0]}." in markdown


def test_steps_recorded_in_the_manifest_are_reported(measured: Path, tmp_path: Path) -> None:
    directory = copy_dir(measured, tmp_path / "d")
    manifest = Manifest(directory)
    manifest.data["skipped"] = {"int8 calibration": "no calibration images"}
    manifest.save()
    write_report(directory, log=quiet)
    report = json.loads((directory / "report.json").read_text())
    assert {"step": "int8 calibration", "reason": "no calibration images"} in report["skipped"]


def test_a_report_without_verify_or_bench_says_so(tiny_dir: Path) -> None:
    markdown = write_report(tiny_dir, log=quiet).read_text()
    assert "verify did not run." in markdown and "bench did not run." in markdown
    assert "- verify: no verify.json in the directory" in markdown
    assert "model.onnx" in markdown


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="export"):
        write_report(tmp_path, log=quiet)
