"""Typed ONNX: ``model.fp16.onnx`` and ``model.int8.onnx`` (explicit Q/DQ), checked with ONNX Runtime.

TensorRT 11 takes precision from the graph alone (strongly typed networks), so every precision
decision is made here, on the CPU, where it can be checked against ``model.onnx``.

FP16 follows NVIDIA ModelOpt's AutoCast: everything in float16 with float32 graph I/O, except nodes
whose inputs or outputs reached more than ``FP16_DATA_MAX`` in magnitude on the calibration data
(ModelOpt's default ``data_max``, a 128x margin below float16's 65504) or that hold an initializer
beyond float16: those stay float32.

INT8 follows TensorRT's Q/DQ placement recommendations and what ModelOpt emits for ResNets:

* every Conv and the classifier (Gemm/MatMul): a DequantizeLinear feeds both the data input
  (per-tensor scale from calibration) and the weight (INT8 initializer, per-output-channel scales);
* a residual Add gets Q/DQ on its shortcut input only, the Conv branch stays float, so TensorRT fuses
  Conv + Add(DQ residual) into one INT8 kernel (ModelOpt's ``build_non_residual_input_map``: the
  input on the longer path from the common ancestor is the Conv branch);
* symmetric INT8: every zero point is an int8 0, weights in [-127, 127];
* biases stay float and are never quantized (TensorRT rejects a DequantizeLinear on an INT32 bias:
  onnx/onnx-tensorrt#850; ONNX Runtime's quantize_static quantizes them: microsoft/onnxruntime#17738);
* no Q/DQ on Conv outputs (TensorRT fuses the following ReLU/Add and quantizes at the next Q);
* what is not quantized runs in float16 (``high_precision="fp16"``) or float32, graph I/O float32.
"""

from __future__ import annotations

import fnmatch
import heapq
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import ONNX_FILES, Manifest, atomic_path, load_onnx
from .calibration import (
    DEFAULT_CALIB_COUNT,
    DEFAULT_METHOD,
    DEFAULT_PERCENTILE,
    Calibration,
    Log,
    calibrate,
    calibration_dataset,
    check_method,
    heldout_dataset,
    labels_match_model,
    progress,
)
from .data import Dataset
from .errors import BadInputError, VerificationError
from .metrics import DEFAULT_TOLERANCES, Parity, Tolerance, compare
from .runners import OnnxRuntimeRunner
from .source import ModelSource

FP16_DATA_MAX = 512.0
FP16_INIT_MAX = 65504.0
INT8_MAX = 127
QDQ_OPSET = 19  # DequantizeLinear with float16 scales (and output) needs opset 19
HIGH_PRECISIONS = ("fp16", "fp32")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
CHECK_BATCH = 16
EXPORT_HINT = "run `resnext-deploy export --dir DIR` first"


@dataclass
class TypedResult:
    """A typed ONNX file and how it compared with ``model.onnx`` on held-out inputs."""

    path: Path
    precision: str
    parity: Parity | None
    reused: bool = False
    fp32_nodes: tuple[str, ...] = ()
    quantized_nodes: tuple[str, ...] = ()


@dataclass
class QdqPlan:
    """Where INT8 goes: weighted nodes, the activation tensors that get Q/DQ, and for which consumers."""

    weighted: list[str] = field(default_factory=list)
    residual_adds: list[str] = field(default_factory=list)
    consumers: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # tensor -> (node, input index)


# ----------------------------------------------------------------------------------------------
# The entry point


def make_typed_onnx(
    directory: str | Path,
    precision: str,
    calib_source: str | Path | None = None,
    calib_count: int = DEFAULT_CALIB_COUNT,
    calib_method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    exclude: tuple[str, ...] | list[str] = (),
    high_precision: str = "fp16",
    seed: int = 0,
    log: Log = print,
    tolerance: Tolerance | None = None,
    check_count: int | None = None,
) -> TypedResult:
    """Write ``DIR/model.<precision>.onnx`` from ``DIR/model.onnx``, check it, record it; or reuse it.

    ``fp32`` returns model.onnx itself once the manifest vouches for it. The typed file is checked
    with ONNX Runtime against model.onnx on held-out inputs (see
    :func:`~resnext_deploy.calibration.heldout_dataset`) with ``tolerance`` (default: the
    precision's entry in :data:`~resnext_deploy.metrics.DEFAULT_TOLERANCES`); a failed check
    raises :class:`VerificationError` and writes nothing.
    """
    if precision not in ONNX_FILES:
        raise BadInputError(f"unknown precision {precision!r}; choose one of: {', '.join(ONNX_FILES)}")
    if high_precision not in HIGH_PRECISIONS:
        raise BadInputError(f"--high-precision must be one of {', '.join(HIGH_PRECISIONS)}, got {high_precision!r}")
    check_method(calib_method, percentile)
    directory = Path(directory)
    manifest = Manifest(directory)
    parent = manifest.require(ONNX_FILES["fp32"], EXPORT_HINT)
    parent_path = directory / ONNX_FILES["fp32"]
    if precision == "fp32":
        log(f"{parent_path} is the FP32 model (recorded in the manifest)")
        return TypedResult(parent_path, "fp32", None, reused=True)
    try:
        source = ModelSource.from_dict(parent["options"]["source"])
    except (KeyError, TypeError):
        raise BadInputError(f"the manifest entry of {parent_path} names no model source; {EXPORT_HINT}") from None

    name = ONNX_FILES[precision]
    final = directory / name
    tolerance = tolerance or DEFAULT_TOLERANCES[precision]
    dataset = calibration_dataset(source, precision, calib_source, calib_count, seed)
    options = _options(precision, dataset, calib_source, calib_method, percentile, exclude, high_precision, seed)
    options["tolerance"] = asdict(tolerance)
    if manifest.is_current(name, parent["sha256"], options):
        entry = manifest.entry(name) or {}
        log(f"{final} is up to date (same model.onnx, calibration data and options); reusing it")
        return TypedResult(
            final,
            precision,
            _parity_from_dict(entry.get("parity")),
            reused=True,
            fp32_nodes=tuple(entry.get("fp32_nodes", ())),
            quantized_nodes=tuple(entry.get("quantized_nodes", ())),
        )
    if dataset.fingerprint.startswith("synthetic"):
        log(f"warning: no calibration images for {source.arch}; FP16 ranges come from {dataset.description}")

    calibration = calibrate(directory, parent_path, dataset, calib_method, percentile, log)
    model = load_prepared(parent_path)
    if precision == "fp16":
        model, fp32_nodes = fp16_model(model, calibration)
        quantized: list[str] = []
    else:
        model, fp32_nodes, plan = int8_model(model, calibration, tuple(exclude), high_precision)
        quantized = plan.weighted
        log(
            f"INT8: {len(plan.weighted)} Conv/Gemm nodes quantized, {len(plan.consumers)} activation tensors "
            f"with Q/DQ ({len(plan.residual_adds)} residual Add shortcuts); the rest in {high_precision}"
        )
    log(_block_summary(precision, fp32_nodes))

    heldout = heldout_dataset(source, dataset, calibration.consumed, calib_source, seed, check_count)
    use_labels = labels_match_model(heldout, source)
    with atomic_path(final) as tmp:
        _save(model, tmp)
        del model
        parity = check_parity(parent_path, tmp, precision, heldout, tolerance, use_labels)
        log(_parity_summary(name, heldout, parity))
        if not parity:
            hint = " (try --calib-method, --exclude or --high-precision fp32)" if precision == "int8" else ""
            raise VerificationError(
                f"{name} disagrees with model.onnx on {heldout.description}: {'; '.join(parity.failures)}{hint}; "
                f"no {name} was written"
            )
    manifest.record(
        name,
        precision,
        parent_sha256=parent["sha256"],
        options=options,
        calibration={
            "fingerprint": calibration.fingerprint,
            "description": calibration.description,
            "count": calibration.count,
            "method": calibration.method,
            "percentile": calibration.percentile,
        },
        heldout=heldout.description,
        parity=parity.to_dict(),
        fp32_nodes=fp32_nodes,
        quantized_nodes=quantized,
    )
    log(f"wrote {final}")
    return TypedResult(final, precision, parity, fp32_nodes=tuple(fp32_nodes), quantized_nodes=tuple(quantized))


def _options(
    precision: str,
    dataset: Dataset,
    calib_source: str | Path | None,
    method: str,
    percentile: float,
    exclude: tuple[str, ...] | list[str],
    high_precision: str,
    seed: int,
) -> dict[str, Any]:
    """What the typed file depends on besides model.onnx; the manifest compares it to resume."""
    options: dict[str, Any] = {
        "calibration": {
            "source": None if calib_source is None else str(Path(calib_source).resolve()),
            "fingerprint": dataset.fingerprint,
            "count": dataset.count,
            "seed": seed,
        },
        "fp16_data_max": FP16_DATA_MAX,
    }
    if precision == "int8":
        options["calibration"].update(method=method, percentile=percentile)
        options.update(exclude=list(exclude), high_precision=high_precision)
    return options


def _parity_from_dict(data: dict[str, Any] | None) -> Parity | None:
    if not data:
        return None
    fields = {k: v for k, v in data.items() if k in Parity.__dataclass_fields__}
    return Parity(**{**fields, "failures": tuple(fields.get("failures", ()))})


def check_parity(
    reference: str | Path,
    candidate: str | Path,
    precision: str,
    dataset: Dataset,
    tolerance: Tolerance,
    use_labels: bool,
) -> Parity:
    """Run both files in ONNX Runtime on the same inputs and compare the logits."""
    reference_runner = OnnxRuntimeRunner(reference)
    candidate_runner = OnnxRuntimeRunner(candidate, precision)
    refs, cands, labels = [], [], []
    with progress(dataset.count, f"checking {precision} on {dataset.count} held-out samples") as advance:
        for batch in dataset.batches(CHECK_BATCH):
            refs.append(reference_runner(batch.images))
            cands.append(candidate_runner(batch.images))
            if batch.labels is not None:
                labels.append(batch.labels)
            advance(len(batch.images))
    reference_runner.close()
    candidate_runner.close()
    truth = np.concatenate(labels) if use_labels and labels else None
    return compare(np.concatenate(refs), np.concatenate(cands), tolerance, truth)


def _parity_summary(name: str, dataset: Dataset, parity: Parity) -> str:
    text = (
        f"{name} vs model.onnx on {dataset.description}: cosine min {parity.cosine_min:.6f} "
        f"mean {parity.cosine_mean:.6f}, top-1 agreement {parity.top1_agreement:.2%}, "
        f"top-5 overlap {parity.top5_overlap:.2%}"
    )
    if parity.accuracy is not None:
        text += f", accuracy {parity.accuracy:.2f}% (FP32 {parity.reference_accuracy:.2f}%)"
    return text + ("" if parity else f" -- FAILED: {'; '.join(parity.failures)}")


def _block_summary(precision: str, fp32_nodes: list[str]) -> str:
    if not fp32_nodes:
        return f"{precision.upper()}: no activation near float16's range on the calibration data; nothing kept in FP32"
    shown = ", ".join(fp32_nodes[:5]) + (", ..." if len(fp32_nodes) > 5 else "")
    return (
        f"{precision.upper()}: {len(fp32_nodes)} nodes kept in FP32 (|x| over {FP16_DATA_MAX:g} on the "
        f"calibration data): {shown}"
    )


# ----------------------------------------------------------------------------------------------
# Graph preparation shared by both precisions


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
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


def overflow_nodes(model, calibration: Calibration, data_max: float = FP16_DATA_MAX) -> list[str]:
    """Nodes that must stay FP32: an input or output over ``data_max`` (or non-finite) on the calibration
    data, or a float initializer beyond float16's range."""
    from onnx import TensorProto, numpy_helper

    big_initializers = {
        init.name
        for init in model.graph.initializer
        if init.data_type == TensorProto.FLOAT and np.abs(numpy_helper.to_array(init)).max(initial=0) > FP16_INIT_MAX
    }
    blocked = []
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            magnitude = calibration.max_abs(name)
            if name in big_initializers or (magnitude is not None and not magnitude <= data_max):
                blocked.append(node.name)
                break
    return blocked


def _to_float16(model, blocked: set[str]):
    """Float16 everywhere but ``blocked`` nodes; float32 graph I/O; each Cast where types meet."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    _untie_initializers(model, blocked)
    model = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(blocked))
    _drop_cast_round_trips(model.graph, blocked)
    _toposort(model.graph)
    return model


def _drop_cast_round_trips(graph, blocked: set[str]) -> None:
    """Remove float32 -> float16 -> float32 Cast pairs the converter puts between two FP32 nodes.

    It casts every blocked node's output to float16 and back for a blocked consumer; a value kept
    in float32 because it is too large for float16 must not pass through float16 on the way.
    """
    from onnx import TensorProto

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producers = {name: node for node in graph.node for name in node.output}
    float_inputs = {v.name for v in graph.input if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    renamed: dict[str, str] = {}
    for node in graph.node:
        up = producers.get(node.input[0]) if cast_to(node) == TensorProto.FLOAT else None
        if up is None or cast_to(up) != TensorProto.FLOAT16:
            continue
        source = up.input[0]
        if source in float_inputs or (source in producers and producers[source].name in blocked):
            renamed[node.output[0]] = source
    graph_outputs = {v.name for v in graph.output}
    keep = [node for node in graph.node if not (cast_to(node) is not None and node.output[0] in renamed)]
    for node in keep:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    used = {name for node in keep for name in node.input} | graph_outputs
    keep = [n for n in keep if not (cast_to(n) == TensorProto.FLOAT16 and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(keep)
    produced = {name for node in keep for name in node.output}
    stale = [v for v in graph.value_info if v.name not in produced]
    for value in stale:
        graph.value_info.remove(value)


def _untie_initializers(model, blocked: set[str]) -> None:
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


def _toposort(graph) -> None:
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


def _save(model, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _tag(model, precision: str, extra: dict[str, Any]) -> None:
    """Keep model.onnx's metadata and add what this step decided."""
    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props["resnext_deploy.precision"] = precision
    props.update({f"resnext_deploy.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    onnx.helper.set_model_props(model, props)
    model.producer_name = "resnext-deploy"


# ----------------------------------------------------------------------------------------------
# FP16


def fp16_model(model, calibration: Calibration, data_max: float = FP16_DATA_MAX):
    """The FP16 graph and the nodes kept FP32 because they would overflow float16 on the calibration data."""
    blocked = overflow_nodes(model, calibration, data_max)
    model = _to_float16(model, set(blocked))
    _tag(model, "fp16", {"fp32_nodes": blocked, "fp16_data_max": data_max})
    return model, blocked


# ----------------------------------------------------------------------------------------------
# INT8


def qdq_plan(model, calibration: Calibration, exclude: tuple[str, ...] = ()) -> QdqPlan:
    """Decide which nodes and tensors get Q/DQ (see the module docstring for the rules)."""
    graph = model.graph
    names = [node.name for node in graph.node]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            example = next((n for n in names if "conv" in n.lower()), names[0] if names else "")
            raise BadInputError(f"--exclude {pattern!r} matches no node; node names look like {example!r}")
    excluded = {name for name in names if any(fnmatch.fnmatchcase(name, p) for p in exclude)}
    initializers = {init.name for init in graph.initializer}
    plan = QdqPlan()
    consumers: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for node in graph.node:
        if (
            node.op_type in WEIGHTED_OPS
            and node.name not in excluded
            and len(node.input) > 1
            and node.input[1] in initializers
            and node.input[0] not in initializers
            and _weight_axis(node) is not None
        ):
            plan.weighted.append(node.name)
            consumers[node.input[0]].append((node.name, 0))
    quantized = set(plan.weighted)
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:
        if node.op_type == "Add" and node.name not in excluded:
            index = _residual_input(node, producers, quantized, initializers)
            if index is not None:
                plan.residual_adds.append(node.name)
                consumers[node.input[index]].append((node.name, index))
    for tensor in consumers:
        if not math.isfinite(calibration.amax(tensor)):
            raise BadInputError(f"model.onnx computes non-finite values in {tensor} on the calibration data")
    plan.consumers = dict(consumers)
    return plan


def _weight_axis(node) -> int | None:
    """The output-channel axis of a weight: Conv [K, C, kh, kw] and Gemm with transB [N, K]: 0; [K, N]: 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul


def _residual_input(add, producers: dict, quantized: set[str], initializers: set[str]) -> int | None:
    """The index of the residual Add input that takes Q/DQ (the shortcut), or None if it is no residual Add.

    The other input must come straight from a quantized Conv, so that TensorRT fuses Conv + Add.
    When both come from Convs (a downsampling block), the Conv on the longer path from the common
    ancestor is the block's main branch; the shortcut Conv's output gets Q/DQ.
    """
    if len(add.input) != 2 or any(name in initializers for name in add.input):
        return None
    parents = [producers.get(name) for name in add.input]
    if any(p is None for p in parents):
        return None
    is_conv = [p.op_type == "Conv" and p.name in quantized for p in parents]
    if not any(is_conv):
        return None
    if all(is_conv):
        depth = _depths_to_common_ancestor(parents[0], parents[1], producers)
        if depth is None or depth[0] == depth[1]:
            return None
        main = 0 if depth[0] > depth[1] else 1
    else:
        main = 0 if is_conv[0] else 1
        if parents[main].name in _ancestors(parents[1 - main], producers):
            return None  # the Conv also feeds the other input: not a shortcut
    return 1 - main


def _ancestors(node, producers: dict) -> dict[str, int]:
    """Every ancestor node's name with its distance (in nodes) from ``node``, ``node`` itself at 0."""
    distance = {node.name: 0}
    frontier = [node]
    while frontier:
        following = []
        for current in frontier:
            for name in current.input:
                parent = producers.get(name)
                if parent is not None and parent.name not in distance:
                    distance[parent.name] = distance[current.name] + 1
                    following.append(parent)
        frontier = following
    return distance


def _depths_to_common_ancestor(a, b, producers: dict) -> tuple[int, int] | None:
    up_a, up_b = _ancestors(a, producers), _ancestors(b, producers)
    common = set(up_a) & set(up_b)
    if not common:
        return None
    lowest = min(common, key=lambda name: up_a[name] + up_b[name])
    return up_a[lowest], up_b[lowest]


def _scale_floor(dtype) -> float:
    """The smallest scale allowed: the type's smallest normal number, so no scale is 0, subnormal or 1/0."""
    return float(np.finfo(dtype).tiny)


def quantize_weight(weight: np.ndarray, axis: int, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel INT8 in [-127, 127]: ``(q, scale)`` with ``q * scale ~= weight`` along ``axis``.

    A dead (all-zero) channel gets the floor scale rather than 0, and its values quantize to 0.
    """
    channels = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    amax = np.abs(channels).max(axis=1).astype(np.float64)
    scale = np.maximum(amax / INT8_MAX, _scale_floor(scale_dtype)).astype(scale_dtype)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.astype(np.float64).reshape(shape)), -INT8_MAX, INT8_MAX)
    return q.astype(np.int8), scale


def activation_scale(amax: float, scale_dtype=np.float32) -> np.ndarray:
    """The per-tensor scale that maps ``amax`` to 127, floored so that it is never 0."""
    return np.asarray(max(amax / INT8_MAX, _scale_floor(scale_dtype)), dtype=scale_dtype)


def int8_model(
    model,
    calibration: Calibration,
    exclude: tuple[str, ...] = (),
    high_precision: str = "fp16",
    data_max: float = FP16_DATA_MAX,
):
    """The Q/DQ graph, the nodes kept FP32, and the plan it followed."""
    import onnx
    from onnx import helper, numpy_helper

    if high_precision not in HIGH_PRECISIONS:
        raise BadInputError(f"--high-precision must be one of {', '.join(HIGH_PRECISIONS)}, got {high_precision!r}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_OPSET:
        props = list(model.metadata_props)
        model = onnx.version_converter.convert_version(model, QDQ_OPSET)
        del model.metadata_props[:]
        model.metadata_props.extend(props)
    plan = qdq_plan(model, calibration, exclude)
    half = high_precision == "fp16"
    blocked = set(overflow_nodes(model, calibration, data_max)) if half else set()
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    initializers = {init.name: init for init in graph.initializer}
    new_nodes: list = []
    new_inits: list = []

    def scale_type(node_names) -> type:
        return np.float16 if half and not (set(node_names) & blocked) else np.float32

    for tensor, slots in plan.consumers.items():
        # consumers kept FP32 get their own pair, with float32 scales, so each DQ feeds its node directly
        groups: dict[bool, list[tuple[str, int]]] = defaultdict(list)
        for slot in slots:
            groups[slot[0] in blocked].append(slot)
        for is_blocked, group in groups.items():
            base = f"{tensor}_fp32" if is_blocked and len(groups) > 1 else tensor
            dtype = np.float32 if is_blocked or not half else np.float16
            scale = activation_scale(calibration.amax(tensor), dtype)
            new_inits += [
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(np.zeros((), np.int8), f"{base}_zero_point"),
            ]
            quant, dequant = f"{base}_QuantizeLinear", f"{base}_DequantizeLinear"
            zero = [f"{base}_scale", f"{base}_zero_point"]
            new_nodes += [
                helper.make_node("QuantizeLinear", [tensor, *zero], [f"{quant}_Output"], name=quant),
                helper.make_node("DequantizeLinear", [f"{quant}_Output", *zero], [f"{dequant}_Output"], name=dequant),
            ]
            if is_blocked:
                blocked.update({quant, dequant})
            for node_name, index in group:
                nodes[node_name].input[index] = f"{dequant}_Output"

    for node_name in plan.weighted:
        node = nodes[node_name]
        weight_name = node.input[1]
        axis = _weight_axis(node)
        weight = numpy_helper.to_array(initializers[weight_name])
        q, scale = quantize_weight(weight, axis, scale_type([node_name]))
        base = f"{weight_name}_{node_name}" if sum(weight_name in n.input for n in graph.node) > 1 else weight_name
        dequant = f"{base}_DequantizeLinear"
        new_inits += [
            numpy_helper.from_array(q, f"{base}_quantized"),
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point"),
        ]
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                [f"{dequant}_Output"],
                name=dequant,
                axis=axis,
            )
        )
        if node_name in blocked:
            blocked.add(dequant)
        node.input[1] = f"{dequant}_Output"

    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    fp32_nodes = sorted(name for name in blocked if name in nodes)
    if half:
        model = _to_float16(model, blocked)
    else:
        _toposort(model.graph)
    _tag(model, "int8", {"high_precision": high_precision, "fp32_nodes": fp32_nodes, "exclude": list(exclude)})
    return model, fp32_nodes, plan
