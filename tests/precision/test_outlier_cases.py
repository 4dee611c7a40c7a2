"""The outlier cases of scripts/int8_outlier_cases.py that the search tests do not plant: the INT8 step with
default options ends within 1 point of FP32 on the separate validation set, and verify passes there."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from resnext_deploy.demo import DEMO_CALIB, DEMO_VAL, DEMO_WEIGHTS
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.export import export_onnx
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.typed import make_typed_onnx
from resnext_deploy.source import SourceOptions, resolve_source

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("int8_outlier_cases", ROOT / "scripts" / "int8_outlier_cases.py")
assert spec is not None and spec.loader is not None
cases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cases)

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
