"""Real FP16 and INT8 files beside the tiny ResNeXt's model.onnx, for the verify, bench and report tests.

model.onnx comes from the real export (conftest's ``tiny_export_template``); model.fp16.onnx from
ONNX Runtime's float16 converter and model.int8.onnx from ONNX Runtime's static QDQ quantizer (the
precision module's own files are tested beside it); both are recorded in the manifest as any
artifact is.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from resnext_deploy.artifacts import Manifest


def with_low_precision(template: Path, directory: Path) -> Path:
    """A copy of an exported tiny-model directory plus model.fp16.onnx and model.int8.onnx, all in the manifest.

    Tests use conftest's session-scoped ``low_precision_template`` (one conversion per run) rather than this.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.transformers.float16 import convert_float_to_float16

    shutil.copytree(template, directory)
    manifest = Manifest(directory)
    parent = manifest.entry("model.onnx")["sha256"]
    fp16 = convert_float_to_float16(onnx.load(str(directory / "model.onnx")), keep_io_types=True)
    onnx.save(fp16, str(directory / "model.fp16.onnx"))
    manifest.record("model.fp16.onnx", "fp16", parent_sha256=parent, options={"fixture": "convert_float_to_float16"})

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches = iter([{"input": rng.standard_normal((8, 3, 32, 32), dtype=np.float32)} for _ in range(4)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns about un-preprocessed models
    quantize_static(
        str(directory / "model.onnx"),
        str(directory / "model.int8.onnx"),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        reduce_range=True,  # 7-bit weights, as OpenVINO on CPUs without VNNI needs (the openvino backend checks)
    )
    manifest.record("model.int8.onnx", "int8", parent_sha256=parent, options={"fixture": "quantize_static QDQ"})
    return directory


def copy_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_initializers(path: Path, select: Callable[[str], bool], change: Callable[[np.ndarray], np.ndarray]) -> int:
    """Rewrite the initializers whose names ``select`` picks; return how many changed."""
    model = onnx.load(str(path))
    changed = 0
    for init in model.graph.initializer:
        if select(init.name):
            array = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(change(array).astype(array.dtype), init.name))
            changed += 1
    onnx.save(model, str(path))
    return changed


def is_weight_scale(name: str) -> bool:
    """The QDQ quantizer names a per-channel weight scale ``<weight>_scale``; activations end ``_output_0_scale``."""
    return name.endswith("_scale") and "Conv" in name and "output" not in name


def strip_activation_qdq(path: Path, select: Callable[[str], bool] = lambda _tensor: True) -> list[str]:
    """Remove the Q/DQ pair of each activation tensor ``select`` picks (consumers read the float); return them."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    consumers = {name: node for node in graph.node for name in node.input}
    outputs = {value.name for value in graph.output}
    removed, rename, drop = [], {}, []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers and select(node.input[0]):
            dequantize = consumers[node.output[0]]
            tensor, result = node.input[0], dequantize.output[0]
            rename.update({tensor: result} if result in outputs else {result: tensor})  # graph outputs keep their name
            drop += [node, dequantize]
            removed.append(tensor)
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    onnx.save(model, str(path))
    return removed
