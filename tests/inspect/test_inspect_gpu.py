"""inspect's TensorRT layer view on a real GPU: IProfiler times and the engine inspector's layers, mapped to the
ONNX nodes of the file the engine was built from. Marked ``gpu``; skips where TensorRT or a CUDA GPU is missing."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from resnext_deploy.backends.tensorrt.build import build_engine
from resnext_deploy.backends.tensorrt.options import BuildOptions
from resnext_deploy.backends.tensorrt.probe import tensorrt_status
from resnext_deploy.inspect.latency import profile

pytestmark = pytest.mark.gpu

_UNAVAILABLE = tensorrt_status()
if _UNAVAILABLE is not None:
    pytest.skip(_UNAVAILABLE, allow_module_level=True)


def test_tensorrt_layers_map_to_the_onnx_nodes_and_sum_near_the_device_time(tiny_dir: Path) -> None:
    build_engine(tiny_dir, "fp32", BuildOptions(min_batch=1, opt_batch=1, max_batch=4), log=lambda _m: None)
    latency = profile(tiny_dir, "model.fp32.engine", "fp32", "tensorrt", image_size=32)
    convs = {node.name for node in onnx.load(str(tiny_dir / "model.onnx")).graph.node if node.op_type == "Conv"}
    mapped = {n for layer in latency.layers for n in layer.nodes}
    assert convs <= mapped  # every Conv is in some TensorRT layer, fused ones grouped
    assert latency.weighted >= 1 and latency.int8_weighted == 0
    assert 0.5 * latency.wall_ms <= latency.total_ms <= 1.5 * latency.wall_ms  # layer times vs CUDA-event time
