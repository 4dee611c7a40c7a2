"""report reads what it trusts: typed records checked field by field, strict JSON, both files or neither, and a
verified file changed since verify is not called verified."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import bench_report, cli, snapshot

from resnext_deploy.artifacts import Manifest
from resnext_deploy.backends.base import Candidate
from resnext_deploy.errors import ExitCode
from resnext_deploy.evaluate.bench import LoadRecord, NoiseFloor, add_speedups, measured_row
from resnext_deploy.evaluate.verify import ReferenceRecord, VerifyRecord, VerifyRow, verify_json
from resnext_deploy.parity import DEFAULT_TOLERANCES, compare
from resnext_deploy.serde import encode
from resnext_deploy.source import recorded_source

Json = dict


def _records(directory: Path) -> None:
    """A verify.json and bench.json as verify and bench write them: torch against ONNX Runtime on model.onnx."""
    manifest = Manifest(directory)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 10)).astype(np.float32)
    parity = compare(logits, logits + 1e-6, DEFAULT_TOLERANCES["fp32"], rng.integers(0, 10, 64))
    row = VerifyRow("onnxruntime", "fp32", "cpu", "model.onnx", parity, True, (), DEFAULT_TOLERANCES["fp32"])
    source = recorded_source(manifest)
    reference = ReferenceRecord("torch", "fp32", "cpu", None, source, 64, 90.0, 0, "64 images", "x", True, ())
    verify = VerifyRecord(reference, [row], artifacts={"model.onnx": manifest.entry("model.onnx").sha256})
    (directory / "verify.json").write_text(json.dumps(verify_json(verify)))

    noise = NoiseFloor.measured(0.01, 0.01, 10, "4 convolutions", 0.02)
    rounds = {1: [[10.0] * 20 for _ in range(10)], 8: [[4.0] * 20 for _ in range(10)]}
    rows = [
        measured_row(Candidate("torch", "fp32", "cpu", None), 1, rounds[1], noise),
        measured_row(Candidate("onnxruntime", "fp32", "cpu", "model.onnx"), 1, rounds[8], noise),
    ]
    add_speedups(rows, {id(rows[0]): rounds[1], id(rows[1]): rounds[8]})
    load = LoadRecord(True, 0.0, 0, 20, None, None, False)
    artifacts = {"model.onnx": manifest.entry("model.onnx").sha256}
    bench = replace(bench_report(), results=rows, noise=noise, load=load, warnings=[], failed=[], artifacts=artifacts)
    (directory / "bench.json").write_text(json.dumps(encode(bench)))


def _edit(path: Path, change: Callable[[Json], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def recorded(tiny_dir: Path) -> Path:
    _records(tiny_dir)
    return tiny_dir


def test_sound_records_give_a_passed_report(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = cli(capsys, "report", "--dir", recorded)
    assert outcome.code == 0 and outcome.out.startswith("report: passed\n"), outcome.out + outcome.err
    summary = (recorded / "report.md").read_text().split("## Summary", 1)[1]
    assert "- CPU: fastest verified artifact: **onnxruntime fp32** (`model.onnx`), batch 1: **2.50x" in summary


def _set(file: str, *keys: object, value: object) -> tuple[str, Callable[[Json], None]]:
    def change(data: Json) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return file, change


def _drop(file: str, *keys: str) -> tuple[str, Callable[[Json], None]]:
    def change(data: Json) -> None:
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return file, change


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            _set("verify.json", "results", 0, "accuracy", value="99.5"),
            "verify.json: results[0].accuracy: expected a number, got str",
        ),
        (_set("verify.json", "results", 0, "max_abs", value=[1]), "verify.json: results[0].max_abs: expected a number"),
        (_drop("verify.json", "reference", "labeled"), "verify.json: reference.labeled: required field missing"),
        (_set("verify.json", "schema_version", value=99), "verify.json: schema_version 99 is not one"),
        (
            _set("bench.json", "results", 1, "median_ms", value="fast"),
            "bench.json: BenchReport.results[1].median_ms: expected a number, got str",
        ),
        (_set("bench.json", "machine", value=["cpu"]), "bench.json: BenchReport.machine: expected an object"),
        (_drop("bench.json", "settings", "warmup_ms"), "bench.json: BenchReport.settings.warmup_ms: required field"),
        (_set("bench.json", "schema_version", value=2), "bench.json: schema_version 2 is not one"),
        (_set("manifest.json", "artifacts", "model.onnx", "size_bytes", value="12 kB"), "'model.onnx' has size_bytes"),
        (_set("manifest.json", "format", value=2), "manifest.json: format 2 is not one"),
    ],
)
def test_a_wrong_type_missing_key_or_unknown_version_is_exit_3_naming_file_and_key(
    recorded: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, Callable[[Json], None]], named: str
) -> None:
    assert cli(capsys, "report", "--dir", recorded).code == 0
    before = snapshot(recorded)
    file, change = edit
    _edit(recorded / file, change)
    outcome = cli(capsys, "report", "--dir", recorded)
    assert outcome.code == ExitCode.BAD_INPUT
    outcome.error_line(named)
    after = snapshot(recorded)
    assert {k: v for k, v in after.items() if k != file} == {k: v for k, v in before.items() if k != file}


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinite_figures_are_dashes_never_headlined_and_json_stays_strict(
    recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (recorded / "bench.json").read_text()
    data = json.loads(text)
    row = data["results"][1]
    row.update(median_ms=float("nan"), speedup_vs_reference=float("nan"), speedup_low=float("nan"))
    row.update(p99_ms=float("inf"), speedup_high=float("inf"))
    (recorded / "bench.json").write_text(json.dumps(data).replace("Infinity", "1e999"))
    assert cli(capsys, "report", "--dir", recorded).code == 0
    report = _strict_json((recorded / "report.json").read_text())
    assert report["bench"]["results"][1]["median_ms"] is None and report["bench"]["results"][1]["p99_ms"] is None
    markdown = (recorded / "report.md").read_text()
    assert "nan" not in markdown.lower() and "inf" not in markdown.replace("infer", "").lower()
    assert "- CPU: no headline" in markdown and report["fastest_verified_vs_torch"] == []
    line = next(line for line in markdown.splitlines() if line.startswith("| onnxruntime | fp32 | cpu | 1 |"))
    assert line.count("| - |") >= 2


def test_report_md_and_report_json_are_written_together_or_not_at_all(
    recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "report", "--dir", recorded).code == 0
    before = (recorded / "report.json").read_text()
    (recorded / "report.md").unlink()
    (recorded / "report.md").mkdir()  # report.md cannot be written: report.json must not change either
    _edit(recorded / "verify.json", lambda data: data["reference"].update(accuracy=50.0))
    outcome = cli(capsys, "report", "--dir", recorded)
    assert outcome.code == ExitCode.BAD_INPUT
    assert (recorded / "report.json").read_text() == before
    assert not [p for p in recorded.iterdir() if p.name.endswith(".partial")]


def test_an_artifact_changed_since_verify_is_not_reported_as_verified(
    recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = recorded / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # swapped after verify; the manifest is not updated either
    outcome = cli(capsys, "report", "--dir", recorded)
    assert outcome.code == ExitCode.VERIFY_FAILED
    assert outcome.out.startswith("report: NOT VERIFIED (1 problem): model.onnx: changed since verify")
    markdown = (recorded / "report.md").read_text()
    assert markdown.splitlines()[0].endswith(": NOT VERIFIED") and "**passed**" not in markdown
