"""The outlier cases of scripts/int8_outlier_cases.py that the search tests do not plant: the INT8 step with
default options ends within 1 point of FP32 on the separate validation set, and verify passes there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_script

from resnext_deploy.demo import DEMO_CALIB, DEMO_VAL, DEMO_WEIGHTS
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.export import export_onnx
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.typed import make_typed_onnx
from resnext_deploy.source import SourceOptions, resolve_source

cases = load_script("int8_outlier_cases")

QUIET = {"log": lambda _m: None}


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")
@pytest.mark.parametrize("case", ["classifier", "two layers", "three layers", "spread"])
def test_outlier_case_ends_within_a_point_of_fp32(tmp_path: Path, case: str) -> None:
    checkpoint = cases.planted_checkpoint(case, tmp_path / "planted.safetensors")
    directory = tmp_path / "art"
    directory.mkdir()
    export_onnx(resolve_source(SourceOptions("resnext11_digits", checkpoint)), directory, **QUIET)
    result = make_typed_onnx(directory, "int8", PrecisionOptions(calib_source=DEMO_CALIB), **QUIET)
    assert result.parity.passed and result.remedies, result.search
    report = run_verify(directory, data=DEMO_VAL, log=QUIET["log"], backends=("onnxruntime",), precisions=("int8",))
    [int8] = report.results
    assert int8.passed, int8.failures
    assert int8.parity.reference_accuracy - int8.parity.accuracy <= 1.0


@pytest.mark.slow  # two pipelines of the demo model, each with its INT8 search, verify and a short bench
@pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")
def test_the_script_passes_the_fp16_range_plants_with_default_options(tmp_path: Path) -> None:
    """The script itself, on the plants whose activations pass float16's range (issue 26): the FP16-range rule
    keeps nodes in FP32 beside the Q/DQ pairs and the search keeps sites out, and the manifest, the file and
    verify still agree: each pipeline exits 0 with INT8 within a point of FP32 on ONNX Runtime and OpenVINO."""
    out = tmp_path / "rows.json"
    code = cases.main(["--dir", str(tmp_path), "--cases", "shortcut x300,classifier x300", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert code == 0 and [row["exit"] for row in rows] == [0, 0], rows
    for row in rows:
        assert row["verify"] == "pass" and "exclusion" in row["remedies"], row
        for runtime in ("int8 onnxruntime", "int8 openvino"):
            if row[runtime] is not None:
                assert row["fp32"] - row[runtime] <= 1.0, row
