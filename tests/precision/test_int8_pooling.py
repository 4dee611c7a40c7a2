"""A quantized MaxPool output puts a Q/DQ pair on the MaxPool's input too, with the same scale."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from resnext_deploy.precision.calibration import Calibration, TensorRange
from resnext_deploy.precision.int8 import graph_quantization, int8_model, qdq_plan
from resnext_deploy.precision.methods import CalibrationMethod


def _stem_model() -> onnx.ModelProto:
    """input -> Conv -> Relu -> MaxPool -> Conv -> output, like an ImageNet stem and a first block."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="/maxpool/MaxPool", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["output"], name="/conv2/Conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _calibration(amax: dict[str, float]) -> Calibration:
    tensors = {name: TensorRange(min=0.0, max=value, amax=value) for name, value in amax.items()}
    return Calibration("sha", "fingerprint", "test", 1, 1, CalibrationMethod.MINMAX, 99.99, tensors)


def _run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": batch}
    )[0]


def test_a_quantized_maxpool_output_quantizes_its_input_with_the_same_scale() -> None:
    calibration = _calibration({"input": 3.0, "p1": 6.0})
    plan = qdq_plan(_stem_model(), calibration)
    assert plan.pooled == {"/maxpool/MaxPool": "p1"}
    model, _, _ = int8_model(_stem_model(), calibration, high_precision="fp32")
    producers = {name: node for node in model.graph.node for name in node.output}
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    pool = next(node for node in model.graph.node if node.op_type == "MaxPool")
    before = producers[pool.input[0]]
    after = next(node for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "p1")
    assert before.op_type == "DequantizeLinear" and producers[before.input[0]].input[0] == "r1"
    assert inits[before.input[1]] == inits[after.input[1]] == np.float32(6.0 / 127)
    assert graph_quantization(model).tensors == {"input", "r1", "p1"}
    # Max commutes with a monotonic quantizer of one scale: the extra pair changes no output.
    without = onnx.ModelProto()
    without.CopyFrom(model)
    pooled = next(node for node in without.graph.node if node.op_type == "MaxPool")
    pooled.input[0] = "r1"
    batch = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32) * 2
    np.testing.assert_array_equal(_run(model, batch), _run(without, batch))


def test_a_maxpool_whose_output_stays_float_gets_no_pair() -> None:
    calibration = _calibration({"input": 3.0, "p1": 6.0})
    plan = qdq_plan(_stem_model(), calibration, exclude=("/conv2/Conv",))
    assert plan.pooled == {}
    model, _, _ = int8_model(_stem_model(), calibration, exclude=("/conv2/Conv",), high_precision="fp32")
    pool = next(node for node in model.graph.node if node.op_type == "MaxPool")
    assert pool.input[0] == "r1"
