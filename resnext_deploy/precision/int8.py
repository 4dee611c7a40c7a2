"""INT8 explicit Q/DQ ONNX following TensorRT's placement recommendations and what ModelOpt emits for ResNets.

* every Conv and the classifier (Gemm/MatMul): a DequantizeLinear feeds both the data input
  (per-tensor scale from calibration) and the weight (INT8 initializer, per-output-channel scales);
* a residual Add gets Q/DQ on its shortcut input only, the Conv branch stays float, so TensorRT fuses
  Conv + Add(DQ residual) into one INT8 kernel (ModelOpt's ``build_non_residual_input_map``: the
  input on the longer path from the common ancestor is the Conv branch);
* symmetric INT8: every zero point is an int8 0, activations in [-127, 127], weights in [-63, 63]
  (7 bits, NNCF's ``OverflowFix.ENABLE``): see ``WEIGHT_MAX``;
* biases stay float and are never quantized (TensorRT rejects a DequantizeLinear on an INT32 bias:
  onnx/onnx-tensorrt#850; ONNX Runtime's quantize_static quantizes them: microsoft/onnxruntime#17738);
* no Q/DQ on Conv outputs (TensorRT fuses the following ReLU/Add and quantizes at the next Q);
* a MaxPool whose output is quantized gets a pair on its input too, with the output's scale (max
  commutes with quantization, so nothing changes numerically): the pooling then runs on int8 data,
  as in ModelOpt's placement; TensorRT propagates Q/DQ across MaxPool either way;
* an SE (or ECA) block's gate, ``Mul(x, Sigmoid(...))``, ends the main branch as a Conv does: the residual
  Add after it takes Q/DQ on its shortcut input (the gate's own Sigmoid and Mul stay float; TensorRT runs
  them as one pointwise kernel);
* an AveragePool (the ``d`` variants' avg-pool downsample) that reads a tensor already quantized for another
  consumer, and whose output is quantized, reads that tensor's DequantizeLinear: TensorRT fuses
  DQ -> AveragePool -> Q into an INT8 pooling, at no new scale;
* what is not quantized runs in float16 (``high_precision="fp16"``) or float32, graph I/O float32.
"""

from __future__ import annotations

import fnmatch
import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError
from .calibration import Calibration
from .fp16 import FP16_DATA_MAX, GATE_OPS, SHAPE_OPS, overflow_nodes, to_float16
from .graph import at_least_opset, drop_unused_initializers, node_attribute, tag_model, toposort

INT8_MAX = 127
# Weights use 7 bits so that OpenVINO runs the file correctly on CPUs without VNNI (AVX2, AVX-512 before
# Cascade Lake): their int8 convolutions add 128 to the signed int8 activations (u8, up to 255) and sum
# u8 x s8 products in pairs into a saturating int16 (vpmaddubsw). 2 * 255 * 63 fits in 32767; with
# 8-bit weights the sums clip and the demo model lost 16 points of accuracy. Same file on every CPU
# and GPU (the machine that makes it need not be the one that runs it); the cost is one bit of weight precision.
WEIGHT_MAX = 63
QDQ_OPSET = 19  # DequantizeLinear with float16 scales (and output) needs opset 19
HIGH_PRECISIONS = ("fp16", "fp32")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class QdqPlan:
    """Where INT8 goes: weighted nodes, the activation tensors that get Q/DQ, and for which consumers."""

    weighted: list[str] = field(default_factory=list)
    residual_adds: list[str] = field(default_factory=list)
    consumers: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # tensor -> (node, input index)
    pooled: dict[str, str] = field(default_factory=dict)  # MaxPool node -> its quantized output (the scale it uses)

    @property
    def sites(self) -> list[str]:
        """Every Q/DQ site by node name: the weighted layers, then the residual Adds."""
        return [*self.weighted, *self.residual_adds]


@dataclass(frozen=True)
class GraphQuantization:
    """What a Q/DQ graph actually quantizes, read from its nodes rather than from any record."""

    layers: frozenset[str]  # weighted nodes whose data and weight inputs both come from a DequantizeLinear
    tensors: frozenset[str]  # activation tensors (not initializers) that feed a QuantizeLinear


def graph_quantization(model) -> GraphQuantization:
    """Read which layers and activation tensors ``model`` (an ONNX ModelProto) really runs in INT8.

    The one definition of what an INT8 file quantizes: the build records it from the graph it writes and
    ``verify`` reads the file with it, so the file, its manifest entry and verify agree by construction
    (the nodes the FP16-range rule keeps in FP32, and the sites the search keeps out, included).
    """
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    dequantized = {name for node in graph.node if node.op_type == "DequantizeLinear" for name in node.output}
    layers = frozenset(
        node.name
        for node in graph.node
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and {node.input[0], node.input[1]} <= dequantized
    )
    casts = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Cast"}

    def uncast(name: str) -> str:  # the float16 graph reads float32 tensors (the graph input) through a Cast
        while name in casts:
            name = casts[name]
        return name

    tensors = frozenset(
        uncast(node.input[0])
        for node in graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers
    )
    return GraphQuantization(layers, tensors)


def quantization_shortfall(model, layers: Sequence[str] | None, tensors: Sequence[str] | None) -> str | None:
    """Why ``model`` is not the INT8 file its manifest records (``layers``, ``tensors``; None: not recorded).

    A file with no activation QuantizeLinear computes in float whatever it is called; one that
    quantizes fewer layers or tensors than recorded is not the file that was checked when it was made.
    """
    found = graph_quantization(model)
    if not found.tensors:
        return "the INT8 file quantizes no activation (no QuantizeLinear on any tensor): it is not INT8"
    problems = []
    for what, recorded, present in (("layers", layers, found.layers), ("activation tensors", tensors, found.tensors)):
        missing = sorted(set(recorded or ()) - present)
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            problems.append(
                f"{len(missing)} of the {len(recorded or ())} {what} its manifest records are not INT8 ({shown})"
            )
    return "; ".join(problems) or None


# ----------------------------------------------------------------------------------------------
# The entry point


def qdq_plan(
    model, calibration: Calibration, exclude: tuple[str, ...] = (), only: Collection[str] | None = None
) -> QdqPlan:
    """Decide which nodes and tensors get Q/DQ (see the module docstring for the rules).

    The placement is decided on the whole graph; ``exclude`` (globs) and ``only`` (node names) then
    remove Q/DQ sites, a site being a weighted node (its weight and data input) or a residual Add
    (its shortcut input). Excluding a Conv therefore never moves the Add's pair to the other input.
    """
    graph = model.graph
    names = [node.name for node in graph.node]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            example = next((n for n in names if "conv" in n.lower()), names[0] if names else "")
            raise BadInputError(f"--exclude {pattern!r} matches no node; node names look like {example!r}")
    excluded = {name for name in names if any(fnmatch.fnmatchcase(name, p) for p in exclude)}
    if only is not None:
        excluded |= set(names) - set(only)
    initializers = {init.name for init in graph.initializer}
    weighted = [
        node
        for node in graph.node
        if node.op_type in WEIGHTED_OPS
        and len(node.input) > 1
        and node.input[1] in initializers
        and node.input[0] not in initializers
        and _weight_axis(node) is not None
    ]
    quantized = {node.name for node in weighted}
    producers = {name: node for node in graph.node for name in node.output}
    slots = [(node.name, 0, node.input[0]) for node in weighted]
    residual_adds = []
    for node in graph.node:
        if node.op_type == "Add":
            index = _residual_input(node, producers, quantized, initializers)
            if index is not None:
                residual_adds.append(node.name)
                slots.append((node.name, index, node.input[index]))
    plan = QdqPlan(
        weighted=[node.name for node in weighted if node.name not in excluded],
        residual_adds=[name for name in residual_adds if name not in excluded],
    )
    consumers: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for node_name, index, tensor in slots:
        if node_name not in excluded:
            consumers[tensor].append((node_name, index))
    for tensor in consumers:
        if not math.isfinite(calibration.amax(tensor)):
            raise BadInputError(f"model.onnx computes non-finite values in {tensor} on the calibration data")
    for node in graph.node:  # the avg-pool downsample of the `d` variants: int8 in, int8 out
        if node.op_type == "AveragePool" and node.output[0] in consumers and node.input[0] in consumers:
            consumers[node.input[0]].append((node.name, 0))
    plan.consumers = dict(consumers)
    plan.pooled = {
        node.name: node.output[0]
        for node in graph.node
        if node.op_type == "MaxPool" and node.output[0] in consumers and node.input[0] not in consumers
    }
    return plan


def _weight_axis(node) -> int | None:
    """The output-channel axis of a weight: Conv [K, C, kh, kw] and Gemm with transB [N, K]: 0; [K, N]: 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if node_attribute(node, "transB", 0) else 1
    return 1  # MatMul


def _residual_input(add, producers: dict, quantized: set[str], initializers: set[str]) -> int | None:
    """The index of the residual Add input that takes Q/DQ (the shortcut), or None if it is no residual Add.

    The other input must come straight from a quantized Conv, so that TensorRT fuses Conv + Add.
    When both come from Convs (a downsampling block), the Conv on the longer path from the common
    ancestor is the block's main branch; the shortcut Conv's output gets Q/DQ.
    """
    if len(add.input) != 2 or any(name in initializers for name in add.input):
        return None
    parents = [producers[name] for name in add.input if name in producers]
    if len(parents) != 2:  # a graph input
        return None
    is_conv = [(p.op_type == "Conv" and p.name in quantized) or is_gate(p, producers) for p in parents]
    if not any(is_conv):
        return None
    if all(is_conv):
        depth = _depths_to_common_ancestor(parents[0], parents[1], producers)
        if depth is None or depth[0] == depth[1]:
            return None
        main = 0 if depth[0] > depth[1] else 1
    else:
        main = 0 if is_conv[0] else 1
        if parents[main].name in _ancestors(parents[1 - main], producers):
            return None  # the Conv also feeds the other input: not a shortcut
    return 1 - main


def is_gate(node, producers: dict) -> bool:
    """Whether ``node`` is an attention gate's ``Mul(x, Sigmoid(s))`` (SE, ECA): ``s`` computed from more than x.

    SiLU is ``Mul(x, Sigmoid(x))``, an activation rather than a gate: its Sigmoid reads the Mul's other input.
    """
    if node.op_type != "Mul" or len(node.input) != 2:
        return False
    for index, name in enumerate(node.input):
        parent = producers.get(name)
        while parent is not None and parent.op_type in SHAPE_OPS:
            parent = producers.get(parent.input[0])
        if parent is not None and parent.op_type in GATE_OPS and parent.input[0] != node.input[1 - index]:
            return True
    return False


def _ancestors(node, producers: dict) -> dict[str, int]:
    """Every ancestor node's name with its distance (in nodes) from ``node``, ``node`` itself at 0."""
    distance = {node.name: 0}
    frontier = [node]
    while frontier:
        following = []
        for current in frontier:
            for name in current.input:
                parent = producers.get(name)
                if parent is not None and parent.name not in distance:
                    distance[parent.name] = distance[current.name] + 1
                    following.append(parent)
        frontier = following
    return distance


def _depths_to_common_ancestor(a, b, producers: dict) -> tuple[int, int] | None:
    up_a, up_b = _ancestors(a, producers), _ancestors(b, producers)
    common = set(up_a) & set(up_b)
    if not common:
        return None
    lowest = min(common, key=lambda name: up_a[name] + up_b[name])
    return up_a[lowest], up_b[lowest]


def _scale_floor(dtype) -> float:
    """The smallest scale allowed: the type's smallest normal number, so no scale is 0, subnormal or 1/0."""
    return float(np.finfo(dtype).tiny)


def quantize_weight(
    weight: np.ndarray, axis: int, scale_dtype=np.float32, qmax: int = WEIGHT_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel INT8 in [-qmax, qmax]: ``(q, scale)`` with ``q * scale ~= weight`` along ``axis``.

    A dead (all-zero) channel gets the floor scale rather than 0, and its values quantize to 0.
    """
    channels = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    amax = np.abs(channels).max(axis=1).astype(np.float64)
    scale = np.maximum(amax / qmax, _scale_floor(scale_dtype)).astype(scale_dtype)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.astype(np.float64).reshape(shape)), -qmax, qmax)
    return q.astype(np.int8), scale


def activation_scale(amax: float, scale_dtype=np.float32) -> np.ndarray:
    """The per-tensor scale that maps ``amax`` to 127, floored so that it is never 0."""
    return np.asarray(max(amax / INT8_MAX, _scale_floor(scale_dtype)), dtype=scale_dtype)


def int8_model(
    model,
    calibration: Calibration,
    exclude: tuple[str, ...] = (),
    high_precision: str = "fp16",
    data_max: float = FP16_DATA_MAX,
    only: Collection[str] | None = None,
):
    """The Q/DQ graph, the nodes kept FP32, and the plan it followed (``exclude``, ``only``: see :func:`qdq_plan`)."""
    from onnx import helper, numpy_helper

    if high_precision not in HIGH_PRECISIONS:
        raise BadInputError(f"--high-precision must be one of {', '.join(HIGH_PRECISIONS)}, got {high_precision!r}")
    model = at_least_opset(model, QDQ_OPSET)
    plan = qdq_plan(model, calibration, exclude, only)
    half = high_precision == "fp16"
    blocked = set(overflow_nodes(model, calibration, data_max)) if half else set()
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    initializers = {init.name: init for init in graph.initializer}
    new_nodes: list = []
    new_inits: list = []

    def scale_type(node_names) -> type:
        return np.float16 if half and not (set(node_names) & blocked) else np.float32

    pooled_slots = {nodes[pool].input[0]: (output, [(pool, 0)]) for pool, output in plan.pooled.items()}
    scaled_slots = {tensor: (tensor, slots) for tensor, slots in plan.consumers.items()} | pooled_slots
    for tensor, (scaled_by, slots) in scaled_slots.items():
        # consumers kept FP32 get their own pair, with float32 scales, so each DQ feeds its node directly
        groups: dict[bool, list[tuple[str, int]]] = defaultdict(list)
        for slot in slots:
            groups[slot[0] in blocked].append(slot)
        for is_blocked, group in groups.items():
            base = f"{tensor}_fp32" if is_blocked and len(groups) > 1 else tensor
            dtype = np.float32 if is_blocked or not half else np.float16
            scale = activation_scale(calibration.amax(scaled_by), dtype)
            new_inits += [
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(np.zeros((), np.int8), f"{base}_zero_point"),
            ]
            quant, dequant = f"{base}_QuantizeLinear", f"{base}_DequantizeLinear"
            zero = [f"{base}_scale", f"{base}_zero_point"]
            new_nodes += [
                helper.make_node("QuantizeLinear", [tensor, *zero], [f"{quant}_Output"], name=quant),
                helper.make_node("DequantizeLinear", [f"{quant}_Output", *zero], [f"{dequant}_Output"], name=dequant),
            ]
            if is_blocked:
                blocked.update({quant, dequant})
            for node_name, index in group:
                nodes[node_name].input[index] = f"{dequant}_Output"

    for node_name in plan.weighted:
        node = nodes[node_name]
        weight_name = node.input[1]
        axis = _weight_axis(node)
        assert axis is not None  # qdq_plan weights only nodes with one
        weight = numpy_helper.to_array(initializers[weight_name])
        q, scale = quantize_weight(weight, axis, scale_type([node_name]))
        base = f"{weight_name}_{node_name}" if sum(weight_name in n.input for n in graph.node) > 1 else weight_name
        dequant = f"{base}_DequantizeLinear"
        new_inits += [
            numpy_helper.from_array(q, f"{base}_quantized"),
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point"),
        ]
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                [f"{dequant}_Output"],
                name=dequant,
                axis=axis,
            )
        )
        if node_name in blocked:
            blocked.add(dequant)
        node.input[1] = f"{dequant}_Output"

    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    drop_unused_initializers(graph)
    fp32_nodes = sorted(name for name in blocked if name in nodes)
    if half:
        model = to_float16(model, blocked)
    else:
        toposort(model.graph)
    info = {"high_precision": high_precision, "fp32_nodes": fp32_nodes, "exclude": list(exclude)}
    tag_model(model, "int8", {**info, "weight_max": WEIGHT_MAX})
    return model, fp32_nodes, plan
