"""Bias correction: the INT8 layer's mean output shift taken off its bias, grouped convs and Gemm included."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load_file, save_file

from resnext_deploy.artifacts import Manifest
from resnext_deploy.data import open_dataset
from resnext_deploy.demo import DEMO_CALIB, DEMO_VAL, DEMO_WEIGHTS
from resnext_deploy.export import export_onnx
from resnext_deploy.precision.bias import bias_shifts, correct_biases
from resnext_deploy.precision.calibration import calibrate
from resnext_deploy.precision.int8 import WEIGHT_MAX, int8_model
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.typed import make_typed_onnx
from resnext_deploy.source import SourceOptions, resolve_source

PRE = resolve_source(SourceOptions("resnext_tiny")).preprocessing
QUIET = {"log": lambda _m: None}


def _biased_rows(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """Weights that 7-bit rounding moves the same way: each row's largest is exactly 63 steps, every other
    one 0.49 of a step below a whole step, so each rounds up by 0.49 of a step."""
    steps = rng.uniform(0.005, 0.02, (rows, 1))
    whole = rng.integers(-20, 21, (rows, columns)).astype(np.float64)
    weights = (whole - 0.49) * steps
    weights[:, 0] = WEIGHT_MAX * steps[:, 0]
    return weights.astype(np.float32)


def _model(conv2: np.ndarray, fc: np.ndarray, conv1: np.ndarray) -> onnx.ModelProto:
    """input -> Conv(3->8) -> Relu -> Conv(8->16, 4 groups, no bias) -> Relu -> pool -> Gemm(16->5, B as [K, N])."""
    inits = [
        numpy_helper.from_array(conv1, "w1"),
        numpy_helper.from_array(np.full(8, 0.1, np.float32), "b1"),
        numpy_helper.from_array(conv2, "w2"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.zeros(5, np.float32), "fc_bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["logits"], name="fc"),
    ]
    size = PRE.image_size
    graph = helper.make_graph(
        nodes,
        "biased",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("c2", TensorProto.FLOAT, ["N", 16, size, size]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _run(model: onnx.ModelProto, images: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits", "c2"], {"input": images})


def _int8(model: onnx.ModelProto, calibration, shifts=None) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if shifts is not None:
        assert correct_biases(copy, shifts, list(shifts)) == ["conv1", "conv2", "fc"]
    return int8_model(copy, calibration, high_precision="fp32")[0]


def _calibrated(tmp_path: Path, model: onnx.ModelProto, images: np.ndarray):
    np.save(tmp_path / "images.npy", images)
    dataset = open_dataset(tmp_path / "images.npy", PRE)
    onnx.save(model, str(tmp_path / "model.onnx"))
    return dataset, calibrate(tmp_path, tmp_path / "model.onnx", dataset, "minmax", **QUIET)


def test_bias_correction_removes_the_mean_error_of_weight_rounding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    conv1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    conv2 = _biased_rows(rng, 16, 2 * 9).reshape(16, 2, 3, 3)
    fc = _biased_rows(rng, 5, 16).T.copy()  # Gemm without transB: B is [K, N], a row per output in its columns
    model = _model(conv2, fc, conv1)
    images = rng.uniform(0, 1, (48, 3, PRE.image_size, PRE.image_size)).astype(np.float32)
    dataset, calibration = _calibrated(tmp_path, model, images)
    reference = _run(model, images)
    shifts = bias_shifts(model, calibration, dataset)
    assert set(shifts) == {"conv1", "conv2", "fc"}

    def mean_errors(candidate: onnx.ModelProto) -> list[float]:
        """Per output, the largest per-channel mean error against the float model (a systematic shift)."""
        outputs = _run(candidate, images)
        return [
            float(np.abs((out - ref).mean(axis=tuple(i for i in range(out.ndim) if i != 1))).max())
            for out, ref in zip(outputs, reference, strict=True)
        ]

    plain = mean_errors(_int8(model, calibration))
    corrected = mean_errors(_int8(model, calibration, shifts))
    logits_scale = float(np.abs(reference[0]).mean())
    assert plain[0] > 0.05 * logits_scale, (plain, logits_scale)  # the rounding shifts the logits visibly
    assert corrected[0] < 0.2 * plain[0] and corrected[1] < 0.2 * plain[1], (plain, corrected)


def test_exactly_representable_weights_and_inputs_keep_the_float_function(tmp_path: Path) -> None:
    """A Conv whose weights are whole steps of their scale, on inputs that are whole steps of theirs: no shift."""
    rng = np.random.default_rng(1)
    steps = rng.uniform(0.01, 0.05, (8, 1, 1, 1))
    whole = rng.integers(-WEIGHT_MAX, WEIGHT_MAX + 1, (8, 3, 3, 3)).astype(np.float64)
    whole[:, 0, 0, 0] = WEIGHT_MAX
    weight = (whole * steps).astype(np.float32)
    size = PRE.image_size
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["logits"], name="conv", pads=[1, 1, 1, 1])],
        "exact",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8, size, size])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    images = (rng.integers(-127, 128, (16, 3, size, size)) / 127).astype(np.float32)
    images[0, 0, 0, 0] = 1.0  # the range is exactly 127 steps
    dataset, calibration = _calibrated(tmp_path, model, images)
    shifts = bias_shifts(model, calibration, dataset)
    assert np.abs(shifts["conv"]).max() < 1e-6
    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    correct_biases(corrected, shifts, ["conv"])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(corrected.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        after.run(None, {"input": images})[0], session.run(None, {"input": images})[0], atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")
def test_the_search_picks_bias_correction_when_it_keeps_fewer_layers_in_float(tmp_path: Path) -> None:
    """The demo's classifier moved onto the rounding pattern above: every weight but each row's largest rounds
    up by 0.49 of a step, so INT8 shifts every logit. Equalization cannot touch a Gemm; keeping the classifier
    in float passes with one site out; bias correction passes with none, and the search takes it."""
    state = load_file(str(DEMO_WEIGHTS))
    weight = state["fc.weight"].double()
    steps = weight.abs().amax(dim=1, keepdim=True) / WEIGHT_MAX
    biased = (torch.round(weight / steps) - 0.49) * steps
    largest = weight.abs().argmax(dim=1, keepdim=True)
    biased.scatter_(1, largest, weight.gather(1, largest).sign() * WEIGHT_MAX * steps)
    state["fc.weight"] = biased.float()
    save_file(state, str(tmp_path / "planted.safetensors"))
    directory = tmp_path / "art"
    directory.mkdir()
    export_onnx(resolve_source(SourceOptions("resnext11_digits", tmp_path / "planted.safetensors")), directory, **QUIET)
    options = PrecisionOptions(calib_source=DEMO_CALIB, check_source=DEMO_VAL)
    result = make_typed_onnx(directory, "int8", options, **QUIET)
    search = result.search
    assert not any(m.passed for name, m in search.methods.items() if "bias correction" not in name), search
    assert search.bias_correction.chosen and search.bias_correction.summary.passed, search
    assert search.kept == [] and "/fc/Gemm" in result.quantized_nodes
    assert Manifest(directory).entry("model.int8.onnx").remedies == tuple(result.remedies)
    assert "bias correction" in result.remedies and "exclusion" not in result.remedies
    excluded = make_typed_onnx(directory, "int8", replace(options, exclude=("/fc/Gemm",), search=False), **QUIET)
    assert excluded.parity.passed and "/fc/Gemm" not in excluded.quantized_nodes  # exclusion needs one site out
