"""inspect's layer times: OpenVINO's counters say which convolutions really ran in INT8, a block whose Q/DQ pairs
are removed shows as float, and the rows map back to the ONNX nodes (fused layers grouped)."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from helpers import strip_activation_qdq
from test_inspect import typed_dir

from resnext_deploy.demo import DEMO_WEIGHTS
from resnext_deploy.inspect.latency import compare_layers, overhead_note, profile
from resnext_deploy.precision.int8 import graph_quantization

pytest.importorskip("openvino")
pytestmark = [
    pytest.mark.slow,  # compiled models in child processes
    pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet"),
]
INT8 = ("I8", "U8")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return typed_dir(tmp_path_factory.mktemp("latency") / "art", None)


def _int8_convs(directory: Path, name: str) -> tuple[set[str], set[str]]:
    """The Conv nodes OpenVINO ran in INT8, and those the file quantizes (read from its nodes)."""
    model = onnx.load(str(directory / name))
    ops = {node.name: node.op_type for node in model.graph.node}
    latency = profile(directory, name, "int8", "openvino", 16)
    ran = {n for layer in latency.layers if layer.precision.upper() in INT8 for n in layer.nodes if ops[n] == "Conv"}
    quantized = {n for n in graph_quantization(model).layers if ops[n] == "Conv"}
    return ran, quantized


def test_openvino_counts_the_convolutions_that_ran_in_int8(demo: Path) -> None:
    ran, quantized = _int8_convs(demo, "model.int8.onnx")
    assert len(quantized) == 13 and ran == quantized
    fp32 = profile(demo, "model.onnx", "fp32", "openvino", 16)
    int8 = profile(demo, "model.int8.onnx", "int8", "openvino", 16)
    assert fp32.int8_weighted == 0 and int8.int8_weighted >= 13
    assert all(layer.nodes for layer in fp32.layers if layer.weighted)  # every weighted layer maps to ONNX nodes
    fused = next(layer for layer in fp32.layers if "/conv1/Conv" in layer.nodes)
    assert "/relu/Relu" in fused.nodes  # Conv + ReLU, one OpenVINO layer
    assert {node for node, _a, _b in compare_layers(fp32, int8)} >= {"/conv1/Conv", "/fc/Gemm"}
    assert f"{int8.int8_weighted} of {int8.weighted} weighted layers in INT8" in overhead_note(int8)


def test_a_block_without_its_qdq_pairs_runs_in_float(demo: Path, tmp_path: Path) -> None:
    """Test-only file: layer3's inner activations lose their pairs; its conv2 and conv3 then run in float."""
    directory = Path(shutil.copytree(demo, tmp_path / "stripped"))
    removed = strip_activation_qdq(directory / "model.int8.onnx", lambda tensor: tensor.startswith("/layer3/"))
    assert removed
    ran, _quantized = _int8_convs(directory, "model.int8.onnx")
    block = {"/layer3/layer3.0/conv2/Conv", "/layer3/layer3.0/conv3/Conv"}
    assert not block & ran
    assert {"/layer1/layer1.0/conv2/Conv", "/layer2/layer2.0/conv3/Conv"} <= ran  # the other blocks stay INT8
