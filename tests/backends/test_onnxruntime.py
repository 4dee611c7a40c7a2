"""The one ONNX Runtime session factory: every form of model, the project's options, a refusal as bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from resnext_deploy.backends.onnxruntime import open_session, spinning_of
from resnext_deploy.errors import BadInputError


def relu_model():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_path_bytes_or_a_model_open_the_same_session(tmp_path: Path) -> None:
    model = relu_model()
    path = tmp_path / "relu.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.array([[-1.0, 0.0, 2.0, -3.0]], dtype=np.float32)
    for given in (path, str(path), model.SerializeToString(), model):
        (y,) = open_session(given).run(None, {"x": x})
        np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_the_session_runs_with_what_it_was_asked_for(tmp_path: Path) -> None:
    given = open_session(
        relu_model(), threads=2, allow_spinning=False, optimize=False, priority_order=True
    ).get_session_options()
    assert given.intra_op_num_threads == 2 and not spinning_of(given)
    assert given.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert given.execution_order == ort.ExecutionOrder.PRIORITY_BASED
    default = open_session(relu_model()).get_session_options()
    assert default.graph_optimization_level != given.graph_optimization_level
    assert default.execution_order == ort.ExecutionOrder.DEFAULT
    profiled = open_session(relu_model(), profile_prefix=tmp_path / "ort")
    profiled.run(None, {"x": np.zeros((1, 4), dtype=np.float32)})
    assert Path(profiled.end_profiling()).parent == tmp_path


def test_a_model_onnx_runtime_cannot_load_is_bad_input_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an ONNX file")
    with pytest.raises(BadInputError, match=f"ONNX Runtime cannot load {broken}: "):
        open_session(broken)
    with pytest.raises(BadInputError, match="cannot load calib.onnx: "):
        open_session(b"not an ONNX file", origin="calib.onnx")
    with pytest.raises(BadInputError, match="cannot load the ONNX model: "):
        open_session(b"not an ONNX file")
