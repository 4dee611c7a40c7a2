"""model.int8.ort.onnx: ONNX Runtime's placement fuses, and it shares TensorRT's file's sites, ranges and weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import calibration_of, noise_images, residual_block, run_onnx
from onnx import numpy_helper

from resnext_deploy.artifacts import ONNX_FILES, ORT_INT8_FILE, Manifest, sha256_file
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.parity import Tolerance
from resnext_deploy.precision.int8 import INT8_MAX, graph_quantization, int8_model
from resnext_deploy.precision.int8_ort import activation_quantization, int8_ort_model
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.typed import make_typed_onnx
from resnext_deploy.serving.triton_repo import collect_models

X = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
QUIET = {"log": lambda _m: None}


def _both(tmp_path: Path, downsample: bool = False, **kwargs):
    """TensorRT's and ONNX Runtime's INT8 graphs of one residual block, from one calibration."""
    model = residual_block(downsample)
    calibration = calibration_of(model, X)
    trt, _fp32, trt_plan = int8_model(_copy(model), calibration, high_precision="fp32", **kwargs)
    ort_model, ort_plan = int8_ort_model(_copy(model), calibration, **kwargs)
    onnx.checker.check_model(ort_model, full_check=True)
    return trt, trt_plan, ort_model, ort_plan, calibration


def _copy(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def optimized_ops(model, path: Path) -> Counter:
    """The node types of ONNX Runtime's optimized graph of ``model`` (SessionOptions.optimized_model_filepath)."""
    source = path / "model.onnx"
    onnx.save(model, str(source))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(path / "optimized.onnx")).graph.node)


@pytest.mark.parametrize("downsample", [False, True])
def test_onnx_runtime_fuses_every_site_into_integer_kernels(tmp_path: Path, downsample: bool) -> None:
    trt, _plan, ort_model, _ort_plan, _calibration = _both(tmp_path, downsample)
    ops = optimized_ops(ort_model, tmp_path)
    convs = sum(node.op_type == "Conv" for node in residual_block(downsample).graph.node)
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    assert ops["QLinearAdd"] == 1 and ops["Add"] == 0, ops  # the residual Add, its ReLU dropped into the Q
    assert ops["QGemm"] == 1 and ops["Gemm"] == 0, ops
    # TensorRT's placement of the same sites runs as float kernels between Q/DQ pairs in ONNX Runtime
    trt_ops = optimized_ops(trt, tmp_path)
    assert trt_ops["QLinearConv"] == 0 and trt_ops["DequantizeLinear"] > 0, trt_ops


def test_it_has_tensorrts_sites_weights_and_clips(tmp_path: Path) -> None:
    trt, trt_plan, ort_model, ort_plan, calibration = _both(tmp_path, exclude=("conv2",))
    assert ort_plan.sites == trt_plan.sites and "conv2" not in ort_plan.sites
    assert graph_quantization(ort_model).layers == graph_quantization(trt).layers
    trt_weights, ort_weights = _int8_initializers(trt), _int8_initializers(ort_model)
    assert trt_weights and set(trt_weights) == set(ort_weights)
    for name, values in trt_weights.items():  # the same INT8 weight values, name for name
        np.testing.assert_array_equal(ort_weights[name], values)
    # every tensor both files quantize covers the same clip: scale x levels is the calibrated amax
    trt_scales = _activation_scales(trt)
    ort_scales = _activation_scales(ort_model)
    shared = set(trt_scales) & set(ort_scales)
    assert shared and set(trt_scales) <= set(ort_scales)
    for tensor in shared:
        (trt_scale, _), (ort_scale, zero) = trt_scales[tensor], ort_scales[tensor]
        levels = 255 if zero in (0, -128) and calibration.tensors[tensor].min >= 0 else INT8_MAX
        assert trt_scale * INT8_MAX == pytest.approx(calibration.amax(tensor), rel=1e-6)
        assert ort_scale * levels == pytest.approx(calibration.amax(tensor), rel=1e-6)


def _int8_initializers(model) -> dict[str, np.ndarray]:
    return {
        init.name: numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and init.dims
    }


def _activation_scales(model) -> dict[str, tuple[float, int]]:
    """Activation tensor -> (scale, zero point) of the QuantizeLinear reading it."""
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {
        node.input[0]: (float(initializers[node.input[1]]), int(initializers[node.input[2]]))
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers
    }


def test_it_computes_what_the_float_graph_does(tmp_path: Path) -> None:
    model = residual_block(True)
    reference = run_onnx(model, X)["y"]
    _trt, _plan, ort_model, _ort_plan, _calibration = _both(tmp_path, True)
    quantized = run_onnx(ort_model, X)["y"]
    cosine = float((reference * quantized).sum() / np.linalg.norm(reference) / np.linalg.norm(quantized))
    assert cosine > 0.99


def test_non_negative_tensors_use_all_levels_and_signed_ones_are_symmetric() -> None:
    scale, zero = activation_quantization(2.55, True, "uint8")
    assert float(scale) == pytest.approx(0.01) and int(zero) == 0
    scale, zero = activation_quantization(1.27, False, "uint8")
    assert float(scale) == pytest.approx(0.01) and int(zero) == 128
    scale, zero = activation_quantization(2.55, True, "int8")
    assert float(scale) == pytest.approx(0.01) and int(zero) == -128


def test_the_int8_step_writes_and_records_both_files(tiny_dir: Path, tmp_path: Path) -> None:
    calib = noise_images(tmp_path / "calib", 24)
    options = PrecisionOptions(calib_source=calib, min_check=8, tolerances={"int8": Tolerance(cosine_min=0.98)})
    result = make_typed_onnx(tiny_dir, "int8", options, **QUIET)
    assert result.runtime_files == (tiny_dir / ORT_INT8_FILE,)
    manifest = Manifest(tiny_dir)
    trt, variant = manifest.entry(ONNX_FILES["int8"]), manifest.entry(ORT_INT8_FILE)
    assert variant.precision == "int8" and variant.parent_sha256 == trt.sha256 == sha256_file(result.path)
    assert variant.quantized_nodes == trt.quantized_nodes
    assert variant.calibration == trt.calibration and variant.remedies == trt.remedies
    model = onnx.load(str(tiny_dir / ORT_INT8_FILE))
    assert graph_quantization(model).layers == frozenset(trt.quantized_nodes)
    assert set(trt.quantized_tensors) <= graph_quantization(model).tensors
    assert optimized_ops(model, tmp_path)["QLinearConv"] == len(trt.quantized_nodes) - 1  # all but the Gemm
    # Triton's ONNX Runtime model serves the variant; OpenVINO's keeps TensorRT's file (see RUNTIME_FILES)
    served = {(m.platform, m.precision): m.artifact.name for m in collect_models(tiny_dir, log=QUIET["log"])}
    assert served[("onnxruntime_onnx", "int8")] == ORT_INT8_FILE
    assert served.get(("openvino", "int8"), ONNX_FILES["int8"]) == ONNX_FILES["int8"]
    # a rerun reuses both; once model.int8.onnx changes, the variant is stale with it
    assert make_typed_onnx(tiny_dir, "int8", options, **QUIET).reused
    manifest.update(ONNX_FILES["int8"], sha256="0" * 64)
    assert "made from an earlier" in (Manifest(tiny_dir).stale_reason(ORT_INT8_FILE) or "")


@pytest.mark.slow
def test_the_demo_models_onnx_runtime_file_passes_verify_and_is_what_onnx_runtime_runs(demo_dir: Path) -> None:
    make_typed_onnx(demo_dir, "int8", PrecisionOptions(), **QUIET)
    report = run_verify(demo_dir, backends=("onnxruntime",), precisions=("int8",), **QUIET)
    [row] = report.results
    assert row.candidate.artifact == ORT_INT8_FILE and row.passed, row.failures


def test_both_checks_run_model_onnx_once(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX Runtime file is checked against the logits the TensorRT file's check computed."""
    from resnext_deploy.precision import typed

    opened: list[str] = []

    class Counting(typed.OnnxRuntimeRunner):
        def __init__(self, path, *args, **kwargs) -> None:
            opened.append(Path(path).name.split(".partial")[0])
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(typed, "OnnxRuntimeRunner", Counting)
    calib = noise_images(tmp_path / "calib", 24)
    options = PrecisionOptions(
        calib_source=calib, min_check=8, search=False, tolerances={"int8": Tolerance(cosine_min=0.98)}
    )
    make_typed_onnx(tiny_dir, "int8", options, **QUIET)
    assert opened.count("model.onnx") == 1 and len(opened) == 3, opened
