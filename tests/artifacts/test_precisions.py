"""The precision names are declared once (``Precision``); every table, tolerance, CLI choice and schema follows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import copy_dir

from resnext_deploy.artifacts import ONNX_FILES, PRECISIONS, Precision
from resnext_deploy.backends.base import Candidate
from resnext_deploy.backends.openvino import FILES as OPENVINO_FILES
from resnext_deploy.cli import main
from resnext_deploy.evaluate.bench import LoadRecord, NoiseFloor, measured_row
from resnext_deploy.parity import DEFAULT_TOLERANCES, SELECTABLE_PRECISIONS
from resnext_deploy.schemas import load_schema
from resnext_deploy.serde import encode


def _precision_enums(node: Any) -> Iterator[list[str]]:
    """Every ``enum`` in a schema that lists precision names."""
    if isinstance(node, dict):
        if isinstance(node.get("enum"), list) and "fp32" in node["enum"]:
            yield node["enum"]
        for value in node.values():
            yield from _precision_enums(value)
    elif isinstance(node, list):
        for value in node:
            yield from _precision_enums(value)


def test_every_table_follows_the_enum() -> None:
    names = Precision.names()
    assert names == ("fp32", "fp16", "int8", "bf16")
    assert set(DEFAULT_TOLERANCES) == set(names) and names == SELECTABLE_PRECISIONS
    assert tuple(p.value for p in Precision if p.has_artifact) == PRECISIONS
    assert set(ONNX_FILES) == set(PRECISIONS) and set(OPENVINO_FILES) == set(names)
    assert Precision.BF16.onnx_file == ONNX_FILES["fp32"]  # bf16 computes the FP32 file


@pytest.mark.parametrize("name", ["bench", "verify"])
def test_every_schema_enum_lists_every_precision(name: str) -> None:
    enums = list(_precision_enums(load_schema(name)))
    assert enums and all(enum == list(Precision.names()) for enum in enums)


def test_a_precision_is_a_string_everywhere() -> None:
    assert Precision.INT8 == "int8" and f"{Precision.INT8}" == "int8" and str(Precision.FP16) == "fp16"
    assert json.dumps({"p": Precision.BF16}) == '{"p": "bf16"}'
    assert {"fp32": 1}[Precision.FP32] == 1


@pytest.mark.parametrize("command", ["bench", "verify", "pipeline"])
def test_the_cli_offers_every_precision(command: str) -> None:
    import typer.main

    from resnext_deploy.cli import app

    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    [option] = [p for p in click_command.params if "--precisions" in p.opts]
    assert ", ".join(Precision.names()) in option.help


@pytest.mark.slow  # verify and bench on three backends
def test_bf16_bench_and_verify_outputs_validate_against_their_schemas(
    low_precision_template: Path, tmp_path: Path
) -> None:
    """The bug this enum fixed: ``--precisions fp32,bf16`` wrote a bench.json its own schema refused."""
    directory = copy_dir(low_precision_template, tmp_path / "tiny")
    args = ["--dir", str(directory), "--precisions", "fp32,bf16"]
    assert main(["verify", *args, "--count", "8", "--backends", "torch,onnxruntime,openvino"]) in (0, 1)
    jsonschema.validate(json.loads((directory / "verify.json").read_text()), load_schema("verify"))
    quick = ["--duration", "0.1", "--warmup-ms", "0", "--batch-sizes", "1", "--min-iterations", "2"]
    assert main(["bench", *args, *quick]) == 0
    bench = json.loads((directory / "bench.json").read_text())
    assert bench["settings"]["precisions"] == ["fp32", "bf16"]
    # A bf16 row, as OpenVINO writes it on a CPU with bf16 (this one may have none): the schema takes it.
    noise = NoiseFloor(0.01, 0.05, 15, "test")
    row = measured_row(Candidate("openvino", Precision.BF16, "cpu", "model.onnx"), 1, [[1.0]] * 3, noise)
    bench["results"].append(encode(row))
    bench["load"] = LoadRecord(True, 0.0, 0, 3, None, None, False).__dict__
    jsonschema.validate(json.loads(json.dumps(bench)), load_schema("bench"))
