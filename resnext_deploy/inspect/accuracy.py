"""Accuracy site by site: the float model and the typed file compared at the same tensors, on the same images.

One pass of model.onnx and one of the typed file record every site's tensor, its consumers' outputs
and the consumers' other inputs, batch by batch (nothing is kept beyond running sums). Per site:

* **local** view: only this site typed. The float tensor is fake-quantized in numpy with the site's
  own scale (FP16: rounded to float16), and each consumer node alone runs on it with its typed weights;
  the error is read at the consumer's output, so an outlier channel that the next layer divides back
  (a function-preserving rescale) is weighed as that layer weighs it, not by its raw size;
* **accumulated** view: the typed file itself, at the site's tensor (the error that reaches it) and at
  its consumers' outputs; ``added`` is the share of the signal's energy the site's own layer adds on
  top of what reached it, so a site downstream of a bad one is not blamed for it.

The passes cost one forward pass of each file plus one run of each consumer node: together well under
three passes. :func:`site_errors` is the part the INT8 search ranks sites with (:mod:`..precision.search`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sites import CAST_SUFFIX, Site, initializer_arrays

SQNR_CAP_DB = 200.0  # an exact match (no error at all) reads as this many dB, so every figure stays finite
INT8_QMAX = 127
FP16_MAX = 65504.0
FP16_FLUSH = 2.0**-25  # half the smallest float16 subnormal: anything smaller rounds to zero
BATCH = 8


def sqnr_db(signal: float, error: float) -> float:
    """Signal-to-quantization-noise ratio in dB, capped at :data:`SQNR_CAP_DB` (and the same for a zero signal)."""
    if error <= 0.0 or signal <= 0.0:
        return SQNR_CAP_DB if error <= 0.0 else -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, max(-SQNR_CAP_DB, 10.0 * math.log10(signal / error))))


@dataclass
class Energy:
    """Running sums that give SQNR and cosine of a candidate against a reference over many batches."""

    signal: float = 0.0
    error: float = 0.0
    dot: float = 0.0
    candidate: float = 0.0
    count: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        # float32 BLAS dot products (memory-bound, a few ms per tensor); each batch's sums are added in float64
        ref = reference.astype(np.float32, copy=False).reshape(-1)
        cand = candidate.astype(np.float32, copy=False).reshape(-1)
        error = float(np.dot(cand - ref, cand - ref))
        if not math.isfinite(error):
            self.error = math.inf
            return
        self.signal += float(np.dot(ref, ref))
        self.error += error
        self.dot += float(np.dot(ref, cand))
        self.candidate += float(np.dot(cand, cand))
        self.count += ref.size

    @property
    def sqnr_db(self) -> float:
        return -SQNR_CAP_DB if not math.isfinite(self.error) else sqnr_db(self.signal, self.error)

    @property
    def noise_share(self) -> float:
        """Error energy over signal energy (the inverse of SQNR, linear)."""
        if not math.isfinite(self.error):
            return math.inf
        return self.error / self.signal if self.signal > 0 else (0.0 if self.error == 0 else math.inf)

    @property
    def cosine(self) -> float:
        if not math.isfinite(self.error):
            return 0.0
        norm = math.sqrt(self.signal * self.candidate)
        return 1.0 if norm == 0 and self.error == 0 else (self.dot / norm if norm > 0 else 0.0)


@dataclass
class SiteErrors:
    """What one site's passes measured (running sums until :meth:`finish`-ed by the caller)."""

    site: Site
    low: float = math.inf
    high: float = -math.inf
    values: int = 0
    clipped: int = 0
    flushed: int = 0
    rounding: float = 0.0  # squared error of the tensor's own fake quantization, summed
    local: Energy | None = None  # at the consumers' outputs, only this site typed
    by_consumer: dict[str, Energy] = field(default_factory=dict)  # the local view at each consumer alone
    reached: Energy = field(default_factory=Energy)  # the typed file's inputs of the site's consumers
    accumulated: Energy = field(default_factory=Energy)  # the typed file's consumers' outputs

    @property
    def step(self) -> float:
        """The site's quantization step: the INT8 scale, or float16's spacing at the largest value seen."""
        if self.site.scale is not None:
            return self.site.scale
        peak = max(abs(self.low), abs(self.high)) if self.values else 0.0
        return float(np.spacing(np.float16(min(peak, FP16_MAX)))) if peak > 0 else float(np.spacing(np.float16(0)))

    @property
    def rel_error(self) -> float:
        """RMS of the tensor's own rounding error in steps: about 0.29 (1/sqrt 12) for plain rounding."""
        return math.sqrt(self.rounding / self.values) / self.step if self.values and self.step > 0 else 0.0

    @property
    def added(self) -> float | None:
        """The share of signal energy this site's layer adds to what reached it (accumulated view)."""
        if self.local is None:
            return None
        added = self.accumulated.noise_share - self.reached.noise_share
        return 0.0 if math.isnan(added) else added  # both non-finite: nothing more added here


def fake_quantize(x: np.ndarray, site: Site) -> np.ndarray:
    """The tensor as the typed file sees it right after the site: INT8 round trip with the scale, or float16."""
    if site.precision == "int8" and site.scale:
        return (np.clip(np.round(x / site.scale), -INT8_QMAX, INT8_QMAX) * site.scale).astype(np.float32)
    if site.precision == "fp16":
        return x.astype(np.float16).astype(np.float32)
    return x


def _count_lost(x: np.ndarray, site: Site) -> tuple[int, int]:
    """Values clipped at the range's end, and nonzero values flushed to zero, by the site's type."""
    magnitude = np.abs(x)
    if site.precision == "int8" and site.scale:
        steps = magnitude / site.scale
        return int((steps > INT8_QMAX + 0.5).sum()), int(((steps < 0.5) & (magnitude > 0)).sum())
    if site.precision == "fp16":
        return int((magnitude > FP16_MAX).sum()), int(((magnitude < FP16_FLUSH) & (magnitude > 0)).sum())
    return 0, 0


def typed_weight(typed: Any, typed_inits: Mapping[str, np.ndarray], node_name: str, index: int) -> np.ndarray | None:
    """The value a typed file's node reads at input ``index`` when that input is constant (a dequantized or cast
    initializer), as float32; None when the input is an activation."""
    node = next((n for n in typed.graph.node if n.name == node_name), None)
    if node is None or index >= len(node.input):
        return None
    name = node.input[index]
    producers = {out: n for n in typed.graph.node for out in n.output}
    while name in producers and producers[name].op_type == "Cast":
        name = producers[name].input[0]
    if name in typed_inits:
        return typed_inits[name].astype(np.float32)
    producer = producers.get(name)
    if producer is None or producer.op_type != "DequantizeLinear" or producer.input[0] not in typed_inits:
        return None
    from ..precision.graph import node_attribute

    q = typed_inits[producer.input[0]].astype(np.float64)
    scale = typed_inits[producer.input[1]].astype(np.float64)
    zero = typed_inits[producer.input[2]].astype(np.float64) if len(producer.input) > 2 else np.zeros_like(scale)
    if scale.ndim:
        shape = [1] * q.ndim
        shape[node_attribute(producer, "axis", 1)] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def cpu_session(model: Any, as_written: bool = False) -> Any:
    """A CPU session; ``as_written`` turns ONNX Runtime's graph rewrites off, so that every recorded tensor is the
    one the file defines (a fused Q/DQ -> Conv kernel computes otherwise, and its unfused side output differs)."""
    from ..backends.onnxruntime import open_session

    return open_session(model, optimize=not as_written)


def typed_names(typed: Any, names: Sequence[str]) -> dict[str, str]:
    """Each float tensor name -> its name in the typed file (the float16 converter renames a kept node's output
    ``<name>_cast_to_fp16``); a tensor the typed file lacks is left out."""
    produced = {name for node in typed.graph.node for name in node.output} | {v.name for v in typed.graph.input}
    found = {}
    for name in names:
        for candidate in (name, f"{name}{CAST_SUFFIX}"):
            if candidate in produced:
                found[name] = candidate
                break
    return found


def recording(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` that also outputs ``names`` (untyped outputs: ONNX Runtime infers their types)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {value.name for value in copy.graph.output} | {value.name for value in copy.graph.input}
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in dict.fromkeys(names) if name not in present)
    return copy


@dataclass(frozen=True)
class Probe:
    """One consumer of one site inside the probe graph: its output there, and what it reads from the float pass."""

    node: str
    output: str  # the consumer's output in the float model (recorded, the reference)
    probed: str  # its output in the probe graph
    inputs: tuple[str, ...]  # the activations it reads, by their float names (the site's own among them)


class ProbeGraph:
    """Every consumer of every site in one graph, each reading its site's fake-quantized tensor and the typed file's
    constants (dequantized weights, corrected biases): one session and one run per batch for the local view."""

    def __init__(self, float_model: Any, typed: Any | None, sites: Sequence[Site]) -> None:
        import onnx
        from onnx import helper, numpy_helper

        float_nodes = {node.name: node for node in float_model.graph.node}
        float_inits = initializer_arrays(float_model)
        typed_inits = initializer_arrays(typed) if typed is not None else {}
        self.probes: dict[str, list[Probe]] = {}
        nodes, inits, feeds = [], [], {}
        used_inits: set[str] = set()
        for number, site in enumerate(sites):
            probes = []
            for name in site.consumers:
                node = float_nodes.get(name)
                if node is None:
                    continue
                renamed, reads = [], []
                for index, tensor in enumerate(node.input):
                    if tensor in float_inits:
                        value = typed_weight(typed, typed_inits, name, index) if typed is not None else None
                        if value is None:
                            used_inits.add(tensor)
                            renamed.append(tensor)
                        else:
                            renamed.append(f"probe{number}/{name}/{index}")
                            inits.append(numpy_helper.from_array(value, renamed[-1]))
                    elif tensor == site.tensor:
                        renamed.append(f"probe{number}/quantized")
                        feeds[renamed[-1]] = site.tensor
                        reads.append(tensor)
                    elif tensor:
                        renamed.append(tensor)
                        feeds[tensor] = tensor
                        reads.append(tensor)
                    else:
                        renamed.append("")
                probed = f"probe{number}/{name}/out"
                copy = helper.make_node(node.op_type, renamed, [probed], name=f"probe{number}/{name}")
                copy.attribute.extend(node.attribute)
                nodes.append(copy)
                probes.append(Probe(name, node.output[0], probed, tuple(reads)))
            self.probes[site.tensor] = probes
        inits += [numpy_helper.from_array(float_inits[name], name) for name in sorted(used_inits)]
        self.feeds = feeds  # probe graph input -> the float tensor (or, for ``/quantized``, the site) it takes
        self.session = None
        if nodes:
            inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in feeds]
            outputs = [onnx.ValueInfoProto(name=node.output[0]) for node in nodes]
            graph = helper.make_graph(nodes, "probes", inputs, outputs, inits)
            opsets, version = list(float_model.opset_import), float_model.ir_version
            self.session = cpu_session(helper.make_model(graph, opset_imports=opsets, ir_version=version))

    def run(self, values: Mapping[str, np.ndarray], quantized: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each probed output on one batch: ``values`` from the float pass, ``quantized`` each site's typed tensor."""
        if self.session is None:
            return {}
        feeds = {
            name: (quantized[tensor] if name.endswith("/quantized") else values[tensor]).astype(np.float32, copy=False)
            for name, tensor in self.feeds.items()
        }
        names = [output.name for output in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, feeds), strict=True))


def _batches(images: np.ndarray, size: int = BATCH) -> Iterator[np.ndarray]:
    for start in range(0, len(images), size):
        yield images[start : start + size]


@dataclass
class Passes:
    """What :func:`site_errors` measured: per-site errors, and both files' logits on the same images."""

    errors: list[SiteErrors]
    float_logits: np.ndarray
    typed_logits: np.ndarray


def site_errors(
    float_model: Any,
    typed: Any | None,
    sites: Sequence[Site],
    images: np.ndarray,
    accumulated: bool = True,
    advance: Callable[[int], None] | None = None,
) -> Passes:
    """Every site's local view (and, with ``accumulated`` and a ``typed`` file, its accumulated view) on ``images``.

    ``typed`` gives the typed constants (dequantized weights) and the accumulated view; the INT8 search
    passes its candidate graph with ``accumulated=False`` and reads only the local view, the ranking.
    """
    probed = [site for site in sites if site.kind != "block output" and site.precision != "fp32"]
    graph = ProbeGraph(float_model, typed, probed)
    probes = {site.tensor: graph.probes.get(site.tensor, []) for site in sites}
    input_name = float_model.graph.input[0].name
    wanted = [s.tensor for s in sites] + [n for ps in probes.values() for p in ps for n in [p.output, *p.inputs]]
    wanted = [name for name in dict.fromkeys(wanted) if name != input_name]
    float_session = cpu_session(recording(float_model, wanted))
    float_names = [o.name for o in float_session.get_outputs()]
    typed_session = None
    renamed: dict[str, str] = {}
    if accumulated and typed is not None:
        renamed = typed_names(typed, wanted)
        typed_session = cpu_session(recording(typed, list(renamed.values())), as_written=True)
        outputs = [o.name for o in typed_session.get_outputs()]
    errors = {
        site.tensor: SiteErrors(site, local=Energy() if probes[site.tensor] or site.precision == "fp32" else None)
        for site in sites
    }
    logits_f, logits_t = [], []
    for batch in _batches(images):
        values = dict(zip(float_names, float_session.run(None, {input_name: batch}), strict=True))
        values[input_name] = batch
        logits_f.append(values[float_names[0]])
        typed_values: dict[str, np.ndarray] = {}
        if typed_session is not None:
            ran = dict(zip(outputs, typed_session.run(None, {input_name: batch}), strict=True))
            typed_values = {name: ran[typed] for name, typed in renamed.items() if typed in ran}
            typed_values[input_name] = batch
            logits_t.append(ran[outputs[0]].astype(np.float32))
        quantized = {site.tensor: _tensor_figures(errors[site.tensor], values) for site in sites}
        local = graph.run(values, quantized)
        for site in sites:
            _views(errors[site.tensor], values, typed_values, probes[site.tensor], local)
        if advance is not None:
            advance(len(batch))
    empty = np.zeros((0, 0), np.float32)
    return Passes(
        list(errors.values()),
        np.concatenate(logits_f).astype(np.float32) if logits_f else empty,
        np.concatenate(logits_t) if logits_t else empty,
    )


def local_errors(float_model: Any, typed: Any, images: np.ndarray) -> dict[str, float]:
    """Each quantized node's own error from one recorded pass: the noise share at its output when only the pair
    it reads (and its weight) is INT8. The INT8 search ranks its sites (weighted nodes, residual Adds) by this."""
    from .sites import int8_sites

    sites = [site for site in int8_sites(typed, float_model) if site.kind != "block output"]
    scores: dict[str, float] = {}
    for errors in site_errors(float_model, typed, sites, images, accumulated=False).errors:
        for node, energy in errors.by_consumer.items():
            scores[node] = max(scores.get(node, 0.0), energy.noise_share)
    return scores


def _tensor_figures(result: SiteErrors, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """The site's range, clipped and flushed counts and rounding error on one batch; its typed tensor."""
    site = result.site
    x = values[site.tensor].astype(np.float32, copy=False)
    result.low = min(result.low, float(x.min()))
    result.high = max(result.high, float(x.max()))
    result.values += x.size
    clipped, flushed = _count_lost(x, site)
    result.clipped += clipped
    result.flushed += flushed
    quantized = fake_quantize(x, site)
    result.rounding += float(np.dot((quantized - x).reshape(-1), (quantized - x).reshape(-1)))
    return quantized


def _views(
    result: SiteErrors,
    values: Mapping[str, np.ndarray],
    typed: Mapping[str, np.ndarray],
    probes: list[Probe],
    local: Mapping[str, np.ndarray],
) -> None:
    """Add one batch to the site's local view (probed consumer outputs) and accumulated view (the typed file)."""
    site = result.site
    if result.local is not None:
        for probe in probes:
            result.local.add(values[probe.output], local[probe.probed])
            result.by_consumer.setdefault(probe.node, Energy()).add(values[probe.output], local[probe.probed])
        if not probes:  # kept in FP32: the site computes exactly as the float model does
            result.local.add(values[site.tensor], values[site.tensor])
    if typed and site.tensor in typed:
        inputs = dict.fromkeys([site.tensor, *(name for probe in probes for name in probe.inputs)])
        for name in [name for name in inputs if name in typed]:  # what reaches the layer, all its inputs
            result.reached.add(values[name], typed[name].astype(np.float32))
        outputs = [probe.output for probe in probes if probe.output in typed] or [site.tensor]
        for name in outputs:
            result.accumulated.add(values[name], typed[name].astype(np.float32))
