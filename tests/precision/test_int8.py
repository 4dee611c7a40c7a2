"""INT8 Q/DQ placement and weights, rule by rule, on a hand-built residual block (whole files: test_typed.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import calibration_of, residual_block, run_onnx
from onnx import TensorProto, numpy_helper

from resnext_deploy.errors import BadInputError
from resnext_deploy.precision.int8 import (
    INT8_MAX,
    WEIGHT_MAX,
    activation_scale,
    graph_quantization,
    int8_model,
    qdq_plan,
    quantization_shortfall,
    quantize_weight,
)

X = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
WEIGHTED = ["conv0", "conv1", "conv2", "fc"]


def _plan(downsample: bool = False, **kwargs):
    model = residual_block(downsample)
    return qdq_plan(model, calibration_of(model, X), **kwargs)


def _int8(downsample: bool = False, trans_b: int = 1, **kwargs):
    model = residual_block(downsample, trans_b)
    return int8_model(model, calibration_of(model, X), **kwargs)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_every_weighted_layer_and_the_identity_shortcut_get_qdq() -> None:
    plan = _plan()
    assert plan.weighted == WEIGHTED and plan.residual_adds == ["add"]
    assert plan.sites == [*WEIGHTED, "add"]
    # The Add's Conv input (c) stays float so that TensorRT fuses Conv + Add; its shortcut h shares conv1's pair.
    expected = {"x": [("conv0", 0)], "h": [("conv1", 0), ("add", 1)], "r1": [("conv2", 0)], "f": [("fc", 0)]}
    assert plan.consumers == expected


def test_in_a_downsampling_block_the_shorter_conv_branch_is_the_shortcut() -> None:
    plan = _plan(downsample=True)
    assert plan.weighted == ["conv0", "conv1", "conv2", "conv_sc", "fc"]
    assert plan.consumers["s"] == [("add", 1)]  # conv_sc is one node from relu0, conv2 three
    assert "c" not in plan.consumers


def test_excluding_a_site_removes_only_its_own_pairs() -> None:
    full, without = _plan(), _plan(exclude=("conv2",))
    assert without.weighted == ["conv0", "conv1", "fc"] and without.residual_adds == ["add"]
    assert without.consumers == {name: slots for name, slots in full.consumers.items() if name != "r1"}
    assert _plan(exclude=("conv*",)).consumers == {"h": [("add", 1)], "f": [("fc", 0)]}
    assert _plan(only=["add"]).consumers == {"h": [("add", 1)]}


def test_an_exclude_pattern_that_matches_nothing_is_refused_with_an_example() -> None:
    with pytest.raises(BadInputError, match=r"--exclude 'layer9\*' matches no node; node names look like 'conv0'"):
        _plan(exclude=("layer9*",))


def test_a_non_finite_range_on_a_quantized_tensor_is_refused() -> None:
    model = residual_block()
    calibration = calibration_of(model, X, r1=(0.0, float("inf")))
    with pytest.raises(BadInputError, match="non-finite values in r1"):
        qdq_plan(model, calibration)


def test_weights_are_7_bit_per_output_channel_along_the_weight_axis() -> None:
    weight = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)  # a Gemm weight without transB
    q, scale = quantize_weight(weight, axis=1)
    assert q.dtype == np.int8 and scale.shape == (6,)
    assert np.abs(q.astype(np.int32)).max(axis=0).tolist() == [WEIGHT_MAX] * 6
    np.testing.assert_allclose(scale, np.abs(weight).max(axis=0) / WEIGHT_MAX, rtol=1e-6)
    assert np.abs(q * scale - weight).max() <= scale.max() / 2 + 1e-6
    assert float(activation_scale(2.54)) == pytest.approx(2.54 / INT8_MAX)


@pytest.mark.parametrize("trans_b", [1, 0])
def test_the_qdq_graph_follows_tensorrts_placement_rules(trans_b: int) -> None:
    model, fp32_nodes, plan = _int8(trans_b=trans_b, high_precision="fp32")
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = initializers[node.input[2]]
            assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    axes = {"conv0": 0, "conv1": 0, "conv2": 0, "fc": 0 if trans_b else 1}
    for name, axis in axes.items():
        node = next(n for n in graph.node if n.name == name)
        data, weight = (producers[node.input[i]] for i in (0, 1))
        assert data.op_type == weight.op_type == "DequantizeLinear"
        assert weight.attribute[0].name == "axis" and weight.attribute[0].i == axis
        q = initializers[weight.input[0]]
        assert q.dtype == np.int8 and np.abs(q.astype(np.int32)).max() == WEIGHT_MAX
        assert initializers[node.input[2]].dtype == np.float32  # biases are never quantized
    quantized_inputs = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    assert quantized_inputs == set(plan.consumers)  # no Q/DQ on a Conv output: TensorRT quantizes at the next Q
    assert fp32_nodes == []
    props = {p.key: p.value for p in model.metadata_props}
    assert props["resnext_deploy.precision"] == "int8" and json.loads(props["resnext_deploy.weight_max"]) == 63
    float_out, int8_out = run_onnx(residual_block(trans_b=trans_b), X)["y"], run_onnx(model, X)["y"]
    assert _cosine(float_out, int8_out) > 0.99


def test_the_fp16_variant_keeps_float32_io_and_reads_the_input_through_a_cast() -> None:
    model, _fp32_nodes, plan = _int8()
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    found = graph_quantization(model)
    assert found.layers == frozenset(WEIGHTED) and found.tensors == frozenset(plan.consumers)  # "x", not its Cast
    scales = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale")]
    assert scales and all(scale.dtype == np.float16 for scale in scales)
    assert _cosine(run_onnx(residual_block(), X)["y"], run_onnx(model, X)["y"]) > 0.99


def test_an_older_opset_is_converted_and_keeps_its_metadata() -> None:
    model = residual_block(opset=17)
    onnx.helper.set_model_props(model, {"resnext_deploy.arch": "block"})
    converted, _fp32_nodes, _plan = int8_model(model, calibration_of(model, X))
    assert next(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")) == 19
    assert {p.key: p.value for p in converted.metadata_props}["resnext_deploy.arch"] == "block"


def test_an_unknown_high_precision_is_refused() -> None:
    with pytest.raises(BadInputError, match="--high-precision must be one of fp16, fp32, got 'bf16'"):
        _int8(high_precision="bf16")


def test_the_shortfall_names_what_a_file_does_not_quantize() -> None:
    model, _fp32_nodes, plan = _int8(high_precision="fp32")
    tensors = sorted(plan.consumers)
    assert quantization_shortfall(model, plan.weighted, tensors) is None
    assert "quantizes no activation" in quantization_shortfall(residual_block(), plan.weighted, tensors)
    fewer, _fp32_nodes, _plan = _int8(high_precision="fp32", exclude=("conv2",))
    shortfall = quantization_shortfall(fewer, plan.weighted, tensors)
    assert shortfall == (
        "1 of the 4 layers its manifest records are not INT8 (conv2); "
        "1 of the 4 activation tensors its manifest records are not INT8 (r1)"
    )
