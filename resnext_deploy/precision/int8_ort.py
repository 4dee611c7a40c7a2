"""INT8 Q/DQ ONNX in the placement ONNX Runtime's CPU provider fuses: ``model.int8.ort.onnx``.

``model.int8.onnx`` follows TensorRT's rules (Q/DQ on a layer's inputs only, float biases, FP16 float
parts); ONNX Runtime runs that file through separate QuantizeLinear/DequantizeLinear kernels and
float convolutions, slower than FP32. Its graph optimizer fuses ``DQ -> Conv -> Q`` into
``QLinearConv`` (``DQ -> Add -> Q`` into ``QLinearAdd``, ``DQ -> Gemm`` into ``QGemm``) only when
every input of the node comes from a DequantizeLinear (the bias too, as INT32) and its output goes
to a QuantizeLinear. This file has that placement, from the same ranges and the same sites as
TensorRT's file (:func:`~resnext_deploy.precision.int8.qdq_plan` decides both, exclusions included):

* every site's Conv/Gemm: the data input, the per-channel weight (the same INT8 values as TensorRT's
  file) and the bias (INT32, scale = input scale x weight scale) through DequantizeLinear;
* a residual Add in INT8: both inputs quantized, so the branch Conv's output gets a QuantizeLinear
  and fuses too (TensorRT's file keeps that input float for its Conv + Add fusion);
* a tensor's quantization covers the same clip ``amax`` as TensorRT's file: symmetric around 0 when
  the tensor has negative values, ``[0, amax]`` with all 256 levels when it has none (a ReLU's
  output: a QuantizeLinear whose zero point is the type's minimum clips like ReLU, so the optimizer
  drops the ReLU and the Conv before it fuses);
* a MaxPool or Flatten whose output is quantized takes the output's quantization on its input too,
  and runs on 8-bit data;
* activations uint8 (U8S8) by default or int8 (S8S8), weights int8; everything else FP32.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

import numpy as np

from .calibration import Calibration
from .graph import at_least_opset, drop_unused_initializers, tag_model, toposort
from .int8 import INT8_MAX, WEIGHT_MAX, QdqPlan, _scale_floor, _weight_axis, qdq_plan, quantize_weight

ORT_OPSET = 13  # per-channel DequantizeLinear (axis) and INT32 bias DequantizeLinear
ACTIVATION_TYPES = ("uint8", "int8")
DEFAULT_ACTIVATION_TYPE = "uint8"  # U8S8: measured ahead of S8S8 on ResNeXt-50 (scripts/int8_speed_compare.py)
INT32_MAX = int(np.iinfo(np.int32).max)


def activation_quantization(amax: float, non_negative: bool, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, zero_point)`` over the clip ``amax``: ``[-amax, amax]``, or ``[0, amax]`` for a non-negative tensor."""
    levels = 2 * INT8_MAX + 1 if non_negative else INT8_MAX
    scale = np.asarray(max(amax / levels, _scale_floor(np.float32)), dtype=np.float32)
    if dtype == "uint8":
        return scale, np.asarray(0 if non_negative else 128, dtype=np.uint8)
    return scale, np.asarray(-128 if non_negative else 0, dtype=np.int8)


def int8_ort_model(
    model,
    calibration: Calibration,
    exclude: tuple[str, ...] = (),
    only: Collection[str] | None = None,
    activation_type: str = DEFAULT_ACTIVATION_TYPE,
):
    """The ONNX Runtime Q/DQ graph of ``model`` (changed in place) and the plan it shares with TensorRT's file.

    ``exclude`` and ``only`` keep the same sites in float as :func:`~resnext_deploy.precision.int8.int8_model`.
    """
    from onnx import helper, numpy_helper

    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type must be one of {ACTIVATION_TYPES}, got {activation_type!r}")
    model = at_least_opset(model, ORT_OPSET)
    plan = qdq_plan(model, calibration, exclude, only)
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    initializers = {init.name: init for init in graph.initializer}
    slots = ort_slots(model, plan)
    pooled = {}  # input of a MaxPool or Flatten -> the quantized output whose quantization it takes
    for name, output in _pooled(model, slots).items():
        pooled[nodes[name].input[0]] = output
        slots.setdefault(nodes[name].input[0], []).append((name, 0))
    new_nodes: list = []
    new_inits: list = []
    scales: dict[str, float] = {}  # quantized tensor -> its scale (the bias scale needs it)
    for tensor, consumers in slots.items():
        ranged = pooled.get(tensor, tensor)  # a MaxPool input is quantized like the MaxPool's output
        entry = calibration.range(ranged)
        # a tensor only this placement quantizes (a GlobalAveragePool's input) may have no clip in an older
        # calibration.json: then its min/max range
        amax = entry.max_abs if entry.amax is None else entry.amax
        scale, zero = activation_quantization(amax, entry.min >= 0.0, activation_type)
        scales[tensor] = float(scale)
        new_inits += [
            numpy_helper.from_array(scale, f"{tensor}_scale"),
            numpy_helper.from_array(zero, f"{tensor}_zero_point"),
        ]
        quant, dequant = f"{tensor}_QuantizeLinear", f"{tensor}_DequantizeLinear"
        params = [f"{tensor}_scale", f"{tensor}_zero_point"]
        new_nodes += [
            helper.make_node("QuantizeLinear", [tensor, *params], [f"{quant}_Output"], name=quant),
            helper.make_node("DequantizeLinear", [f"{quant}_Output", *params], [f"{dequant}_Output"], name=dequant),
        ]
        for node_name, index in consumers:
            nodes[node_name].input[index] = f"{dequant}_Output"

    for node_name in plan.weighted:
        node = nodes[node_name]
        weight_name = node.input[1]
        axis = _weight_axis(node)
        assert axis is not None  # qdq_plan weights only nodes with one
        q, scale = quantize_weight(numpy_helper.to_array(initializers[weight_name]), axis, np.float32, WEIGHT_MAX)
        base = f"{weight_name}_{node_name}" if sum(weight_name in n.input for n in graph.node) > 1 else weight_name
        new_inits += [
            numpy_helper.from_array(q, f"{base}_quantized"),
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point"),
        ]
        dequant = f"{base}_DequantizeLinear"
        new_nodes.append(_dequantize(helper, f"{base}_quantized", base, dequant, axis))
        node.input[1] = f"{dequant}_Output"
        if len(node.input) > 2 and node.input[2] in initializers:
            # Q/DQ on the data input is what makes this a site; its scale is the tensor's
            data_scale = scales[_dequantized_tensor(node.input[0])]
            bias_name = f"{node.input[2]}_{node_name}"
            bias = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64)
            bias_scale = (scale.astype(np.float64) * data_scale).astype(np.float32)
            q_bias = np.clip(np.round(bias / bias_scale), -INT32_MAX, INT32_MAX).astype(np.int32)
            new_inits += [
                numpy_helper.from_array(q_bias, f"{bias_name}_quantized"),
                numpy_helper.from_array(bias_scale, f"{bias_name}_scale"),
                numpy_helper.from_array(np.zeros(bias_scale.shape, np.int32), f"{bias_name}_zero_point"),
            ]
            dequant = f"{bias_name}_DequantizeLinear"
            new_nodes.append(_dequantize(helper, f"{bias_name}_quantized", bias_name, dequant, 0))
            node.input[2] = f"{dequant}_Output"

    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    drop_unused_initializers(graph)
    toposort(graph)
    info = {"placement": "onnxruntime", "activation_type": activation_type, "exclude": list(exclude)}
    tag_model(model, "int8", {**info, "weight_max": WEIGHT_MAX})
    return model, plan


def ort_slots(model, plan: QdqPlan) -> dict[str, list[tuple[str, int]]]:
    """Activation tensor -> the (node, input index) pairs that read it through Q/DQ in ONNX Runtime's placement.

    The data input of every Conv/Gemm site and both inputs of every residual Add site. An excluded
    site reads its inputs in float, as in TensorRT's file. A GlobalAveragePool after an INT8 Add (and
    its ReLU) reads its input through Q/DQ too, so that the Add before it has a quantized output and fuses.
    """
    nodes = {node.name: node for node in model.graph.node}
    producers = {name: node for node in model.graph.node for name in node.output}
    slots: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name in plan.weighted:
        slots[nodes[name].input[0]].append((name, 0))
    for name in plan.residual_adds:
        for index, tensor in enumerate(nodes[name].input):
            slots[tensor].append((name, index))
    sites = set(plan.sites)
    for node in model.graph.node:
        parent = producers.get(node.input[0]) if node.op_type == "GlobalAveragePool" else None
        if parent is not None and parent.op_type == "Relu":
            parent = producers.get(parent.input[0])
        if parent is not None and parent.name in sites:
            slots[node.input[0]].append((node.name, 0))
    return dict(slots)


PASS_THROUGH_OPS = ("MaxPool", "Flatten")  # quantization commutes with them: they run on 8-bit data


def _pooled(model, slots: dict[str, list[tuple[str, int]]]) -> dict[str, str]:
    """MaxPool or Flatten node -> its quantized output, where the output is quantized and the input is not.

    Its input takes the output's scale and zero point, so ONNX Runtime drops the pair around it: the
    MaxPool runs on 8-bit data, and the GlobalAveragePool before the classifier's Flatten fuses
    (QLinearGlobalAveragePool).
    """
    return {
        node.name: node.output[0]
        for node in model.graph.node
        if node.op_type in PASS_THROUGH_OPS and node.output[0] in slots and node.input[0] not in slots
    }


def _dequantized_tensor(dq_output: str) -> str:
    """The activation tensor behind ``<tensor>_DequantizeLinear_Output``."""
    return dq_output.removesuffix("_DequantizeLinear_Output")


def _dequantize(helper, quantized: str, base: str, name: str, axis: int):
    return helper.make_node(
        "DequantizeLinear", [quantized, f"{base}_scale", f"{base}_zero_point"], [f"{name}_Output"], name=name, axis=axis
    )
