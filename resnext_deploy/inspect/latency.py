"""Latency layer by layer: each runtime's own profiler, in a process of its own, mapped back to ONNX nodes.

* OpenVINO: performance counters (the kernel each layer ran, e.g. ``jit_avx512_I8`` or ``brgconv_avx512_FP32``),
  and the runtime model's ``originalLayersNames`` to group the ONNX nodes a layer fused;
* ONNX Runtime: its profiler (per-node kernel time, op and provider);
* TensorRT: IProfiler and the engine inspector (:mod:`..backends.tensorrt.layers`), on an engine, where a GPU is.

As in bench, each artifact runs in a spawned process (thread pools of different runtimes must not meet)
on the same seeded input, so the sum of the layer times can be set beside bench's median for the runner.
"""

from __future__ import annotations

import multiprocessing
import re
import statistics
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Precision, engine_file
from ..errors import BackendUnavailableError, BadInputError, one_line
from .records import ArtifactLatency, LayerTime

BACKENDS = ("openvino", "onnxruntime", "tensorrt")
WEIGHTED_TYPES = ("Convolution", "FullyConnected", "MatMul", "Gemm")  # in OpenVINO's and TensorRT's layer types
WEIGHTED_OPS = {
    "Conv",
    "Gemm",
    "MatMul",
    "QLinearConv",
    "QGemm",
    "ConvInteger",
    "FusedConv",
    "FusedGemm",
    "QLinearMatMul",
}
OV_OVERHEAD = {"Reorder", "Convert", "FakeQuantize"}
ORT_OVERHEAD = {"QuantizeLinear", "DequantizeLinear", "Cast", "ReorderInput", "ReorderOutput", "Transpose"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
NCHWC_SUFFIX = "_nchwc"
INT8_OPS = {"QLinearConv", "QGemm", "ConvInteger", "QLinearMatMul", "MatMulInteger"}
ITERATIONS = 20
WARMUP = 3


# A runtime layer as its profiler reports it: name, layer type, kernel, median ms, the ONNX nodes it fused (where
# the runtime says), the precision it ran in (where the runtime says; else read from the kernel's name).
ProfileRow = tuple[str, str, str, float, list[str], str]


@dataclass(frozen=True)
class Profiled:
    """What a runtime's profiler measured in its worker process: a row per runtime layer, the median call time."""

    rows: list[ProfileRow]
    wall_ms: float


def node_index(path: Path) -> tuple[dict[str, int], dict[str, str], dict[str, str], dict[str, str]]:
    """Model order of each ONNX node, each output tensor's producer, each node's op type and first input's producer."""
    from ..artifacts import load_onnx

    model = load_onnx(path, load_external_data=False)
    order = {node.name: i for i, node in enumerate(model.graph.node)}
    producer = {out: node.name for node in model.graph.node for out in node.output}
    ops = {node.name: node.op_type for node in model.graph.node}
    nodes = model.graph.node
    parent = {node.name: producer[node.input[0]] for node in nodes if node.input and node.input[0] in producer}
    return order, producer, ops, parent


def _input(batch_size: int, image_size: int) -> np.ndarray:
    from ..evaluate.worker import INPUT_SEED

    return np.random.default_rng(INPUT_SEED).standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32)


def _openvino(path: str, precision: str, batch_size: int, image_size: int, iterations: int) -> Profiled:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"PERF_COUNT": True}
    if precision != "fp16":  # a row labelled fp32 is fp32: OpenVINO's bf16 default is switched off
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    x = _input(batch_size, image_size)
    for _ in range(WARMUP):
        request.infer({0: x})
    times: dict[str, list[float]] = {}
    info: dict[str, tuple[str, str]] = {}
    wall = []
    for _ in range(iterations):
        start = time.perf_counter()
        request.infer({0: x})
        wall.append((time.perf_counter() - start) * 1e3)
        for row in request.profiling_info:
            if str(row.status).endswith("NOT_RUN"):
                continue
            times.setdefault(row.node_name, []).append(row.real_time.total_seconds() * 1e3)
            info[row.node_name] = (row.node_type, row.exec_type)
    fused: dict[str, tuple[list[str], str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        names = str(rt["originalLayersNames"].astype(str)) if "originalLayersNames" in rt else ""
        runtime_precision = str(rt["runtimePrecision"].astype(str)) if "runtimePrecision" in rt else ""
        fused[op.get_friendly_name()] = ([n for n in names.split(",") if n], runtime_precision)
    rows = [(name, *info[name], float(np.median(values)), *fused.get(name, ([], ""))) for name, values in times.items()]
    return Profiled(rows, statistics.median(wall))


def _onnxruntime(path: str, precision: str, batch_size: int, image_size: int, iterations: int) -> Profiled:
    import json

    from ..backends.onnxruntime import open_session

    with tempfile.TemporaryDirectory(prefix="resnext-deploy-profile-") as folder:
        session = open_session(path, profile_prefix=Path(folder) / "ort")
        name = session.get_inputs()[0].name
        x = _input(batch_size, image_size)
        for _ in range(WARMUP):
            session.run(None, {name: x})
        wall = []
        for _ in range(iterations):
            start = time.perf_counter()
            session.run(None, {name: x})
            wall.append((time.perf_counter() - start) * 1e3)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        times.setdefault(node, []).append(float(event.get("dur", 0)) / 1e3)
        args = event.get("args", {})
        kinds[node] = (str(args.get("op_name", "")), str(args.get("provider", "")))
    rows = [  # the median over the timed runs (the warm-up ones come first)
        (node, kinds[node][0], f"{kinds[node][0]} ({kinds[node][1]})", float(np.median(ms[-iterations:])), [node], "")
        for node, ms in times.items()
    ]
    return Profiled(rows, statistics.median(wall))


def _tensorrt(path: str, precision: str, batch_size: int, image_size: int, iterations: int) -> Profiled:
    """TensorRT's IProfiler and engine inspector (run where a GPU is); the wall time is the CUDA-event time."""
    from ..backends.tensorrt import layer_profile

    rows, device_ms = layer_profile(path, batch_size, image_size, iterations, WARMUP)
    return Profiled(rows, device_ms)


PROFILERS = {"openvino": _openvino, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}


def onnx_of(artifact: str) -> str:
    """The ONNX file an artifact was made from, whose node names its layers map to (an engine's typed ONNX)."""
    if not artifact.endswith(".engine"):
        return artifact
    precision = artifact.split(".")[-2]
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def _onnx_node(name: str, order: Mapping[str, int], producer: Mapping[str, str]) -> str | None:
    """The ONNX node a runtime's layer name stands for: a node name, an output tensor's name, or a node name with
    the parts a runtime appends when it splits a node (``/fc/Gemm/WithoutBiases``)."""
    name = name.removesuffix(NCHWC_SUFFIX)  # ONNX Runtime's blocked-layout copy of a node's output
    while name:
        if name in order:
            return name
        if name in producer:
            return producer[name]
        name = name.rpartition("/")[0]
    return None


def _weighted_source(nodes: tuple[str, ...], ops: Mapping[str, str], parent: Mapping[str, str]) -> tuple[str, ...]:
    """A fused weighted kernel named after its activation (ONNX Runtime's ``<relu output>_nchwc`` Conv): the Conv
    that feeds that activation joins the group, first."""
    if not nodes or any(ops[n] in WEIGHTED_OPS for n in nodes):
        return nodes
    source = parent.get(nodes[0])
    return (source, *nodes) if source is not None and ops.get(source) in WEIGHTED_OPS else nodes


def _precision_of(kernel: str, runtime_precision: str, layer_type: str, artifact_precision: str) -> str:
    if runtime_precision:
        return runtime_precision
    if layer_type in INT8_OPS:
        return "I8"
    match = re.search(r"_(I8|U8|FP32|FP16|BF16|f32|f16|i8|u8)$", kernel)
    if match:
        return match.group(1).upper()
    return "FP16" if artifact_precision == "fp16" and layer_type not in ORT_OVERHEAD else "FP32"


def profile(
    directory: Path, artifact: str, precision: str, backend: str, image_size: int, batch_size: int = 1,
    iterations: int = ITERATIONS,
) -> ArtifactLatency:  # fmt: skip
    """One artifact's per-layer times on ``backend``, measured in a spawned process of its own."""
    if backend not in PROFILERS:
        raise BackendUnavailableError(f"no layer profiler for {backend}; choose from {', '.join(PROFILERS)}")
    path = directory / artifact
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        result = pool.submit(PROFILERS[backend], str(path), precision, batch_size, image_size, iterations).result()
    order, producer, ops, parent = node_index(directory / onnx_of(artifact))
    layers = []
    for name, layer_type, kernel, ms, originals, runtime_precision in result.rows:
        found = [_onnx_node(n, order, producer) for n in [*originals, name]]
        nodes = tuple(dict.fromkeys(n for n in found if n is not None))
        nodes = tuple(sorted(nodes, key=lambda n: (ops[n] not in WEIGHTED_OPS, ops[n] in QDQ_OPS, order[n])))
        weighted = any(kind in layer_type for kind in WEIGHTED_TYPES) or layer_type in WEIGHTED_OPS
        if weighted:
            nodes = _weighted_source(nodes, ops, parent)
        overhead = layer_type in OV_OVERHEAD | ORT_OVERHEAD and not weighted
        layers.append(
            LayerTime(
                name=name,
                nodes=nodes,
                layer_type=layer_type,
                kernel=kernel,
                precision=_precision_of(kernel, runtime_precision, layer_type, precision),
                ms=ms,
                depth=min((order[n] for n in nodes if ops[n] not in QDQ_OPS), default=-1),
                weighted=weighted,
                overhead=overhead,
            )
        )
    layers.sort(key=lambda layer: (layer.depth if layer.depth >= 0 else 10**9, layer.name))
    return ArtifactLatency(artifact, precision, backend, batch_size, iterations, tuple(layers), result.wall_ms)


def bench_median(directory: Path, backend: str, precision: str, batch_size: int) -> float | None:
    """bench's median for the same runner (CPU) and batch, when ``bench.json`` holds it."""
    from ..evaluate.bench import BENCH_JSON, read_bench_report

    path = directory / BENCH_JSON
    if not path.exists():
        return None
    try:
        rows = read_bench_report(path).results
    except BadInputError:  # an unreadable bench.json only leaves the comparison out
        return None
    for row in rows:
        if (row.backend, row.precision, row.device, row.batch_size) == (backend, precision, "cpu", batch_size):
            return float(row.median_ms)
    return None


def compare_layers(fast: ArtifactLatency, slow: ArtifactLatency) -> list[tuple[str, float, float]]:
    """ONNX nodes (grouped as the runtime fused them) with their time in both artifacts, largest change first."""

    def by_node(latency: ArtifactLatency) -> dict[str, float]:
        times: dict[str, float] = {}
        for layer in latency.layers:
            key = next((n for n in layer.nodes if n), "")
            if key:
                times[key] = times.get(key, 0.0) + layer.ms
        return times

    a, b = by_node(fast), by_node(slow)
    rows = [(node, a[node], b[node]) for node in a if node in b]
    return sorted(rows, key=lambda row: -abs(row[2] - row[1]))


def overhead_note(latency: ArtifactLatency, limit: int = 3) -> str:
    """Why INT8 is slow on a runtime, in its own numbers: time outside INT8 weighted layers, and the worst layers."""
    total = latency.total_ms or 1.0
    layers = latency.layers
    float_weighted = [x for x in layers if x.weighted and x.precision.upper() not in ("I8", "U8", "INT8")]
    overhead = [x for x in layers if x.overhead]
    worst = sorted(float_weighted + overhead, key=lambda x: -x.ms)[:limit]
    named = ", ".join(f"`{(x.nodes or (x.name,))[0]}` ({x.kernel}, {x.ms:.2f} ms)" for x in worst)
    text = (
        f"{latency.backend} runs {latency.int8_weighted} of {latency.weighted} weighted layers in INT8; "
        f"{len(overhead)} reorders/conversions/Q-DQ nodes take {latency.overhead_ms / total:.0%} of the time"
    )
    return text + (f"; slowest of these: {named}" if named else "")


def profile_all(
    directory: Path,
    artifacts: Mapping[str, str],
    backends: list[str],
    image_size: int,
    log: Any,
    runtime_files: bool = True,
) -> tuple[list[ArtifactLatency], list[str]]:
    """Every (artifact, backend) pair that can run here; a backend that cannot is a note, not an error.

    ``runtime_files``: a precision's file is replaced by the variant its runtime runs where DIR has one
    (ONNX Runtime's ``model.int8.ort.onnx``), as verify and bench do; off for files the user named.
    """
    out, notes = [], []
    for backend in backends:
        for artifact, precision in artifacts.items():
            if backend == "tensorrt" and not artifact.endswith(".engine"):
                artifact = engine_file(precision)
            elif runtime_files and artifact == Precision(precision).onnx_file:
                variant = Precision(precision).runtime_file(backend)
                artifact = variant if (directory / variant).is_file() else artifact
            if backend == "tensorrt" and not (directory / artifact).exists():
                notes.append(f"tensorrt: no {artifact} (build-trt makes it where a GPU is)")
                continue
            try:
                log(f"inspect: layer times of {artifact} on {backend}")
                latency = profile(directory, artifact, precision, backend, image_size)
            except ImportError as exc:
                notes.append(f"{backend}: not installed ({one_line(exc)})")
                break
            except Exception as exc:  # noqa: BLE001 - one runtime that fails to profile leaves the others
                notes.append(f"{artifact} on {backend}: no layer profile ({one_line(exc)})")
                continue
            bench = bench_median(directory, backend, precision, latency.batch_size)
            out.append(ArtifactLatency(**{**latency.__dict__, "bench_ms": bench}))
    return out, notes
