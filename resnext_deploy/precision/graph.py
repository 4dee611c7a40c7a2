"""Graph surgery shared by the FP16 and INT8 conversions: loading, sorting, saving and tagging ONNX models."""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..artifacts import load_onnx


def load_prepared(path: str | Path):
    """Load model.onnx with every Identity of an initializer folded into its own initializer.

    The exporter shares equal constants (e.g. the zero biases of freshly folded BatchNorms) through
    Identity nodes; giving each its own initializer keeps constants visible as constants and lets
    one consumer stay FP32 while another turns FP16.
    """
    from onnx import numpy_helper

    model = load_onnx(path)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            initializers[node.output[0]] = graph.initializer[-1]
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph)
    return model


def at_least_opset(model, opset: int):
    """``model`` converted to ``opset`` when its default-domain opset is older (else itself), metadata kept:
    Q/DQ with per-channel axes and INT32 biases need a recent opset, and the converter drops metadata_props."""
    import onnx

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    props = list(model.metadata_props)
    model = onnx.version_converter.convert_version(model, opset)
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    return model


def drop_unused_initializers(graph) -> None:
    """Remove the initializers no node reads (left behind when a step rewires its inputs)."""
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def node_attribute(node, name: str, default: Any) -> Any:
    """The value of a node's attribute ``name``, or ``default`` when the node does not set it."""
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def untie_initializers(model, blocked: set[str]) -> None:
    """Give blocked nodes their own copy of a float initializer they share with unblocked ones."""
    from onnx import TensorProto

    users: dict[str, set[bool]] = defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            users[name].add(node.name in blocked)
    shared = {
        init.name: init
        for init in model.graph.initializer
        if init.data_type == TensorProto.FLOAT and users.get(init.name) == {True, False}
    }
    for name, init in shared.items():
        copy = model.graph.initializer.add()
        copy.CopyFrom(init)
        copy.name = f"{name}_fp32"
        for node in model.graph.node:
            if node.name in blocked:
                node.input[:] = [copy.name if i == name else i for i in node.input]


def toposort(graph) -> None:
    """Order nodes so that producers come first (the float16 converter appends its Casts at the end)."""
    nodes = list(graph.node)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    waiting = [0] * len(nodes)
    consumers: dict[int, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        parents = {producer[name] for name in node.input if name in producer}
        waiting[i] = len(parents)
        for parent in parents:
            consumers[parent].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for child in consumers[i]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def save_model(model, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def tag_model(model, precision: str, extra: dict[str, Any]) -> None:
    """Keep model.onnx's metadata and add what this step decided."""
    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props["resnext_deploy.precision"] = precision
    props.update({f"resnext_deploy.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    onnx.helper.set_model_props(model, props)
    model.producer_name = "resnext-deploy"


# ----------------------------------------------------------------------------------------------
# FP16
