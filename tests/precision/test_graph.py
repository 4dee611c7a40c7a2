"""The graph surgery both conversions share, on small graphs built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import residual_block
from onnx import TensorProto, helper, numpy_helper

from resnext_deploy.precision.graph import load_prepared, save_model, tag_model, toposort, untie_initializers


def _model(nodes: list, initializers: list, outputs: tuple[str, ...] = ("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in outputs],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def _const(name: str, values, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def test_load_prepared_gives_each_identity_of_a_constant_its_own_initializer(tmp_path: Path) -> None:
    """The exporter shares equal constants through Identity nodes; each consumer gets its own initializer."""
    nodes = [
        helper.make_node("Identity", ["zero"], ["zero_a"], name="id_a"),
        helper.make_node("Identity", ["zero"], ["zero_b"], name="id_b"),
        helper.make_node("Add", ["x", "zero_a"], ["t"], name="add_a"),
        helper.make_node("Identity", ["t"], ["u"], name="id_t"),  # of a computed tensor: kept
        helper.make_node("Add", ["u", "zero_b"], ["y"], name="add_b"),
    ]
    path = tmp_path / "model.onnx"
    onnx.save(_model(nodes, [_const("zero", [0.0, 0.0]), _const("unused", [1.0])]), str(path))
    model = load_prepared(path)
    assert [node.name for node in model.graph.node] == ["add_a", "id_t", "add_b"]
    initializers = {init.name: numpy_helper.to_array(init).tolist() for init in model.graph.initializer}
    assert initializers == {"zero_a": [0.0, 0.0], "zero_b": [0.0, 0.0]}  # the shared one and the unused one are gone
    onnx.checker.check_model(model, full_check=True)


def test_untie_gives_blocked_nodes_their_own_copy_of_a_shared_float_constant() -> None:
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["a"], name="kept_fp32"),
        helper.make_node("Mul", ["a", "w"], ["b"], name="turns_fp16"),
        helper.make_node("Mul", ["b", "v"], ["c"], name="also_fp32"),
        helper.make_node("Reshape", ["c", "shape"], ["d"], name="reshape_fp32"),
        helper.make_node("Reshape", ["d", "shape"], ["y"], name="reshape_fp16"),
    ]
    initializers = [_const("w", [2.0, 3.0]), _const("v", [1.0, 1.0]), _const("shape", [2], np.int64)]
    model = _model(nodes, initializers)
    untie_initializers(model, {"kept_fp32", "also_fp32", "reshape_fp32"})
    inputs = {node.name: list(node.input) for node in model.graph.node}
    assert inputs["kept_fp32"] == ["x", "w_fp32"] and inputs["turns_fp16"] == ["a", "w"]
    assert inputs["also_fp32"] == ["b", "v"]  # only blocked nodes read it: nothing to untie
    assert inputs["reshape_fp32"] == ["c", "shape"]  # not a float: the converter leaves it alone anyway
    copies = {init.name: numpy_helper.to_array(init).tolist() for init in model.graph.initializer}
    assert copies["w_fp32"] == copies["w"] == [2.0, 3.0] and "v_fp32" not in copies and "shape_fp32" not in copies


def test_toposort_puts_producers_first_and_keeps_the_order_of_independent_nodes() -> None:
    model = residual_block(downsample=True)
    original = [node.name for node in model.graph.node]
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    toposort(model.graph)
    order = [node.name for node in model.graph.node]
    # Of the nodes that become ready together, the one that came first in the (reversed) list goes first.
    assert order == ["conv0", "relu0", "conv_sc", "conv1", "relu1", "conv2", *original[6:]]
    onnx.checker.check_model(model, full_check=True)


def test_toposort_refuses_a_cycle() -> None:
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Relu", ["b"], ["y"], name="out"),
    ]
    with pytest.raises(ValueError, match="the graph has a cycle"):
        toposort(_model(nodes, []).graph)


def test_save_model_checks_before_writing(tmp_path: Path) -> None:
    broken = _model([helper.make_node("Add", ["x", "missing"], ["y"], name="add")], [])
    with pytest.raises(onnx.checker.ValidationError):
        save_model(broken, tmp_path / "broken.onnx")
    assert not (tmp_path / "broken.onnx").exists()
    save_model(residual_block(), tmp_path / "model.onnx")
    assert onnx.load(str(tmp_path / "model.onnx")) == residual_block()


def test_tag_model_keeps_the_exports_metadata_and_adds_this_steps_decisions() -> None:
    model = residual_block()
    helper.set_model_props(model, {"resnext_deploy.arch": "block", "resnext_deploy.precision": "fp32"})
    tag_model(model, "int8", {"exclude": ["conv0"], "high_precision": "fp16", "weight_max": 63})
    assert {p.key: p.value for p in model.metadata_props} == {
        "resnext_deploy.arch": "block",
        "resnext_deploy.precision": "int8",
        "resnext_deploy.exclude": '["conv0"]',
        "resnext_deploy.high_precision": "fp16",
        "resnext_deploy.weight_max": "63",
    }
    assert model.producer_name == "resnext-deploy"
