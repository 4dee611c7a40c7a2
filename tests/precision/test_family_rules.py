"""What timm's ResNeXt family adds to the graph, and the precision rules for it (no timm needed).

A small exported network holds one of each: an SE block (ReduceMean -> Conv -> ReLU -> Conv -> Sigmoid ->
Mul) before an identity-shortcut residual Add, a ``d``-variant downsample (AvgPool -> 1x1 Conv) beside a
deeper main branch, and a SiLU (``x * sigmoid(x)``) after the second Add.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from helpers import calibration_of, run_onnx
from torch import nn

from resnext_deploy.precision.fp16 import overflow_nodes
from resnext_deploy.precision.int8 import graph_quantization, int8_model, is_gate, qdq_plan


class _FamilyBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 8, 1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.conv3, self.conv4 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 1)
        self.down = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        y = self.conv2(torch.relu(self.conv1(h)))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        h = torch.relu(y * gate + h)
        shortcut = self.down(nn.functional.avg_pool2d(h, 2, ceil_mode=True, count_include_pad=False))
        s = self.conv4(torch.relu(self.conv3(h))) + shortcut
        return self.head((s * torch.sigmoid(s)).mean((2, 3)))


@pytest.fixture(scope="module")
def family() -> onnx.ModelProto:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    model = _FamilyBlocks().eval()
    torch.onnx.export(
        model, (torch.randn(2, 3, 8, 8),), buffer, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False
    )
    proto = onnx.load_from_string(buffer.getvalue())
    return onnx.version_converter.convert_version(proto, 19)


def _nodes(model: onnx.ModelProto, op: str) -> list:
    return [node for node in model.graph.node if node.op_type == op]


def _producers(model: onnx.ModelProto) -> dict:
    return {name: node for node in model.graph.node for name in node.output}


def test_an_se_gate_ends_the_main_branch_so_the_shortcut_takes_the_residual_pair(family) -> None:
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    plan = qdq_plan(family, calibration_of(family, x))
    producers = _producers(family)
    se_add = next(a for a in _nodes(family, "Add") if any(producers[i].op_type == "Mul" for i in a.input))
    assert se_add.name in plan.residual_adds  # on main the gated Add had no pair: its main branch is no Conv
    gated = next(i for i in se_add.input if producers[i].op_type == "Mul")
    shortcut = next(i for i in se_add.input if i != gated)
    assert (se_add.name, list(se_add.input).index(shortcut)) in plan.consumers[shortcut]
    assert gated not in plan.consumers  # the gate's output, the main branch, stays float


def test_silu_is_an_activation_not_a_gate(family) -> None:
    producers = _producers(family)
    kinds = {is_gate(mul, producers) for mul in _nodes(family, "Mul")}
    assert kinds == {True, False}  # the SE gate and the SiLU


def test_the_avg_pool_downsample_reads_the_int8_pair_its_input_already_has(family) -> None:
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    calibration = calibration_of(family, x)
    plan = qdq_plan(family, calibration)
    [pool] = _nodes(family, "AveragePool")
    assert (pool.name, 0) in plan.consumers[pool.input[0]] and pool.output[0] in plan.consumers
    quantized, _, _ = int8_model(onnx.ModelProto.FromString(family.SerializeToString()), calibration)
    producers = _producers(quantized)
    [pool] = _nodes(quantized, "AveragePool")
    assert producers[pool.input[0]].op_type == "DequantizeLinear"
    assert graph_quantization(quantized).tensors  # and the file is INT8 that runs close to the float graph
    reference = run_onnx(family, x)[family.graph.output[0].name]
    got = run_onnx(quantized, x)[quantized.graph.output[0].name]
    cosine = (reference * got).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.98


def test_fp16_keeps_an_se_gates_sigmoid_with_its_mul(family) -> None:
    x = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    producers = _producers(family)
    gate_mul = next(m for m in _nodes(family, "Mul") if is_gate(m, producers))
    gated = next(i for i in gate_mul.input if producers[i].op_type != "Sigmoid")
    sigmoid = next(producers[i] for i in gate_mul.input if producers[i].op_type == "Sigmoid")
    blocked = overflow_nodes(family, calibration_of(family, x, **{gated: (-2000.0, 2000.0)}))
    assert gate_mul.name in blocked  # its input is beyond float16's safe range
    assert sigmoid.name in blocked  # and the Sigmoid feeding it stays with it (FP16 on main: a Cast between)
    assert not overflow_nodes(family, calibration_of(family, x))
