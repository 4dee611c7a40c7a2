"""FP16 conversion: what stays FP32 and why, and that the typed graph is valid, on a hand-built residual block."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import calibration_of, residual_block, run_onnx
from onnx import TensorProto, numpy_helper

from resnext_deploy.precision.fp16 import FP16_DATA_MAX, fp16_model, overflow_nodes, residual_closure

X = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
BLOCK_GROUP = ["conv2", "add", "relu2"]  # the Conv -> Add -> ReLU that TensorRT fuses


def test_nothing_stays_fp32_when_every_value_fits() -> None:
    model = residual_block()
    assert overflow_nodes(model, calibration_of(model, X)) == []


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        ("a0", ["conv0", "relu0"]),  # the producer and the consumer of a large value; no residual group touched
        ("r1", ["relu1", *BLOCK_GROUP]),  # conv2 reads it: its whole group comes along
        ("y", ["fc"]),
    ],
)
def test_a_value_beyond_data_max_keeps_its_nodes_and_their_residual_group_fp32(tensor: str, expected) -> None:
    model = residual_block()
    calibration = calibration_of(model, X, **{tensor: (-1.0, FP16_DATA_MAX * 2)})
    assert overflow_nodes(model, calibration) == expected
    assert overflow_nodes(model, calibration, data_max=FP16_DATA_MAX * 4) == []


def test_nan_and_huge_initializers_keep_their_nodes_fp32() -> None:
    model = residual_block()
    calibration = calibration_of(model, X)
    assert overflow_nodes(model, calibration_of(model, X, a0=(float("nan"), float("nan")))) == ["conv0", "relu0"]
    bias = next(init for init in model.graph.initializer if init.name == "bfc")
    bias.CopyFrom(numpy_helper.from_array(np.full(3, 1e5, np.float32), "bfc"))  # beyond float16's 65504
    assert overflow_nodes(model, calibration) == ["fc"]  # the data (calibrated before) fit


def test_the_residual_closure_adds_whole_groups_only() -> None:
    model = residual_block(downsample=True)
    assert residual_closure(model, ["relu2"]) == ["conv2", "conv_sc", "add", "relu2"]  # both Convs feed the Add
    assert residual_closure(model, ["relu0", "fc"]) == ["relu0", "fc"]


@pytest.mark.parametrize("tensor", ["r1", "y"])
def test_the_fp16_graph_is_valid_and_fp32_nodes_compute_in_float32(tensor: str) -> None:
    model = residual_block()
    blocked_model, blocked = fp16_model(model, calibration_of(model, X, **{tensor: (0.0, 1e4)}))
    onnx.checker.check_model(blocked_model, full_check=True)
    graph = blocked_model.graph
    assert [v.name for v in graph.output] == ["y"]
    for value in (*graph.input, *graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(blocked_model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *graph.input, *graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:
        wanted = TensorProto.FLOAT if node.name in blocked else TensorProto.FLOAT16
        if node.op_type != "Cast":
            assert {types[name] for name in (*node.input, *node.output) if name} == {wanted}, node.name
        for name in node.input:  # no float32 -> float16 -> float32 round trip between two FP32 nodes
            parent = producers.get(name)
            if node.name in blocked and parent is not None and parent.op_type == "Cast":
                assert producers.get(parent.input[0]) is None or producers[parent.input[0]].name not in blocked
    props = {p.key: p.value for p in blocked_model.metadata_props}
    assert props["resnext_deploy.precision"] == "fp16" and json.loads(props["resnext_deploy.fp32_nodes"]) == blocked
    reference, half = run_onnx(residual_block(), X)["y"], run_onnx(blocked_model, X)["y"]
    np.testing.assert_allclose(half, reference, rtol=1e-2, atol=1e-2)


def test_without_overflow_every_node_computes_in_float16() -> None:
    model = residual_block()
    half, blocked = fp16_model(model, calibration_of(model, X))
    assert blocked == []
    floats = [init.name for init in half.graph.initializer if init.data_type == TensorProto.FLOAT]
    assert floats == []
    casts = [node for node in half.graph.node if node.op_type == "Cast"]
    assert len(casts) == 2  # the float32 input in and the output out


def test_a_tensor_read_only_by_relus_is_judged_by_their_outputs() -> None:
    """Calibration records no ReLU input (a0, a1, sum): its positive side is the ReLU's output, its negative side
    leaves the ReLU as 0 in float16 too, so only a large ReLU output keeps the pair FP32."""
    from resnext_deploy.precision.statistics import relu_outputs

    model = residual_block()
    assert relu_outputs(model) == {"a0": ["h"], "a1": ["r1"], "sum": ["r2"]}

    def recorded(**overrides: tuple[float, float]):
        calibration = calibration_of(model, X, **overrides)
        for name in relu_outputs(model):
            del calibration.tensors[name]
        return calibration

    # r1 large: a1 was as large, so conv1 (which writes a1) stays FP32 too
    assert overflow_nodes(model, recorded(r1=(0.0, FP16_DATA_MAX * 2))) == ["conv1", "relu1", *BLOCK_GROUP]
    assert overflow_nodes(model, recorded(r2=(0.0, FP16_DATA_MAX * 2))) == [*BLOCK_GROUP, "pool"]
    assert overflow_nodes(model, recorded()) == []  # however negative a0 was: it is not in the record
