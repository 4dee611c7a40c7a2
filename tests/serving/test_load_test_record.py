"""bench_triton.json is a typed record, written and read through serde, in the layout its schema describes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate.machine import machine_record
from resnext_deploy.schemas import load_schema
from resnext_deploy.serde import decode, encode
from resnext_deploy.serving.load_test import (
    TRITON_BENCH_JSON,
    BackgroundLoad,
    LoadRow,
    ServedFiles,
    TritonBenchRecord,
    read_triton_bench,
    served_files,
    write_triton_bench,
)

MODEL = "resnext_tiny_onnx_fp32"


def _rows() -> list[LoadRow]:
    measured = LoadRow(
        "http://127.0.0.1:8000", "http", MODEL, 4, 8, 3.0, 300, 0, 100.0, 800.0, 9.5, 11.0, 14.25, 10.0, 20.0
    )
    failed = LoadRow(
        "grpc://127.0.0.1:8001", "grpc", "elsewhere", 1, 1, 0.5, 0, 3, 0.0, 0.0, None, None, None, None, None
    )
    return [measured, LoadRow(**{**failed.__dict__, "first_error": "down", "warning": "only 0 requests"})]


def test_the_written_file_validates_and_reads_back_as_the_same_record(tiny_dir: Path) -> None:
    json_path, _ = write_triton_bench(_rows(), tiny_dir, other_cpu=0.5)
    data = json.loads(json_path.read_text())
    jsonschema.validate(data, load_schema("bench_triton"))
    record = read_triton_bench(json_path)
    assert record.rows == _rows() and record.load.other_cpu == 0.5 and "busy" in (record.load.warning or "")
    assert record.served == served_files(tiny_dir, {MODEL, "elsewhere"})
    assert record.models == {MODEL: "model.onnx", "elsewhere": None}
    assert encode(record) == data  # the round trip loses nothing
    assert decode(TritonBenchRecord, encode(record)) == record


def test_a_record_without_the_optional_load_reads_with_no_background_load(tmp_path: Path) -> None:
    record = TritonBenchRecord(1, "now", machine_record(None), {}, {MODEL: None}, _rows()[:1])
    data = encode(record)
    del data["load"]
    del data["rows"][0]["warning"]
    jsonschema.validate(data, load_schema("bench_triton"))
    assert decode(TritonBenchRecord, data) == record and record.load == BackgroundLoad()
    assert record.served == ServedFiles({}, {MODEL: None})


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["rows"][0].update(requests_per_s="fast"), "requests_per_s"),
        (lambda d: d["rows"][0].update(concurrency=True), "concurrency"),
        (lambda d: d["models"].update(m=3), "models"),
        (lambda d: d.pop("artifacts"), "artifacts"),
        (lambda d: d["load"].update(other_cpu="busy"), "other_cpu"),
    ],
)
def test_a_hand_edited_file_is_one_line_of_bad_input_naming_the_field(tiny_dir: Path, edit, field: str) -> None:
    json_path, _ = write_triton_bench(_rows(), tiny_dir)
    data = json.loads(json_path.read_text())
    edit(data)
    json_path.write_text(json.dumps(data))
    with pytest.raises(
        BadInputError, match=rf"{TRITON_BENCH_JSON} is malformed \(.*{field}.*bench-triton again"
    ) as caught:
        read_triton_bench(json_path)
    assert "\n" not in str(caught.value)
