"""The main job on the bundled demo model: every step, the report, and a resumed second run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnext_deploy.artifacts import Manifest
from resnext_deploy.backends.tensorrt.probe import tensorrt_status
from resnext_deploy.cli import main
from resnext_deploy.errors import ExitCode

pytestmark = pytest.mark.slow  # each test reads the demo pipeline's run (minutes on 2 cores)

FAST = ["--batch-sizes", "1,4", "--duration", "0.2", "--count", "200", "--budget", "90", "--precisions", "fp32,int8"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    directory = tmp_path_factory.mktemp("pipeline") / "demo"
    return directory, main(["pipeline", "--dir", str(directory), *FAST])


def test_pipeline_makes_every_artifact_and_a_report(demo_run):
    directory, code = demo_run
    assert code == ExitCode.OK
    for name in (
        "model.onnx",
        "model.fp16.onnx",
        "model.int8.onnx",
        "calibration.json",
        "verify.json",
        "bench.json",
        "bench.csv",
        "bench.md",
        "bench.png",
        "report.md",
        "report.json",
    ):
        assert (directory / name).exists(), name
    manifest = Manifest(directory)
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx"} <= set(manifest.artifacts)
    if tensorrt_status() is not None:
        [tensorrt] = [s for s in manifest.skipped if s.step == "tensorrt"]
        assert "trtexec" in tensorrt.reason


def test_report_numbers_come_from_verify_and_bench(demo_run):
    directory, _ = demo_run
    verify = json.loads((directory / "verify.json").read_text())
    bench = json.loads((directory / "bench.json").read_text())
    report = (directory / "report.md").read_text()
    assert verify["passed"]
    for result in verify["results"]:
        assert f"{result['cosine_min']:.6f}" in report
        assert f"{result['accuracy']:.2f}" in report
    for row in bench["results"]:
        assert f"{row['median_ms']:.3f}" in report
    # bench's options reach its step: fp16 is made and verified, but not benchmarked when not asked for.
    assert {r["precision"] for r in bench["results"]} == {"fp32", "int8"}
    assert bench["settings"]["budget_s"] == 90 and bench["settings"]["batch_sizes"] == [1, 4]
    if tensorrt_status() is not None:
        commands = [line.strip() for line in report.splitlines() if line.strip().startswith("trtexec --onnx=")]
        # relative to the report's directory, and the report says so
        assert [c.split()[1] for c in commands] == [
            f"--onnx={name}" for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx")
        ]
        assert "from the directory that holds this report" in report


def test_demo_accuracy_per_precision(demo_run):
    directory, _ = demo_run
    verify = json.loads((directory / "verify.json").read_text())
    by_precision = {r["precision"]: r for r in verify["results"] if r["backend"] == "onnxruntime"}
    reference = by_precision["fp32"]["reference_accuracy"]
    assert reference >= 97.0
    assert abs(by_precision["fp16"]["accuracy"] - reference) <= 0.3
    assert reference - by_precision["int8"]["accuracy"] <= 1.0
    assert by_precision["int8"]["top1_agreement"] >= 0.98


def test_second_run_reuses_finished_artifacts(demo_run, capsys):
    directory, _ = demo_run
    before = {name: entry.sha256 for name, entry in Manifest(directory).artifacts.items()}
    capsys.readouterr()
    assert main(["pipeline", "--dir", str(directory), *FAST]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "model.onnx is up to date" in err
    assert err.count("reusing") >= 3
    after = {name: entry.sha256 for name, entry in Manifest(directory).artifacts.items()}
    assert after == before


def _without_times(report: dict) -> dict:
    """report.json less what differs between two runs: times, and the speeds measured (compared by their rows)."""
    kept = {k: v for k, v in report.items() if k not in ("created", "bench", "summary", "fastest_verified_vs_torch")}
    return {**kept, "artifacts": [{k: v for k, v in a.items() if k != "created"} for a in report["artifacts"]]}


def test_report_command_rebuilds_the_pipelines_report_from_the_directory(demo_run, capsys):
    directory, code = demo_run
    made_by_pipeline = json.loads((directory / "report.json").read_text())
    markdown = (directory / "report.md").read_text()
    capsys.readouterr()
    assert main(["report", "--dir", str(directory)]) == code  # the same status, derived from the same directory
    assert code == ExitCode.OK and made_by_pipeline["status"]["verdict"] == "passed"
    assert capsys.readouterr().out.splitlines() == ["report: passed", f"report: {directory / 'report.md'}"]
    rebuilt = json.loads((directory / "report.json").read_text())
    assert {k: v for k, v in rebuilt.items() if k != "created"} == {
        k: v for k, v in made_by_pipeline.items() if k != "created"
    }

    def body(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("Made ")]  # the one line with a time

    assert body((directory / "report.md").read_text()) == body(markdown)


def test_single_commands_then_report_write_what_pipeline_writes(demo_run, tmp_path: Path):
    """export, build-trt, verify, bench and report, no pipeline: the same artifacts, steps, results and sections."""
    pipeline_dir, code = demo_run
    directory = str(tmp_path / "steps")
    assert main(["export", "--dir", directory]) == ExitCode.OK
    engines = ExitCode.OK if tensorrt_status() is None else ExitCode.BACKEND_UNAVAILABLE
    assert main(["build-trt", "--fp16", "--dir", directory]) == engines
    assert main(["build-trt", "--int8", "--dir", directory]) == engines
    assert main(["verify", "--dir", directory, "--count", "200"]) == code  # verify decides both exit codes
    bench = ["--batch-sizes", "1,4", "--duration", "0.2", "--budget", "90", "--precisions", "fp32,int8"]
    assert main(["bench", "--dir", directory, *bench]) == ExitCode.OK  # as FAST gives pipeline's bench step
    assert main(["report", "--dir", directory]) == code  # the verdict of pipeline, from single commands
    steps = json.loads((tmp_path / "steps" / "report.json").read_text())
    pipeline = json.loads((pipeline_dir / "report.json").read_text())
    assert _without_times(steps) == _without_times(pipeline)  # artifacts, verify's results, skipped steps, ...

    def rows(report: dict) -> list[tuple]:
        return sorted((r["backend"], r["precision"], r["device"], r["batch_size"]) for r in report["bench"]["results"])

    assert rows(steps) == rows(pipeline)
    sections = [
        [line for line in (d / "report.md").read_text().splitlines() if line.startswith("#")]
        for d in (tmp_path / "steps", pipeline_dir)
    ]
    assert sections[0] == sections[1]
