"""FP16 ONNX following NVIDIA ModelOpt's AutoCast.

Everything in float16 with float32 graph I/O, except nodes whose inputs or outputs reached more than
``FP16_DATA_MAX`` in magnitude on the calibration data (ModelOpt's default ``data_max``, a 128x
margin below float16's 65504) or that hold an initializer beyond float16: those stay float32.
"""

from __future__ import annotations

import numpy as np

from .calibration import Calibration
from .graph import tag_model, toposort, untie_initializers
from .statistics import relu_outputs

FP16_DATA_MAX = 512.0
FP16_INIT_MAX = 65504.0


def overflow_nodes(model, calibration: Calibration, data_max: float = FP16_DATA_MAX) -> list[str]:
    """Nodes that must stay FP32: an input or output over ``data_max`` (or non-finite) on the calibration
    data, or a float initializer beyond float16's range.

    A tensor read only by ReLUs is not in the calibration (:mod:`~resnext_deploy.precision.statistics`):
    its magnitude is its ReLUs' outputs'. Its negative side may be large; computed in float16 it leaves the
    ReLU as 0 all the same, so it keeps nothing in FP32 (ModelOpt's AutoCast, which this follows, reads it).
    """
    from onnx import TensorProto, numpy_helper

    big_initializers = {
        init.name
        for init in model.graph.initializer
        if init.data_type == TensorProto.FLOAT and np.abs(numpy_helper.to_array(init)).max(initial=0) > FP16_INIT_MAX
    }
    before_relu = relu_outputs(model)

    def magnitudes(name: str) -> list[float]:
        """The tensor's largest ``|x|``; for one read only by ReLUs, its ReLUs' (its negative side leaves as 0)."""
        own = calibration.max_abs(name)
        if own is not None or name not in before_relu:
            return [] if own is None else [own]
        return [peak for peak in map(calibration.max_abs, before_relu[name]) if peak is not None]

    blocked = []
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            if name in big_initializers or any(not peak <= data_max for peak in magnitudes(name)):
                blocked.append(node.name)
                break
    return gate_closure(model, residual_closure(model, blocked))


def residual_closure(model, blocked: list[str]) -> list[str]:
    """``blocked`` plus the rest of every residual group (Conv -> Add -> ReLU) it touches.

    TensorRT fuses a Conv with the Add and ReLU that follow it; a Cast between them (one member FP32,
    another FP16) splits that fusion, so a group is kept in one dtype.
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    result = set(blocked)
    for add in model.graph.node:
        if add.op_type != "Add":
            continue
        group = {add.name}
        group.update(p.name for p in (producers.get(i) for i in add.input) if p is not None and p.op_type == "Conv")
        group.update(c.name for c in consumers.get(add.output[0], []) if c.op_type == "Relu")
        if len(group) > 1 and group & result:
            result |= group
    return [node.name for node in model.graph.node if node.name in result]


GATE_OPS = ("Sigmoid", "HardSigmoid")
# Shape-only nodes between a gate and its Mul (ECA's view and expand): walked through to find the gate.
SHAPE_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Expand", "Identity", "Transpose", "Flatten")


def gate_closure(model, blocked: list[str]) -> list[str]:
    """``blocked`` plus the rest of every ``Sigmoid -> Mul`` pair it touches (an SE/ECA gate, or SiLU).

    TensorRT runs the Sigmoid and the Mul it feeds as one pointwise kernel; a Cast between them (the Mul FP32
    because its other input is large, the Sigmoid FP16) splits it and moves the gate through float16 for nothing.
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    result = set(blocked)
    for mul in model.graph.node:
        if mul.op_type != "Mul":
            continue
        group = {mul.name}
        for name in mul.input:
            parent, between = producers.get(name), []
            while parent is not None and parent.op_type in SHAPE_OPS:
                between.append(parent.name)
                parent = producers.get(parent.input[0])
            if parent is not None and parent.op_type in GATE_OPS:
                group.update([parent.name, *between])
        if len(group) > 1 and group & result:
            result |= group
    return [node.name for node in model.graph.node if node.name in result]


def to_float16(model, blocked: set[str]):
    """Float16 everywhere but ``blocked`` nodes; float32 graph I/O; each Cast where types meet."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    untie_initializers(model, blocked)
    model = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(blocked))
    _drop_cast_round_trips(model.graph, blocked)
    toposort(model.graph)
    return model


def _drop_cast_round_trips(graph, blocked: set[str]) -> None:
    """Remove float32 -> float16 -> float32 Cast pairs the converter puts between two FP32 nodes.

    It casts every blocked node's output to float16 and back for a blocked consumer; a value kept
    in float32 because it is too large for float16 must not pass through float16 on the way.
    """
    from onnx import TensorProto

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producers = {name: node for node in graph.node for name in node.output}
    float_inputs = {v.name for v in graph.input if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    renamed: dict[str, str] = {}
    for node in graph.node:
        up = producers.get(node.input[0]) if cast_to(node) == TensorProto.FLOAT else None
        if up is None or cast_to(up) != TensorProto.FLOAT16:
            continue
        source = up.input[0]
        if source in float_inputs or (source in producers and producers[source].name in blocked):
            renamed[node.output[0]] = source
    graph_outputs = {v.name for v in graph.output}
    # a dropped Cast that produced a graph output: its FP32 source takes the output's name instead
    for output in [name for name in renamed if name in graph_outputs]:
        source = renamed.pop(output)
        graph.node.remove(next(n for n in graph.node if cast_to(n) is not None and n.output[0] == output))
        for node in graph.node:
            node.output[:] = [output if name == source else name for name in node.output]
            node.input[:] = [output if name == source else name for name in node.input]
        renamed = {k: (output if v == source else v) for k, v in renamed.items()}
    keep = [node for node in graph.node if not (cast_to(node) is not None and node.output[0] in renamed)]
    for node in keep:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    used = {name for node in keep for name in node.input} | graph_outputs
    keep = [n for n in keep if not (cast_to(n) == TensorProto.FLOAT16 and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(keep)
    produced = {name for node in keep for name in node.output}
    stale = [v for v in graph.value_info if v.name not in produced]
    for value in stale:
        graph.value_info.remove(value)


def fp16_model(model, calibration: Calibration, data_max: float = FP16_DATA_MAX):
    """The FP16 graph and the nodes kept FP32 because they would overflow float16 on the calibration data."""
    blocked = overflow_nodes(model, calibration, data_max)
    model = to_float16(model, set(blocked))
    tag_model(model, "fp16", {"fp32_nodes": blocked, "fp16_data_max": data_max})
    return model, blocked


# ----------------------------------------------------------------------------------------------
# INT8
