"""bench.json is one BenchReport: written by serde.encode, read back equal, valid against its schema, and a
hand-edited file is one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from helpers import bench_report

from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate.bench import (
    BENCH_JSON,
    read_bench_report,
    threading_note,
    write_outputs,
)
from resnext_deploy.schemas import load_schema


def test_bench_json_is_the_report_written_and_read_back_equal(tmp_path: Path) -> None:
    report = bench_report()
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
    write_outputs(bench_report(), tmp_path)
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
