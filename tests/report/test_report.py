"""report: built from real verify and bench runs on the tiny ResNeXt; its numbers are the JSON files' numbers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_artifacts import copy_dir, edit_initializers

from resnext_deploy.artifacts import Manifest
from resnext_deploy.backends.base import Candidate, Runner
from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate import bench as bench_module
from resnext_deploy.evaluate.bench import (
    BenchSettings,
    Unit,
    add_speedups,
    bench_warnings,
    measure,
    result_row,
    run_bench,
)
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.report import build_report, render_markdown, write_report


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


def test_report_numbers_are_the_json_numbers(measured: Path, tmp_path: Path) -> None:
    directory = copy_dir(measured, tmp_path / "d")
    Manifest(directory).record_skipped("tensorrt", "no GPU on this machine")
    path = write_report(directory, log=quiet)
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


class _Clock:
    """A fake ``time.perf_counter``: runners advance it by what their call costs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedRunner(Runner):
    """Costs ``cost(clock)`` seconds of fake time per call; the output is irrelevant to bench."""

    def __init__(self, clock: _Clock, cost: Callable[[float], float]) -> None:
        self.clock, self.cost = clock, cost

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.clock.now += self.cost(self.clock.now)
        return batch


def _report_with_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, candidate_cost: Callable[[float], float]
) -> tuple[dict, str]:
    """Bench torch fp32 (a steady 10 ms) against an ONNX Runtime candidate on a fake clock; the report of it."""
    clock = _Clock()
    monkeypatch.setattr(bench_module, "time", SimpleNamespace(perf_counter=clock))
    inputs = np.zeros((1, 3, 8, 8), np.float32)
    reference = Candidate("torch", "fp32", "cpu", None)
    candidate = Candidate("onnxruntime", "fp32", "cpu", "model.onnx")
    units = [
        Unit(reference, _TimedRunner(clock, lambda now: 0.010), 1, inputs),
        Unit(candidate, _TimedRunner(clock, candidate_cost), 1, inputs),
    ]
    measure(units, warmup_s=0.05, duration_s=2.0, min_iterations=10)
    rows = [result_row(unit) for unit in units]
    add_speedups(rows)
    bench = {"results": rows, "warnings": bench_warnings(rows), "settings": None}
    verify = {"passed": True, "reference": {}, "results": [{**candidate.identity(), "passed": True}]}
    manifest = Manifest(tmp_path)
    report = build_report(manifest, verify, bench, {}, has_plot=False)
    markdown = render_markdown({**report, "verify": None})
    return rows[1], markdown


def test_a_noisy_timer_does_not_make_a_headline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Half of the time the machine is idle and the candidate takes 5 µs, the other half it is
    # starved (20 ms): the fast calls fill their time slices, so the ratio of medians is about 2000x
    # while the rounds disagree by four orders of magnitude.
    row, markdown = _report_with_timer(tmp_path, monkeypatch, lambda now: 5e-6 if int(now / 0.5) % 2 == 0 else 0.020)
    assert row["speedup_vs_reference"] > 100 and not row["speedup_reliable"]
    summary = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "- CPU: no headline: no verified speedup is reliable" in summary
    assert f"measured {row['speedup_vs_reference']:.2f}x" in summary and "unreliable, not a result" in summary
    assert "**" not in summary
    assert markdown.index("## Summary") < markdown.index("## Artifacts")
    assert "unstable measurement" in summary


def test_an_idle_machine_with_outliers_is_headlined_and_not_called_unstable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A VM at rest: a steady 4 ms with a slow call (3x) now and then, which puts the CV far over
    # trtexec's 2.5% while every round's median is the same.
    calls = iter(range(10**9))
    row, markdown = _report_with_timer(tmp_path, monkeypatch, lambda now: 0.012 if next(calls) % 10 == 0 else 0.004)
    assert row["cv"] > 0.025 and row["round_spread"] < 0.1 and row["speedup_reliable"]
    summary = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    headline = "- CPU: best verified artifact **onnxruntime fp32** (`model.onnx`), batch 1: speedup over PyTorch fp32"
    assert f"{headline} at the same batch size **{row['speedup_vs_reference']:.2f}x (" in summary
    assert "unstable measurement" not in markdown and "bench warnings" not in markdown
