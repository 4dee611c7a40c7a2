"""Empirical bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019, section 4.2; NNCF's and
AIMET's bias correction): the INT8 layer's output made right on average.

Quantizing a layer's weights (7 bits, per output channel) and its input (8 bits, per tensor) moves
the mean of its output: the rounding of a channel's weights rarely sums to zero, and the clip of
an input's outliers only ever pulls toward zero. The following layers take that shift for signal.
For each quantized Conv and Gemm the shift is measured on the calibration images and subtracted
from the layer's bias (one is added where there is none). Per output channel ``k``, with ``m_c``
and ``q_c`` the means of input channel ``c`` and of its INT8 value (over images and positions),
and ``S[k, c]`` / ``Sq[k, c]`` the sums of the float / INT8 weights of ``k`` that read ``c``:

    shift_k = sum_c Sq[k, c] q_c - S[k, c] m_c

Every tap is taken to see the channel's mean (zero padding at the borders is ignored, as in Nagel
et al.); in a grouped Conv, output ``k`` reads the channels of its own group only. Each layer is
corrected for its own quantization on float inputs; the layers before it correct theirs. Where the
weights and the input are exactly representable the shift is 0 and the model is unchanged.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ..data import Dataset
from .calibration import Calibration
from .graph import drop_unused_initializers, node_attribute
from .int8 import INT8_MAX, activation_scale, qdq_plan, quantize_weight
from .statistics import activation_tensors, batch_size, run_batches

CORRECTED_OPS = ("Conv", "Gemm")  # the weighted layers with a bias input (MatMul has none)


def bias_shifts(
    model, calibration: Calibration, dataset: Dataset, exclude: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Per quantized Conv/Gemm of ``model``, the amount its bias must drop so that its INT8 output is right on average.

    ``model`` is a float ONNX ModelProto (model.onnx prepared, or its equalized graph), not changed;
    ``calibration`` holds its ranges with the method the INT8 graph will use; ``exclude``: the globs
    kept out of INT8, as for :func:`~resnext_deploy.precision.int8.qdq_plan`. The shifts are measured
    once and applied to whichever layers a candidate quantizes (:func:`correct_biases`).
    """
    from onnx import numpy_helper

    plan = qdq_plan(model, calibration, exclude)
    nodes = {node.name: node for node in model.graph.node}
    layers = [nodes[name] for name in plan.weighted if _correctable(nodes[name])]
    scales = {node.input[0]: float(activation_scale(calibration.amax(node.input[0]))) for node in layers}
    means = input_means(model, scales, dataset)
    initializers = {init.name: init for init in model.graph.initializer}
    shifts = {}
    for node in layers:
        rows = _rows(node, numpy_helper.to_array(initializers[node.input[1]]))
        q, scale = quantize_weight(rows.reshape(len(rows), -1), 0)
        dequantized = (q.astype(np.float64) * scale.astype(np.float64)[:, None]).reshape(rows.shape)
        shift = output_shift(rows, dequantized, *means[node.input[0]], node_attribute(node, "group", 1))
        scale_out = node_attribute(node, "alpha", 1.0) / node_attribute(node, "beta", 1.0)  # Gemm: alpha A B + beta C
        shifts[node.name] = shift * scale_out
    return shifts


def correct_biases(model, shifts: dict[str, np.ndarray], layers: Collection[str]) -> list[str]:
    """Subtract its shift from the bias of each of ``layers`` that has one (``model`` changed in place); those layers.

    A layer without a bias gets one; each corrected bias is a new initializer, so one shared with
    another node is never changed behind it.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    corrected = [node for node in graph.node if node.name in shifts and node.name in layers]
    for node in corrected:
        dtype = numpy_helper.to_array(initializers[node.input[1]]).dtype
        bias = numpy_helper.to_array(initializers[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0.0
        name = f"{node.name}_bias_corrected"
        graph.initializer.append(numpy_helper.from_array(np.asarray(bias - shifts[node.name], dtype), name))
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)
    drop_unused_initializers(graph)
    return [node.name for node in corrected]


def output_shift(
    weight: np.ndarray, dequantized: np.ndarray, mean: np.ndarray, qmean: np.ndarray, groups: int = 1
) -> np.ndarray:
    """Per output channel, the mean output of the INT8 layer minus the float one (the formula in the module doc).

    ``weight`` and ``dequantized`` are ``[K, C / groups, taps...]``; ``mean`` and ``qmean`` have one value per
    input channel ``C``.
    """
    outputs, per_group = weight.shape[:2]
    sums = weight.reshape(outputs, per_group, -1).sum(axis=2, dtype=np.float64)
    qsums = dequantized.reshape(outputs, per_group, -1).sum(axis=2, dtype=np.float64)
    group = np.arange(outputs) // (outputs // groups)
    channel = group[:, None] * per_group + np.arange(per_group)[None, :]  # the input channel of each column
    return (qsums * qmean[channel]).sum(axis=1) - (sums * mean[channel]).sum(axis=1)


def input_means(model, scales: dict[str, float], dataset: Dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per channel (axis 1), the mean of each tensor in ``scales`` and of its INT8 value at that scale."""
    graph_inputs = {value.name for value in model.graph.input}
    fetched = [name for name in scales if name not in graph_inputs]
    found = activation_tensors(model)
    sums: dict[str, np.ndarray] = {}
    qsums: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(scales, 0)
    what = f"measuring the INT8 output shift of {len(scales)} layers on {dataset.count} samples"
    size = batch_size(found.per_sample)
    for images, values in run_batches(model, fetched, dataset, size, what, "the float graph", shapes=found.shapes):
        tensors = dict(zip(fetched, values, strict=True))
        tensors.update({name: images for name in graph_inputs & scales.keys()})
        for name, value in tensors.items():
            axes = tuple(i for i in range(value.ndim) if i != 1)
            quantized = np.clip(np.round(value / scales[name]), -INT8_MAX, INT8_MAX) * scales[name]
            sums[name] = sums.get(name, 0.0) + value.sum(axis=axes, dtype=np.float64)
            qsums[name] = qsums.get(name, 0.0) + quantized.sum(axis=axes, dtype=np.float64)
            counts[name] += value.size // value.shape[1]
    return {name: (sums[name] / counts[name], qsums[name] / counts[name]) for name in scales}


def _correctable(node) -> bool:
    """A Conv, or a Gemm reading ``[N, K]`` whose bias counts (``transA`` 0, ``beta`` not 0)."""
    if node.op_type == "Gemm":
        return node_attribute(node, "transA", 0) == 0 and node_attribute(node, "beta", 1.0) != 0
    return node.op_type in CORRECTED_OPS


def _rows(node, weight: np.ndarray) -> np.ndarray:
    """The weight as ``[outputs, inputs per group, taps...]``: a Gemm's ``B`` is transposed unless ``transB``."""
    if node.op_type == "Gemm" and not node_attribute(node, "transB", 0):
        return weight.T
    return weight
