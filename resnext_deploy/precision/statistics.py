"""Streaming activation statistics: one ONNX Runtime pass over a data set, memory set by the batch alone.

The tensors of interest are added as graph outputs of ``model.onnx`` and ONNX Runtime runs it
batch by batch. Each batch updates, per tensor, a running min/max of every value and (for inputs of Conv,
Gemm, MatMul and Add) a fixed-size histogram of ``|x|``, then is dropped. The histogram counts from
``HISTOGRAM_VALUES`` to twice as many values of each image's tensor, taken at a fixed stride (see
:func:`histogram_stride`): counting is most of the statistics' cost (``np.bincount`` takes about 2 ns a
value). On ResNeXt-50 a sample of 32K values an image moves the entropy clips about as much as calibrating
on another 64 images does (2% at the median), the percentile clips by under 1%
(``scripts/calibration_sampling.py``). ONNX Runtime's
``HistogramCalibrater`` keeps every batch's activations until the end, so its memory grows with the
image count; here memory is set by the batch size alone. The histogram keeps ``NUM_BINS`` bins and
doubles its range when a batch exceeds it (merging bin pairs, exact because the edges align), so
it never grows either. From it come the per-tensor ranges: ``entropy`` (TensorRT's KL-divergence
search, as in NVIDIA's pytorch-quantization), ``percentile`` and ``minmax``.

A tensor read only by ReLUs (a Conv's or an Add's output before its ReLU) is not fetched: nothing
quantizes it, and its ReLU's output holds what the FP16 check needs of it (see :func:`relu_outputs`).
Fetching it would cost ONNX Runtime its Conv+ReLU fusion and a copy of about 40% of ResNeXt's
activations.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import image_inputs, load_onnx
from ..backends.onnxruntime import open_session
from ..data import Dataset
from ..environment import usable_cpus
from ..errors import BadInputError
from ..ui import progress

NUM_BINS = 2048  # TensorRT's and pytorch-quantization's histogram size
QUANTIZED_BINS = 128  # positive INT8 levels the entropy search maps the histogram onto
# their activation inputs may get Q/DQ (GlobalAveragePool: in ONNX Runtime's placement, precision/int8_ort.py)
HISTOGRAM_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "GlobalAveragePool")
BATCH_BYTES = 256 * 2**20  # activations fetched per batch; sets the calibration's memory, not the count
MAX_BATCH = 32
CHUNK = 1 << 18  # values a histogram scales and counts at a time: its 2 MB index buffer stays in cache
# a histogram counts all of an image's tensor up to twice this many values, else a strided sample of this to twice
# this many; min and max see every value
HISTOGRAM_VALUES = 1 << 15
MADV_POPULATE_WRITE = 23  # Linux 5.14+ (not in Python 3.11's mmap module): map a range's pages, writable, now
POPULATE_CHUNK = 16 << 20  # bytes mapped per call: between calls other threads may map memory too
# values a non-negative tensor's batch is probed for a 0 (its minimum then) before a min pass over every value
ZERO_PROBE = 4096
# ops whose output is non-negative where their (first) input is: they pick, average or move its values
NONNEGATIVE_KEEPING_OPS = (
    "MaxPool",
    "GlobalMaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Identity",
)

Log = Callable[[str], None]


class Scratch:
    """Reusable buffers for every histogram of a pass, one set per thread: a fresh array per tensor and batch
    costs page faults."""

    def __init__(self) -> None:
        self._local = threading.local()

    def buffer(self, dtype: type, size: int) -> np.ndarray:
        buffers = self._local.__dict__.setdefault("buffers", {})
        found = buffers.get(dtype)
        if found is None or found.size < size:
            found = buffers[dtype] = np.empty(size, dtype)
        return found[:size]


class AbsHistogram:
    """Counts of ``|x|`` in ``bins`` equal bins over ``[0, limit)``; memory is fixed whatever the data."""

    def __init__(self, bins: int = NUM_BINS) -> None:
        self.counts = np.zeros(bins, dtype=np.int64)
        self.limit = 0.0

    def add(self, values: np.ndarray, amax: float, scratch: Scratch | None = None, signed: bool = True) -> None:
        """Add flat float32 ``values`` (their ``|x|`` is counted) whose largest ``|x|`` is ``amax``.

        ``signed=False``: none is negative, so no ``abs`` pass. The values are taken ``CHUNK`` at a time:
        scaling (and ``|x|``) is one float32 pass whose result is truncated straight into ``scratch``'s
        integer buffer (``trunc(|x| * s) == trunc(|x * s|)`` exactly), the type ``np.bincount`` counts in,
        and that buffer stays in the core's cache between the two. The values at the top edge
        (``|x| == limit``) are folded into the last bin after counting.
        """
        bins = len(self.counts)
        if amax > self.limit:
            self._grow(amax)
        if self.limit == 0.0:
            self.counts[0] += values.size
            return
        scale = np.float32(bins / self.limit)
        scratch = scratch or Scratch()
        for start in range(0, values.size, CHUNK):
            part = values[start : start + CHUNK]
            index = scratch.buffer(np.intp, part.size)
            if signed:
                scaled = np.multiply(part, scale, out=scratch.buffer(np.float32, part.size))
                np.abs(scaled, out=index, casting="unsafe")  # truncation, as astype
            else:
                np.multiply(part, scale, out=index, casting="unsafe", dtype=np.float32)
            counts = np.bincount(index, minlength=bins)
            self.counts[: bins - 1] += counts[: bins - 1]
            self.counts[bins - 1] += counts[bins - 1 :].sum()

    def _grow(self, amax: float) -> None:
        """Double the range until it covers ``amax``, summing bin pairs: old edges stay new edges."""
        if self.limit == 0.0:
            zeros = int(self.counts.sum())  # values seen so far were all 0
            self.limit = float(amax)
            self.counts[:] = 0
            self.counts[0] = zeros
            return
        bins = len(self.counts)
        factor = 2 ** max(1, math.ceil(math.log2(amax / self.limit)))
        while self.limit * factor < amax:  # float rounding in log2
            factor *= 2
        merged = np.zeros(bins, dtype=np.int64)
        if factor < bins:
            merged[: bins // factor] = self.counts.reshape(bins // factor, factor).sum(axis=1)
        else:
            merged[0] = self.counts.sum()
        self.counts = merged
        self.limit *= factor

    def edge(self, index: int) -> float:
        return self.limit * index / len(self.counts)

    def percentile_amax(self, percentile: float) -> float:
        """The upper edge of the bin where the cumulative share of ``|x|`` reaches ``percentile``."""
        total = self.counts.sum()
        if total == 0 or self.limit == 0.0:
            return 0.0
        cdf = np.cumsum(self.counts) / total
        index = int(np.searchsorted(cdf, percentile / 100.0))
        return self.edge(min(index + 1, len(self.counts)))

    def entropy_amax(self, quantized_bins: int = QUANTIZED_BINS) -> float:
        """TensorRT's entropy calibration: the clip that minimizes KL(P || Q) of |x| quantized to 128 levels.

        As in NVIDIA's pytorch-quantization, bin 0 is set to bin 1's count first, so that the mass of
        exact zeros after a ReLU does not decide the threshold, and the last of equal minima wins.
        """
        counts = self.counts.copy()
        if counts.sum() == 0 or self.limit == 0.0:
            return 0.0
        counts[0] = counts[1]
        if len(counts) < quantized_bins:
            return self.edge(len(counts))
        divergences = _clip_divergences(counts, quantized_bins)
        return self.edge(quantized_bins + int(np.flatnonzero(divergences == divergences.min())[-1]))


def _clip_divergences(counts: np.ndarray, quantized_bins: int) -> np.ndarray:
    """KL(P || Q) of every clip bin ``i`` from ``quantized_bins`` to ``len(counts)``, at index ``i - quantized_bins``.

    For clip ``i``, P is ``counts[:i]`` with the tail ``counts[i:]`` folded into its last bin; Q puts bin
    ``k`` in group ``k * quantized_bins // i`` (a run of bins) and gives it the group's mean over its
    nonzero bins, 0 where the bin is 0. With Q's sum equal to the head's,
    ``KL = (sum p log p - sum p log q) / |P| + log(|head| / |P|)``, and ``sum p log q`` is, per group,
    the group's sum times the log of its mean: prefix sums of the counts (exact) give every clip's group sums and
    nonzero counts, a (clips x groups) array instead of a loop over clips. Infinite where P has mass
    and Q none (an empty head, or a tail folded into an empty last bin). A KL that is 0 (no tail, each
    group's nonzero bins equal) is set to exactly 0, as the bin by bin sum found it, so that ties at 0
    still go to the last clip.
    """
    bins = len(counts)
    clips = np.arange(quantized_bins, bins + 1)
    # group j of a clip: its bins from bounds[j] up to bounds[j + 1], ceil(j * clip / quantized_bins)
    bounds = -(-clips[:, None] * np.arange(quantized_bins + 1) // quantized_bins)
    starts, ends = bounds[:, :-1], bounds[:, 1:]
    nonzero = counts > 0
    values = counts.astype(np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(values)])  # sums of integer counts: exact below 2**53
    group_sums = prefix[ends] - prefix[starts]
    members = np.concatenate([[0], np.cumsum(nonzero)])
    group_members = members[ends] - members[starts]
    log_means = np.log(np.divide(group_sums, group_members, out=np.ones_like(group_sums), where=group_members > 0))
    x_log_x = values * np.log(values, out=np.zeros(bins), where=nonzero)
    head = prefix[clips]
    total = prefix[-1]
    tail = total - head
    last = values[clips - 1]
    folded = last + tail
    p_log_p = (
        np.concatenate([[0.0], np.cumsum(x_log_x)])[clips]
        - x_log_x[clips - 1]
        + folded * np.log(folded, out=np.zeros_like(folded), where=folded > 0)
    )
    p_log_q = (group_sums * log_means).sum(axis=1) + tail * log_means[:, -1]
    infinite = (head == 0) | ((last == 0) & (tail > 0)) | (total == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        divergences = (p_log_p - p_log_q) / total + np.log(head / total)
    divergences[infinite] = math.inf
    # 0 exactly where no tail is folded and no group holds two unequal nonzero bins: count, per group,
    # the consecutive nonzero bins of unequal counts that both lie in it (breaks[a]: a and the next differ)
    positions = np.flatnonzero(nonzero)
    breaks = np.zeros(bins + 1, np.int64)
    breaks[positions[:-1] + 1] = counts[positions[:-1]] != counts[positions[1:]]
    breaks = np.cumsum(breaks)  # breaks[a]: unequal pairs starting before bin a
    last_nonzero = np.maximum.accumulate(np.where(nonzero, np.arange(bins), -1))
    untailed = np.flatnonzero((tail == 0) & (head > 0))  # usually few clips: those past the last nonzero bin
    pairs_end = np.maximum(last_nonzero[ends[untailed] - 1], starts[untailed])  # pairs start before the last one
    uniform = (breaks[pairs_end] == breaks[starts[untailed]]).all(axis=1)
    divergences[untailed[uniform]] = 0.0
    return divergences


@dataclass
class TensorStats:
    """Running range of one tensor, with a histogram of ``|x|`` where the tensor may be quantized.

    ``nonnegative``: the graph makes the tensor ``>= 0`` (a ReLU's output, see :func:`nonnegative_tensors`).
    """

    minimum: float = math.inf
    maximum: float = -math.inf
    histogram: AbsHistogram | None = None
    nonnegative: bool = False

    def add(self, values: np.ndarray, scratch: Scratch | None = None, histogram_values: int = HISTOGRAM_VALUES) -> None:
        """Fold in one batch of ``values`` (samples along the first axis): every value into min/max, a sample of
        each image's values at :func:`histogram_stride` into the histogram.

        A non-negative tensor whose first ``ZERO_PROBE`` values hold a 0 has 0 as its minimum: its min pass, a
        read of every value, is skipped (ReLU outputs, most of ResNeXt's activations, are about half zeros).
        """
        high = float(values.max())  # NaN where any value is NaN
        flat = np.ravel(values)
        low = 0.0 if self.nonnegative and not flat[:ZERO_PROBE].all() else float(values.min())
        self.add_range(low, high)
        if self.histogram is not None and math.isfinite(low) and math.isfinite(high):
            amax = max(abs(low), abs(high))
            stride = histogram_stride(values.size // len(values) if values.ndim > 1 else 1, histogram_values)
            self.histogram.add(flat[::stride], amax, scratch=scratch, signed=low < 0)

    def add_range(self, low: float, high: float) -> None:
        """Fold in one batch's min and max; a NaN in either makes the range NaN for good."""
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)
        if math.isnan(low) or math.isnan(high):
            self.minimum = self.maximum = math.nan

    @property
    def max_abs(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))

    def amax(self, method: str, percentile: float) -> float:
        if method == "minmax" or self.histogram is None:
            return self.max_abs
        if method == "percentile":
            return min(self.histogram.percentile_amax(percentile), self.max_abs)
        return min(self.histogram.entropy_amax(), self.max_abs)


def histogram_stride(per_sample: int, histogram_values: int = HISTOGRAM_VALUES) -> int:
    """Every how many values of a tensor (``per_sample`` values an image) the histogram counts.

    1 up to twice ``histogram_values``; above, the smallest stride at or past ``per_sample // histogram_values``
    that shares no factor with ``per_sample``. Counted positions then step through every channel, row and
    column of the image in turn (a stride of 8 on a 56-wide map would see 7 of its 56 columns, the
    padded border's among them, again and again), and continue across the images of a batch.
    """
    stride = max(1, per_sample // histogram_values)
    while math.gcd(stride, per_sample) != 1:
        stride += 1
    return stride


@dataclass(frozen=True)
class Activations:
    """What a statistics pass reads of a graph: its float activations, those with histograms, their shapes."""

    names: list[str]  # graph inputs and computed tensors, in graph order; none read only by ReLUs
    histogram: list[str]  # those that may get Q/DQ: inputs of HISTOGRAM_OPS
    shapes: dict[str, tuple[int, ...]] | None  # per-sample shape of each; None where shape inference left one open
    nonnegative: frozenset[str] = frozenset()  # those the graph makes >= 0: see nonnegative_tensors

    @cached_property
    def per_sample(self) -> int | None:
        """Bytes of ``names`` per sample (float32), None where a shape is unknown."""
        return None if self.shapes is None else sum(4 * math.prod(self.shapes[name]) for name in self.names)


def relu_outputs(model) -> dict[str, list[str]]:
    """Tensors whose every reader is a ReLU (and that are no graph output) -> those ReLUs' outputs.

    Such a tensor needs no statistics of its own: no placement quantizes a ReLU's input, and for FP16 its
    positive side is its ReLU's output while its negative side, however large, leaves as 0 in either precision
    (ReLU maps float16's -inf to 0 too).
    """
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    outputs = {value.name for value in model.graph.output}
    return {
        name: [node.output[0] for node in nodes]
        for name, nodes in readers.items()
        if name and name not in outputs and all(node.op_type == "Relu" for node in nodes)
    }


def activation_tensors(model) -> Activations:
    """The graph's float activations (graph inputs, computed tensors) but those read only by ReLUs, and which get
    histograms; shapes come from shape inference."""
    from onnx import TensorProto, shape_inference

    constant = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes and Identity of an initializer are constants too
        if node.op_type == "Constant" or (node.input and all(name in constant for name in node.input if name)):
            constant.update(node.output)
    inferred = shape_inference.infer_shapes(_without_weights(model)).graph
    types = {value.name: value.type.tensor_type for value in [*inferred.input, *inferred.value_info, *inferred.output]}
    names = [value.name for value in model.graph.input] + [name for node in model.graph.node for name in node.output]
    before_relu = relu_outputs(model)
    tensors = [
        name
        for name in names
        if name
        and name not in constant
        and name not in before_relu
        and name in types
        and types[name].elem_type == TensorProto.FLOAT
    ]
    wanted = set(tensors)
    histogram = {
        name for node in model.graph.node if node.op_type in HISTOGRAM_OPS for name in node.input if name in wanted
    }
    shapes = {name: tuple(d.dim_value for d in types[name].shape.dim[1:]) for name in tensors}
    known = all(types[name].HasField("shape") and all(d > 0 for d in shapes[name]) for name in tensors)
    kept = [name for name in tensors if name in histogram]
    return Activations(tensors, kept, shapes if known else None, frozenset(nonnegative_tensors(model) & wanted))


def nonnegative_tensors(model) -> set[str]:
    """Tensors that cannot be negative by construction: ReLU outputs, and what NONNEGATIVE_KEEPING_OPS make of them."""
    found: set[str] = set()
    for node in model.graph.node:  # graph order is topological
        if node.op_type == "Relu" or (node.op_type in NONNEGATIVE_KEEPING_OPS and node.input[0] in found):
            found.add(node.output[0])
    return found


def _without_weights(model):
    """A copy of ``model``'s graph whose large initializers keep their name, type and dims but not their values.

    Shape inference serializes the model it is given and parses back its result: with the weights that is
    most of a second for ResNeXt-50, without them milliseconds; the copy leaves the weights out instead of
    copying them and clearing them after (a tenth of a second). Small initializers (a Reshape's shape, a
    Resize's scales) keep their values: output shapes may depend on them.
    """
    from onnx import GraphProto, ModelProto, TensorProto

    graph = model.graph
    initializers = [
        tensor
        if math.prod(tensor.dims) < 1024
        else TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type)
        for tensor in graph.initializer
    ]
    light = GraphProto(
        name=graph.name,
        node=graph.node,
        input=graph.input,
        output=graph.output,
        value_info=graph.value_info,
        initializer=initializers,
        sparse_initializer=graph.sparse_initializer,
    )
    return ModelProto(
        ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions, graph=light
    )


@dataclass(frozen=True)
class ActivationPass:
    """One pass over a model's activations: what it reads, and its batches (the session opens at the first)."""

    found: Activations
    graph_inputs: list[str]  # the images: given, not fetched
    fetched: list[str]
    batches: Iterator[tuple[np.ndarray, list[np.ndarray]]]


def activation_pass(
    model_path: str | Path, dataset: Dataset, what: str, batch_bytes: int = BATCH_BYTES
) -> ActivationPass:
    """The pass calibration makes over ``model_path``: the file read once, a batch of about ``batch_bytes``."""
    serialized = Path(model_path).read_bytes()
    model = load_onnx(model_path, serialized=serialized)
    found = activation_tensors(model)
    graph_inputs = [value.name for value in model.graph.input if value.name in found.names]
    fetched = [name for name in found.names if name not in graph_inputs]
    size = batch_size(found.per_sample, batch_bytes)
    batches = run_batches(model, fetched, dataset, size, what, model_path, serialized=serialized, shapes=found.shapes)
    return ActivationPass(found, graph_inputs, fetched, batches)


def collect_statistics(
    model_path: str | Path,
    dataset: Dataset,
    log: Log = print,
    batch_bytes: int = BATCH_BYTES,
    histogram_values: int = HISTOGRAM_VALUES,
) -> tuple[dict[str, TensorStats], int]:
    """Run ``model_path`` over ``dataset`` once and return per-tensor statistics and the samples read.

    ``histogram_values``: how many values of an image's tensor its histogram counts (see :func:`histogram_stride`).

    A batch's tensors are folded in on a pool of threads, one tensor per task (numpy's passes release the
    GIL; ONNX Runtime is idle meanwhile), before the next batch overwrites them, so memory depends on the
    batch size (chosen to fetch about ``batch_bytes``), never on the number of images.
    """
    reading = activation_pass(model_path, dataset, f"calibrating on {dataset.count} samples", batch_bytes)
    found = reading.found
    histogram = set(found.histogram)
    stats = {
        name: TensorStats(
            histogram=AbsHistogram() if name in histogram else None, nonnegative=name in found.nonnegative
        )
        for name in found.names
    }
    scratch = Scratch()
    seen = 0

    def fold(job: tuple[str, np.ndarray]) -> None:
        name, value = job
        stats[name].add(value, scratch=scratch, histogram_values=histogram_values)

    with ThreadPoolExecutor(max(1, usable_cpus())) as pool:
        for images, values in reading.batches:
            jobs = list(zip(reading.fetched, values, strict=True)) + [(name, images) for name in reading.graph_inputs]
            jobs.sort(key=lambda job: -job[1].size)  # the largest first: the threads finish together
            for _ in pool.map(fold, jobs):  # raises the first error of any job
                pass
            del values, jobs
            seen += len(images)
    skipped = dataset.skipped_summary()
    if skipped:
        log(f"warning: {skipped}")
    return stats, seen + len(dataset.skipped)


def batch_size(per_sample: int | None, batch_bytes: int = BATCH_BYTES) -> int:
    """Images per batch so that about ``batch_bytes`` of activations are fetched (MAX_BATCH when sizes are unknown)."""
    return MAX_BATCH if per_sample is None else max(1, min(MAX_BATCH, batch_bytes // max(per_sample, 1)))


def run_batches(
    model: Any,
    fetched: list[str],
    dataset: Dataset,
    size: int,
    what: str,
    model_path: str | Path,
    *,
    serialized: bytes | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield each batch's images and the ``fetched`` tensors of ``model`` (a ModelProto, not changed).

    ``serialized``: ``model``'s bytes as read from its file, which the outputs are appended to instead of
    serializing the weights again. ``shapes``: the per-sample shape of every fetched tensor; with them
    ONNX Runtime writes into buffers allocated once and the tensors yielded are views of them, valid until
    the next batch (without, ONNX Runtime allocates every output per batch and the binding copies each into a new
    array: at batch 8 on ResNeXt-50 about a gigabyte per batch, paid in page faults and copies). A model
    with a fixed batch size is fed padded batches, and the padding's values are dropped.
    """
    static_batch = _static_batch(model)
    rows = static_batch or size
    buffer_shapes = None
    if fetched and shapes is not None and all(name in shapes for name in fetched):
        buffer_shapes = [(rows, *shapes[name]) for name in fetched]
    # the buffers' pages are mapped while the model's bytes are put together and ONNX Runtime builds the session
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_populated, buffer_shapes) if buffer_shapes else None
        existing = {value.name for value in model.graph.output}
        source = with_outputs(model, [name for name in fetched if name not in existing], serialized)
        del model, serialized  # the session holds what it needs
        # idle pool threads sleep at once: between runs the caller's numpy work needs the cores they would spin on
        # no memory pattern: planned from the first run, it is allocated anew at the second, paying its faults twice;
        # priority order: ONNX Runtime runs more of its copies of fetched tensors out of its blocked layout early,
        # so fewer blocked tensors are alive at once (ResNeXt-50, batch 8: about 100K page faults at the first run,
        # not 120K)
        session = open_session(
            source, allow_spinning=False, memory_pattern=False, priority_order=True, origin=model_path
        )
        del source
        buffers = pending.result() if pending else None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise BadInputError(f"{model_path} must have one NCHW image input; found {[i.name for i in inputs]}")
    feed = inputs[0]
    fetch = _bound_fetch(session, feed.name, fetched, buffers) if buffers is not None else None
    with progress(dataset.count, what) as advance:
        for batch in dataset.batches(rows):
            images = batch.images
            _check_fits(feed, images, model_path)
            real = len(images)
            if static_batch and real < static_batch:  # pad, then drop the padding's activations
                images = np.concatenate([images, np.zeros((static_batch - real, *images.shape[1:]), images.dtype)])
            if fetch is not None:
                values = fetch(images)
            else:  # none fetched: ONNX Runtime would run them all
                values = session.run(fetched, {feed.name: images}) if fetched else []
            yield images[:real], [np.asarray(value)[:real] for value in values]
            del values
            advance(real)


def with_outputs(model: Any, names: list[str], serialized: bytes | None = None) -> bytes:
    """``model`` serialized with ``names`` appended to its graph outputs.

    Protobuf merges concatenated messages (a repeated field appends), so with ``serialized`` (``model``'s own
    bytes) the outputs are a few bytes added to them: the weights are neither copied nor serialized again.
    """
    import onnx

    extra = onnx.ModelProto(graph=onnx.GraphProto(output=[onnx.ValueInfoProto(name=name) for name in names]))
    return (serialized if serialized is not None else model.SerializeToString()) + extra.SerializeToString()


def _bound_fetch(
    session: Any, feed: str, fetched: list[str], buffers: list[np.ndarray]
) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A run of ``session`` whose ``fetched`` outputs land in ``buffers`` (float32, allocated once, a batch each)."""
    binding = session.io_binding()

    def run(images: np.ndarray) -> list[np.ndarray]:
        binding.bind_cpu_input(feed, np.ascontiguousarray(images))
        views = [buffer[: len(images)] for buffer in buffers]  # a shorter last batch: the leading rows
        for name, view in zip(fetched, views, strict=True):
            binding.bind_output(name, "cpu", 0, np.float32, list(view.shape), view.ctypes.data)
        session.run_with_iobinding(binding)
        return views

    return run


def _static_batch(model: Any) -> int | None:
    """The fixed batch size of ``model``'s image input (its first), None where it is free; how many inputs it has
    is the session's check, after this."""
    image = next(iter(image_inputs(model)), None)
    dims = image.type.tensor_type.shape.dim if image is not None else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def _populated(shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Float32 arrays of ``shapes``, 64-byte aligned, in one anonymous mapping whose pages are mapped at once.

    On Linux one ``madvise(MADV_POPULATE_WRITE)`` maps every page (on a kernel before 5.14, a write to each page
    does), so that ONNX Runtime's first writes do not fault them in one at a time (at batch 8 on ResNeXt-50 about
    160,000 faults, a second in a VM). The call goes through ctypes, which lets go of the GIL: the caller builds its
    session meanwhile (``mmap``'s own ``MAP_POPULATE`` would hold the GIL throughout). Elsewhere, plain arrays.
    """
    sizes = [-(-math.prod(shape) // 16) * 16 for shape in shapes]  # whole 64-byte lines
    if not sys.platform.startswith("linux") or not sum(sizes):
        return [np.empty(shape, np.float32) for shape in shapes]
    mapping = mmap.mmap(-1, 4 * sum(sizes), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    flat = np.frombuffer(mapping, np.float32)  # the arrays keep the mapping alive
    for start in range(0, flat.nbytes, POPULATE_CHUNK):
        if _madvise(flat.ctypes.data + start, min(POPULATE_CHUNK, flat.nbytes - start), MADV_POPULATE_WRITE) != 0:
            flat.view(np.uint8)[start :: mmap.PAGESIZE] = 0  # numpy's fill lets go of the GIL too
            break
    starts = np.cumsum([0, *sizes[:-1]])
    return [flat[start : start + math.prod(shape)].reshape(shape) for start, shape in zip(starts, shapes, strict=True)]


def _madvise(address: int, length: int, advice: int) -> int:
    """libc's ``madvise`` through ctypes (0 on success): unlike ``mmap.madvise``, the call releases the GIL."""
    return _libc_madvise()(address, length, advice)


@cache
def _libc_madvise() -> Any:
    """libc's ``madvise``, looked up and typed once."""
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def _check_fits(feed: Any, images: np.ndarray, model_path: str | Path) -> None:
    """Refuse a model whose fixed C, H or W differ from the preprocessed data (a file swapped behind the manifest)."""
    declared = feed.shape[1:]
    if any(isinstance(d, int) and d != actual for d, actual in zip(declared, images.shape[1:], strict=True)):
        raise BadInputError(
            f"{model_path} takes input {feed.name!r} of shape {feed.shape}, but its model's preprocessing gives "
            f"{'x'.join(map(str, images.shape[1:]))} images; the file does not fit its manifest entry: export again"
        )
