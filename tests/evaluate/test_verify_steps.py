"""verify's steps one by one (plan, run, judge, record) on the tiny ResNeXt, and its record read back as objects."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from helpers import copy_dir

from resnext_deploy.backends.base import SkipRecord
from resnext_deploy.backends.registry import REFERENCE
from resnext_deploy.cli import main
from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate.status import Problem
from resnext_deploy.evaluate.verify import (
    VERIFY_JSON,
    VerifyRow,
    judge,
    plan_verify,
    read_verify,
    record_verify,
    run_candidates,
    verify_table,
    verify_text,
)
from resnext_deploy.parity import DEFAULT_TOLERANCES, Tolerance, compare
from resnext_deploy.schemas import load_schema


@pytest.fixture
def planned(low_precision_template: Path, tmp_path: Path):
    directory = copy_dir(low_precision_template, tmp_path / "tiny")
    return directory, plan_verify(directory, None, 8, ("onnxruntime",), ("fp32", "fp16"))


def test_plan_run_judge_record(planned, tmp_path: Path) -> None:
    directory, plan = planned
    assert plan.reference.key == REFERENCE and plan.dataset.count == 8
    assert {(c.backend, c.precision) for c in plan.candidates} == {("onnxruntime", "fp32"), ("onnxruntime", "fp16")}
    run = run_candidates(plan, batch_size=4)
    assert run.ran == [plan.reference, *plan.candidates] and all(e is None for e in run.errors)
    assert all(logits is not None and logits.shape[0] == 8 for logits in run.logits)
    report = judge(plan, run, DEFAULT_TOLERANCES)
    assert report.passed and [r.full_label for r in report.record.rows] == [c.label for c in plan.candidates]
    lines: list[str] = []
    record_verify(report.record, directory, tmp_path / "copy.json", lines.append)
    data = json.loads((directory / VERIFY_JSON).read_text())
    assert data == json.loads((tmp_path / "copy.json").read_text()) and data["passed"] is True
    back = read_verify(directory / VERIFY_JSON)
    assert back == report.record and verify_text(back) == verify_text(report.record)


def test_judge_fails_a_candidate_whose_outputs_are_not_finite(planned) -> None:
    directory, plan = planned
    run = run_candidates(plan, batch_size=8)
    broken = run.logits[1].copy()
    broken[0, 0] = np.inf
    report = judge(plan, replace(run, logits=[run.logits[0], broken, *run.logits[2:]]), DEFAULT_TOLERANCES)
    [failed] = [r for r in report.record.rows if not r.passed]
    assert failed.parity is not None and failed.parity.nonfinite == 1
    assert report.failure_summary().startswith(f"1 failed: {plan.candidates[0].label}: 1 non-finite outputs")
    # verify.json writes the infinite relative error as null; read back, the table shows a dash for it
    record_verify(report.record, directory, None, lambda _: None)
    back = read_verify(directory / VERIFY_JSON)
    headers, cells = verify_table(back.rows)
    assert cells[0][headers.index("rel err")] == "-" and cells[0][-1] == "FAIL [1]"


def test_a_malformed_verify_json_is_a_one_line_error(planned, capsys: pytest.CaptureFixture) -> None:
    directory, _ = planned
    (directory / VERIFY_JSON).write_text(json.dumps({"passed": True, "results": []}))
    with pytest.raises(BadInputError, match=r"^verify.json: schema_version None is not one"):
        read_verify(directory / VERIFY_JSON)
    (directory / VERIFY_JSON).write_text(json.dumps({"schema_version": 1, "passed": True, "results": []}))
    with pytest.raises(BadInputError, match=r"^verify.json: reference: required field missing; run verify again"):
        read_verify(directory / VERIFY_JSON)
    assert main(["report", "--dir", str(directory)]) == 3
    assert capsys.readouterr().err == (
        "error: verify.json: reference: required field missing; run verify again (or restore the file)\n"
    )


def test_a_failed_row_shows_its_figures() -> None:
    """A failing Parity is falsy; the table tests it against None, so max abs, rel err and cosine are shown (#26)."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((80, 100)).astype(np.float32)
    parity = compare(reference, reference + 0.3 * rng.standard_normal(reference.shape).astype(np.float32))
    parity = replace(parity, failures=("min cosine below the tolerance",))
    row = VerifyRow("openvino", "int8", "cpu", "model.int8.onnx", parity, False, parity.failures, Tolerance())
    headers, [cells] = verify_table([row])
    shown = dict(zip(headers, cells, strict=True))
    assert shown["max abs"] == f"{parity.max_abs:.3g}" and shown["rel err"] == f"{parity.rel_error:.3g}"
    assert shown["cos min"] == f"{parity.cosine_min:.6f}" and shown["n"] == "80" and shown["result"] == "FAIL [1]"


def test_a_record_with_a_candidate_that_never_ran_round_trips_in_the_schema_layout(planned) -> None:
    """verify.json keeps its flat layout (the metrics inline in the row, nulls for a candidate without outputs)."""
    directory, plan = planned
    report = judge(plan, run_candidates(plan, batch_size=8), DEFAULT_TOLERANCES)
    never = VerifyRow("openvino", "int8", "cpu", "model.int8.onnx", None, False, ("failed to open",), Tolerance())
    skip = SkipRecord("tensorrt", "fp16", "gpu", "model.fp16.onnx", "no GPU")
    problem = Problem("build-int8", "calibration failed", bad_input=True)
    record = replace(report.record, rows=[*report.record.rows, never], skipped=[skip], failed_steps=[problem])
    record_verify(record, directory, None, lambda _: None)
    data = json.loads((directory / VERIFY_JSON).read_text(), parse_constant=pytest.fail)  # strict JSON
    jsonschema.validate(data, load_schema("verify"))
    assert data["passed"] is False and data["results"][-1]["n"] is None and "parity" not in data["results"][-1]
    assert data["results"][0]["cosine_min"] == record.rows[0].parity.cosine_min
    assert read_verify(directory / VERIFY_JSON) == record
