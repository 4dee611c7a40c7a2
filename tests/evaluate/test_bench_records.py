"""bench.json is one BenchReport: written by serde.encode, read back equal, valid against its schema, and a
hand-edited file is one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from resnext_deploy.backends.base import Candidate, SkipRecord
from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate.bench import (
    BENCH_JSON,
    BenchReport,
    BenchRun,
    FailedRow,
    Isolation,
    LoadRecord,
    NoiseFloor,
    add_speedups,
    bench_warnings,
    measured_row,
    read_bench_report,
    threading_note,
    write_outputs,
)
from resnext_deploy.evaluate.machine import machine_record
from resnext_deploy.schemas import load_schema


def _report() -> BenchReport:
    noise = NoiseFloor.measured(0.01, 0.02, 4, "4 conv3x3 32ch 28x28 in ONNX Runtime", call_spread=0.1)
    rounds = {"torch": [[10.0, 10.5]] * 4, "onnxruntime": [[5.0, 5.2], [5.1, 5.0], [4.9, 5.3], [5.0, 5.0]]}
    rows = [
        measured_row(Candidate("torch", "fp32", "cpu", None), 1, rounds["torch"], noise, [(0, 100)] * 4),
        measured_row(Candidate("onnxruntime", "int8", "cpu", "model.int8.onnx"), 1, rounds["onnxruntime"], noise),
    ]
    add_speedups(rows, {id(rows[0]): rounds["torch"], id(rows[1]): rounds["onnxruntime"]})
    rows[1].options.update({"allow_spinning": True, "intra_op_threads": "default", "pools": "library defaults"})
    load = LoadRecord(True, 0.01, 0, 8, (0.5, 0.4, 0.3), (0.6, 0.4, 0.3), False)
    isolation = Isolation(
        process_per_runner=True,
        mode="library defaults",
        environment={},
        onnxruntime_allow_spinning=True,
        threads="--threads 1",
        pause="until quiet",
        pause_ms=12.0,
        pause_max_ms=30.5,
        quiet_rule="after each slice, bench waits until quiet",
        quiet_after_warm_up_ms={"torch-cpu:fp32": 3.0, "noise-probe": None},
        wait_after_slice_ms={"torch-cpu:fp32": 11.0, "noise-probe": None},
        reply_margin_s=2.0,
    )
    run = BenchRun(
        backends=("torch", "onnxruntime"),
        precisions=("fp32", "int8"),
        batch_sizes=(1,),
        warmup_ms=10.0,
        duration_s=0.3,
        min_iterations=3,
        threads=1,
        backend_options={"openvino": {"performance_hint": "latency"}, "onnxruntime": {"allow_spinning": True}},
        budget_s=180.0,
        rounds=4,
        min_rounds=5,
        pause_ms=None,
        passive_pools=False,
        allow_spinning=True,
        slice_s=0.03,
        setup_s=4.5,
        planned_s=2.0,
        plan_fits=True,
        wall_s=8.25,
        input="seeded N(0,1) float32 NCHW",
        speedup="median of torch fp32 / this row's median",
        isolation=isolation,
        stability=noise.rule,
    )
    return BenchReport(
        machine=machine_record(1),
        settings=run,
        noise=noise,
        load=load,
        results=rows,
        warnings=bench_warnings(rows, noise, load),
        skipped=[SkipRecord("openvino", "fp16", "cpu", "model.fp16.onnx", "openvino is not installed")],
        failed=[FailedRow("onnxruntime", "fp16", "cpu", "model.fp16.onnx", 1, "measure", "died", "SIGKILL", False, 2)],
        artifacts={"model.int8.onnx": "0" * 64},
    )


def test_bench_json_is_the_report_written_and_read_back_equal(tmp_path: Path) -> None:
    report = _report()
    write_outputs(report, tmp_path, json_path=tmp_path / "copy.json")
    data = json.loads((tmp_path / BENCH_JSON).read_text())
    jsonschema.validate(data, load_schema("bench"))
    assert read_bench_report(tmp_path / BENCH_JSON) == report
    assert read_bench_report(tmp_path / "copy.json") == report
    assert data["machine"]["threads requested"] == 1 and "cpu flags" in data["machine"]  # the keys tables show
    assert list(data) == [
        "schema_version", "created", "machine", "settings", "noise", "load",
        "results", "warnings", "skipped", "failed", "artifacts",
    ]  # fmt: skip
    assert data["settings"]["backend_options"]["onnxruntime"]["allow_spinning"] is True  # a bool stays a bool
    assert "default threading (--threads 1)" in threading_note(report.settings)
    assert "Failed (not measured)" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: d["results"][1].update(median_ms="fast"), "BenchReport.results[1].median_ms: expected a number"),
        (lambda d: d.update(machine=["cpu"]), "expected an object for MachineRecord"),
        (lambda d: d["settings"].pop("warmup_ms"), "BenchReport.settings.warmup_ms: required field missing"),
        (lambda d: d["settings"]["isolation"].update(pause_ms="5"), "settings.isolation.pause_ms: expected a number"),
        (lambda d: d.update(schema_version=2), "schema_version 2 is not one this resnext-deploy reads"),
    ],
)
def test_a_hand_edited_bench_json_is_one_line_naming_the_field(tmp_path: Path, edit, problem: str) -> None:
    write_outputs(_report(), tmp_path)
    data = json.loads((tmp_path / BENCH_JSON).read_text())
    edit(data)
    (tmp_path / BENCH_JSON).write_text(json.dumps(data))
    with pytest.raises(BadInputError) as caught:
        read_bench_report(tmp_path / BENCH_JSON)
    message = str(caught.value)
    assert problem in message and message.startswith("bench.json") and "\n" not in message
    assert "run bench again" in message


def test_a_bench_json_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    (tmp_path / BENCH_JSON).write_text("[]")
    with pytest.raises(BadInputError, match=r"^bench.json is a JSON list, not an object; run bench again"):
        read_bench_report(tmp_path / BENCH_JSON)
