"""Where a typed file differs from model.onnx: its sites, read from the file's own nodes.

A site is a tensor at a fusion boundary, the tensors TensorRT keeps between fused layers: in an
INT8 file, each activation that a QuantizeLinear reads (the data input of a Conv/Gemm, a residual
Add's shortcut, a pooled input); in an FP16 file, the same boundaries (weighted layers' data inputs,
residual Add inputs) plus every tensor a Cast converts. The block outputs (the ReLU after a residual
Add) are sites of both, seen in the accumulated view. Nothing here changes a file: the passes run
on in-memory copies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
_REPEAT = re.compile(r"_\d+$")
CAST_SUFFIX = "_cast_to_fp16"  # the float16 converter renames a kept node's output so


@dataclass(frozen=True)
class Site:
    """One tensor where the typed file may lose precision, and the nodes that read it there.

    ``kind``: ``qdq`` (an INT8 Q/DQ pair on a weighted layer's input), ``residual`` (a Q/DQ pair on a
    residual Add's shortcut), ``pooled`` (the pair on a MaxPool's input), ``cast`` (an FP16 file's
    boundary), ``block output`` (no pair: the error that reaches the end of a residual block).
    ``scale`` is the INT8 step (the pair's scale); for FP16 the float16 spacing at the activation's
    calibrated or observed maximum is taken later, from the data.
    """

    tensor: str
    kind: str
    consumers: tuple[str, ...]
    depth: int  # position of the tensor's producer in model.onnx's node order (0: the graph input)
    precision: str  # what the site computes in: int8, fp16 or fp32 (kept)
    scale: float | None = None


def module_path(node_name: str) -> str:
    """The PyTorch module a node came from, as ``torch.onnx.export`` names nodes (``/layer1/layer1.0/conv1/Conv``).

    Each scope level holds the attribute name, dotted where it continues the level above
    (``layer1`` then ``layer1.0``); the last part is the op type. A name the exporter did not write
    (no leading slash) is returned as it is.
    """
    if not node_name.startswith("/"):
        return node_name
    parts: list[str] = []
    for part in node_name.strip("/").split("/")[:-1]:
        if parts and part.split(".")[0] == parts[-1].split(".")[-1]:
            parts[-1] = ".".join([*parts[-1].split(".")[:-1], part])
        else:
            parts.append(part)
    path = ".".join(parts)
    return _REPEAT.sub("", path) if path else node_name


def initializer_arrays(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _depths(float_model: Any) -> dict[str, int]:
    depth = {value.name: 0 for value in float_model.graph.input}
    for index, node in enumerate(float_model.graph.node, start=1):
        for name in node.output:
            depth[name] = index
    return depth


def _uncast(model: Any) -> dict[str, str]:
    """A Cast's output -> the tensor it converts (the float16 graph reads its float32 input through one)."""
    return {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "Cast"}


def _source(name: str, casts: dict[str, str]) -> str:
    """The float model's name of a typed tensor: through Casts, and without the float16 converter's suffix."""
    while name in casts:
        name = casts[name]
    return name.removesuffix(CAST_SUFFIX)


def block_outputs(float_model: Any) -> list[str]:
    """The outputs of the ReLU that follows each residual Add (two activations, no constant)."""
    graph = float_model.graph
    initializers = {init.name for init in graph.initializer}
    adds = {
        node.output[0]
        for node in graph.node
        if node.op_type == "Add" and len(node.input) == 2 and not set(node.input) & initializers
    }
    return [node.output[0] for node in graph.node if node.op_type == "Relu" and node.input[0] in adds]


def int8_sites(typed: Any, float_model: Any) -> list[Site]:
    """Each activation tensor the INT8 file quantizes (one site per tensor), then the block outputs it does not."""
    graph = typed.graph
    inits = initializer_arrays(typed)
    casts = _uncast(typed)
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    known = _depths(float_model)
    found: dict[str, Site] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        tensor = _source(node.input[0], casts)
        if tensor not in known or node.input[1] not in inits:
            continue
        dequantizers = [r for r in readers.get(node.output[0], []) if r.op_type == "DequantizeLinear"]
        consumers = [c for dq in dequantizers for c in readers.get(dq.output[0], [])]
        names = tuple(c.name for c in consumers)
        kind = "residual" if any(c.op_type == "Add" for c in consumers) else "qdq"
        if consumers and all(c.op_type == "MaxPool" for c in consumers):
            kind = "pooled"
        scale = float(np.asarray(inits[node.input[1]], dtype=np.float64).reshape(-1)[0])
        if tensor in found:  # a second pair for consumers kept in FP32: same tensor, same site
            old = found[tensor]
            found[tensor] = Site(tensor, old.kind, old.consumers + names, old.depth, "int8", old.scale)
        else:
            found[tensor] = Site(tensor, kind, names, known[tensor], "int8", scale)
    sites = list(found.values())
    sites += _block_sites(float_model, known, set(found), "fp16" if _is_half(typed) else "fp32")
    return sorted(sites, key=lambda site: site.depth)


def _is_half(model: Any) -> bool:
    from onnx import TensorProto

    return any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)


def _block_sites(float_model: Any, known: dict[str, int], taken: set[str], precision: str) -> list[Site]:
    readers = _readers(float_model)
    return [
        Site(name, "block output", tuple(readers.get(name, ())), known[name], precision)
        for name in block_outputs(float_model)
        if name not in taken
    ]


def _readers(model: Any) -> dict[str, list[str]]:
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    return readers


def fp16_sites(typed: Any, float_model: Any, fp32_nodes: Iterable[str]) -> list[Site]:
    """The FP16 file's boundaries: weighted layers' data inputs, residual Add inputs, cast tensors, block outputs."""
    graph = float_model.graph
    initializers = {init.name for init in graph.initializer}
    known = _depths(float_model)
    readers = _readers(float_model)
    kept = set(fp32_nodes)
    tensors: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and node.input[0] not in initializers:
            tensors.setdefault(node.input[0], "cast")
        if node.op_type == "Add" and not set(node.input) & initializers:
            for name in node.input:
                tensors.setdefault(name, "cast")
    for node in typed.graph.node:
        if node.op_type == "Cast" and node.input[0] in known:
            tensors.setdefault(node.input[0], "cast")
    for name in block_outputs(float_model):
        tensors[name] = "block output"
    sites = []
    for name, kind in tensors.items():
        consumers = tuple(readers.get(name, ()))
        precision = "fp32" if consumers and set(consumers) <= kept else "fp16"
        sites.append(Site(name, kind, consumers, known[name], precision))
    return sorted(sites, key=lambda site: site.depth)
