"""TensorRT's per-layer view for ``inspect``: IProfiler times and the engine inspector's layer information.

The profiler class is made when it is needed (no TensorRT class is subclassed at import time). Layer
names are TensorRT's fused names (``/conv1/Conv + /relu/Relu``); with the engine built at DETAILED profiling
verbosity (``build-trt`` does), the inspector adds each layer's tactic, output types and ONNX node names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, SupportsFloat

import numpy as np

from .runner import TensorRTRunner

LayerRow = tuple[str, str, str, float, list[str], str]  # name, type, tactic, ms, ONNX nodes, output type


def _profiler() -> Any:
    """An ``IProfiler`` that keeps every report of every layer (a class made at call time)."""
    import tensorrt as trt

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.times: dict[str, list[float]] = {}

        def report_layer_time(self, layer_name: str, ms: SupportsFloat) -> None:
            self.times.setdefault(layer_name, []).append(float(ms))

    return LayerTimes()


def _layer_info(engine: Any, context: Any) -> dict[str, Mapping[str, Any]]:
    """The inspector's record of each layer by name (empty when the engine keeps no detail)."""
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    if inspector is None:
        return {}
    inspector.execution_context = context
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        layers = json.loads(text).get("Layers", [])
    except (ValueError, AttributeError):
        return {}
    return {str(layer["Name"]): layer for layer in layers if isinstance(layer, dict) and "Name" in layer}


def _onnx_nodes(name: str, info: Mapping[str, Any]) -> list[str]:
    """ONNX node names of a fused layer: the inspector's metadata where it has it, else the fused name's parts."""
    metadata = str(info.get("Metadata", ""))
    found = [part.split("ONNX Layer:")[1].strip(" ]") for part in metadata.split("\x1f") if "ONNX Layer:" in part]
    return found or [part.strip() for part in name.split(" + ") if part.strip()]


def _output_type(info: Mapping[str, Any]) -> str:
    outputs = info.get("Outputs") or []
    first = outputs[0] if outputs and isinstance(outputs[0], dict) else {}
    return str(first.get("Format/Datatype", "")).split(" ")[0]


def layer_profile(
    path: str, batch_size: int, image_size: int, iterations: int, warmup: int
) -> tuple[list[LayerRow], float]:
    """Each layer's median time over ``iterations`` calls of the engine at ``path`` on a seeded batch, and the
    median device time of a whole call (CUDA events) measured alongside."""
    runner = TensorRTRunner(path)
    loaded = runner._loaded
    if loaded is None:  # pragma: no cover - a fresh runner is open
        return [], 0.0
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32)
    for _ in range(warmup):
        runner.infer(batch)
    profiler = _profiler()
    loaded.context.profiler = profiler
    device: list[float] = []
    for _ in range(iterations):
        runner.infer(batch)
        device.append(runner.last_device_ms or 0.0)
    info = _layer_info(loaded.engine, loaded.context)
    runner.close()
    rows: list[LayerRow] = []
    for name, times in profiler.times.items():
        layer = info.get(name, {})
        rows.append(
            (
                name,
                str(layer.get("LayerType", "")),
                str(layer.get("TacticName", "")),
                float(np.median(times)),
                _onnx_nodes(name, layer),
                _output_type(layer),
            )
        )
    return rows, float(np.median(device)) if device else 0.0
