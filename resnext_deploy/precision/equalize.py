"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019): a function-preserving rescale that keeps outlier layers in INT8.

In ``Conv_a -> ReLU -> Conv_b`` (the BatchNorm is folded into Conv_a by the export), output channel
``c`` of Conv_a can be divided by ``s_c > 0`` and input channel ``c`` of Conv_b multiplied by it:
ReLU commutes with a positive factor, so the model computes the same function. Choosing
``s_c = sqrt(r1_c / r2_c)`` (``r1_c``: the range of Conv_a's weights for output channel ``c``,
``r2_c``: that of Conv_b's weights reading channel ``c``) gives both the same range, ``sqrt(r1_c
r2_c)``. A channel made large upstream and small downstream, which is what an activation with
outlier channels looks like once BatchNorm is folded, comes back to the others' range: the
per-tensor activation scale and the per-channel weight scales then lose nothing to it.

Grouped Conv_b (ResNeXt's conv2) is handled: input channel ``c`` is read by the output channels of
its group only. In a ResNeXt bottleneck, conv1 -> conv2 and conv2 -> conv3 are both pairs; they share
conv2, so sweeps repeat until the scales settle (Nagel et al. iterate the same way).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .graph import node_attribute

SWEEPS = 8  # sweeps over all pairs; the scales settle in a few
SETTLED = 1e-3  # stop when no scale moves by more than this (relative)


def equalization_pairs(model) -> list[tuple[str, str]]:
    """The ``(Conv_a, Conv_b)`` names joined by one ReLU, each tensor on the way read by nothing else."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    consumers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers[name].append((node, index))
    uses: defaultdict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            uses[name] += 1

    def only_reader(tensor: str) -> tuple[Any, int] | None:
        readers = consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in outputs else None

    pairs = []
    for conv in graph.node:
        if not _own_weights(conv, initializers, uses):
            continue
        relu = only_reader(conv.output[0])
        if relu is None or relu[0].op_type != "Relu":
            continue
        following = only_reader(relu[0].output[0])
        if following is None or following[1] != 0 or not _own_weights(following[0], initializers, uses):
            continue
        pairs.append((conv.name, following[0].name))
    return pairs


def _own_weights(node, initializers: set[str], uses: dict[str, int]) -> bool:
    """A Conv whose weight (and bias) are initializers that nothing else reads, so rescaling them changes only it."""
    return (
        node.op_type == "Conv"
        and len(node.input) > 1
        and all(name in initializers and uses[name] == 1 for name in node.input[1:3] if name)
    )


def _group(node) -> int:
    return node_attribute(node, "group", 1)


def equalize(model) -> list[tuple[str, str]]:
    """Equalize every pair of ``model`` (an ONNX ModelProto, changed in place); return the pairs rescaled."""
    from onnx import numpy_helper

    pairs = equalization_pairs(model)
    if not pairs:
        return []
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    initializers = {init.name: init for init in graph.initializer}
    arrays = {
        name: numpy_helper.to_array(initializers[name]).astype(np.float64)
        for a, b in pairs
        for name in [*nodes[a].input[1:3], nodes[b].input[1]]
        if name
    }
    for _sweep in range(SWEEPS):
        moved = 0.0
        for a, b in pairs:
            first, second = nodes[a], nodes[b]
            scale = _pair_scale(arrays[first.input[1]], arrays[second.input[1]], _group(second))
            if scale is None:
                continue
            arrays[first.input[1]] /= scale.reshape(-1, *[1] * (arrays[first.input[1]].ndim - 1))
            if len(first.input) > 2 and first.input[2]:
                arrays[first.input[2]] /= scale
            arrays[second.input[1]] = _scale_inputs(arrays[second.input[1]], scale, _group(second))
            moved = max(moved, float(np.abs(scale - 1.0).max()))
        if moved < SETTLED:
            break
    for name, array in arrays.items():
        dtype = numpy_helper.to_array(initializers[name]).dtype
        initializers[name].CopyFrom(numpy_helper.from_array(array.astype(dtype), name))
    return pairs


def _pair_scale(first: np.ndarray, second: np.ndarray, groups: int) -> np.ndarray | None:
    """``s_c = sqrt(r1_c / r2_c)`` per channel between the two Convs; 1 where a range is 0; None if shapes differ."""
    channels = first.shape[0]
    per_group = second.shape[1]
    if per_group * groups != channels or second.shape[0] % groups:
        return None
    r1 = np.abs(first).reshape(channels, -1).max(axis=1)
    grouped = np.abs(second).reshape(groups, second.shape[0] // groups, per_group, -1)
    r2 = grouped.max(axis=(1, 3)).reshape(channels)
    usable = (r1 > 0) & (r2 > 0)
    return np.where(usable, np.sqrt(np.where(usable, r1, 1.0) / np.where(usable, r2, 1.0)), 1.0)


def _scale_inputs(weight: np.ndarray, scale: np.ndarray, groups: int) -> np.ndarray:
    """Multiply the weights reading input channel ``c`` by ``scale[c]`` (grouped: within its group's outputs)."""
    out, per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out // groups, per_group, -1)
    grouped = grouped * scale.reshape(groups, 1, per_group, 1)
    return grouped.reshape(weight.shape)
