"""Calibration data and streaming activation statistics, saved in ``DIR/calibration.json``.

Which data: ``--calib-dir`` (an image folder or a ``.npy``/``.npz`` of preprocessed arrays), split
in a seeded, class-balanced order into calibration and held-out check subsets (:func:`split_datasets`);
for the bundled demo model its bundled calibration and validation splits when nothing is given.
INT8 needs real data for any other model; FP16 only needs activation ranges and falls back to seeded
synthetic inputs (and says so).

How: the tensors of interest are added as graph outputs of ``model.onnx`` and ONNX Runtime runs it
batch by batch. Each batch updates, per tensor, a running min/max and (for inputs of Conv, Gemm,
MatMul and Add) a fixed-size histogram of ``|x|``, then is dropped. ONNX Runtime's
``HistogramCalibrater`` keeps every batch's activations until the end, so its memory grows with the
image count; here memory is set by the batch size alone. The histogram keeps ``NUM_BINS`` bins and
doubles its range when a batch exceeds it (merging bin pairs, exact because the edges align), so
it never grows either. From it come the per-tensor ranges: ``entropy`` (TensorRT's KL-divergence
search, as in NVIDIA's pytorch-quantization), ``percentile`` and ``minmax``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import (
    CALIBRATION_NAME,
    cache_error,
    is_number,
    load_onnx,
    now_iso,
    read_json,
    sha256_file,
    write_json,
)
from ..backends.onnxruntime import session_options
from ..data import Dataset, open_dataset
from ..errors import BadInputError, one_line
from ..parity import MIN_CHECK_SAMPLES
from ..schemas import SCHEMA_VERSION
from ..source import ModelSource, demo_data
from ..ui import progress

CALIBRATION_FORMAT = 2  # 2: every method's clip per tensor
METHODS = ("entropy", "minmax", "percentile")
DEFAULT_METHOD = "entropy"
DEFAULT_PERCENTILE = 99.99
DEFAULT_CALIB_COUNT = 512  # NVIDIA suggests about 500 images for ImageNet-sized calibration
NUM_BINS = 2048  # TensorRT's and pytorch-quantization's histogram size
QUANTIZED_BINS = 128  # positive INT8 levels the entropy search maps the histogram onto
HISTOGRAM_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")  # their activation inputs may get Q/DQ
BATCH_BYTES = 256 * 2**20  # activations fetched per batch; sets the calibration's memory, not the count
MAX_BATCH = 32
HELDOUT_MAX = 500  # held-out images checked at most, by default
SYNTHETIC_CHECK_COUNT = 64
CHECK_FRACTION = 0.10  # share of the user's images held out for the check (at least MIN_CHECK_SAMPLES)

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# Which data


def check_share(available: int, min_check: int) -> int:
    """How many of ``available`` user images the held-out check takes: 10% of them, at least ``min_check``."""
    return max(min_check, math.ceil(available * CHECK_FRACTION))


def split_datasets(
    source: ModelSource,
    precision: str,
    calib_source: str | Path | None,
    calib_count: int,
    check_source: str | Path | None = None,
    check_count: int | None = None,
    min_check: int = MIN_CHECK_SAMPLES,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """The calibration images and the held-out check images, never overlapping.

    * ``check_source`` (``--check-data``): the check uses it; calibration takes ``calib_source`` whole.
    * ``calib_source`` alone: its seeded order is split once; the last ``max(min_check, 10%)`` samples
      are the check set, the calibration takes up to ``calib_count`` from the rest. The split does not
      depend on ``calib_count``, so changing it never moves an image from the check into calibration.
    * the demo model without data: its bundled calibration and validation splits.
    * no image at all: FP16 calibrates and checks on seeded synthetic inputs (said loudly by the caller:
      the check shows numeric parity only); INT8 refuses, since its scales would mean nothing.
    """
    if calib_count < 1:
        raise BadInputError(f"--calib-count must be at least 1, got {calib_count}")
    pre = source.preprocessing
    demo = demo_data(source) if calib_source is None and source.is_demo else None
    if demo is not None:
        if not demo.calib.is_dir():
            raise BadInputError(f"the demo calibration images {demo.calib} are missing; pass --calib-dir")
        calib = open_dataset(demo.calib, pre, calib_count, seed)
        check = open_dataset(check_source or demo.val, pre, check_count or HELDOUT_MAX, seed)
        return calib, check
    if calib_source is None:
        if precision == "int8":
            raise BadInputError(
                f"INT8 needs calibration images for {source.arch}: pass --calib-dir with a folder of images "
                "like the ones the model will see (or a .npy/.npz of preprocessed arrays)"
            )
        calib = open_dataset(None, pre, min(calib_count, SYNTHETIC_CHECK_COUNT), seed)
        if check_source is not None:
            return calib, open_dataset(check_source, pre, check_count or HELDOUT_MAX, seed)
        return calib, open_dataset(None, pre, check_count or SYNTHETIC_CHECK_COUNT, seed + 1)
    if check_source is not None:
        return open_dataset(calib_source, pre, calib_count, seed), open_dataset(
            check_source, pre, check_count or HELDOUT_MAX, seed
        )
    available = open_dataset(calib_source, pre, None, seed).available
    held = check_share(available, min_check)
    if available - held < 1:
        raise BadInputError(
            f"{calib_source} holds {available} samples: the held-out check takes {held} "
            f"(10%, at least {min_check}) and calibration needs the rest; add images or pass --check-data"
        )
    calib = open_dataset(calib_source, pre, min(calib_count, available - held), seed)
    check = open_dataset(calib_source, pre, min(check_count or held, held), seed, offset=available - held)
    return calib, check


# ----------------------------------------------------------------------------------------------
# Streaming statistics


class AbsHistogram:
    """Counts of ``|x|`` in ``bins`` equal bins over ``[0, limit)``; memory is fixed whatever the data."""

    def __init__(self, bins: int = NUM_BINS) -> None:
        self.counts = np.zeros(bins, dtype=np.int64)
        self.limit = 0.0

    def add(self, magnitudes: np.ndarray, amax: float) -> None:
        """Add flat ``|x|`` values whose maximum is ``amax`` (known to the caller already)."""
        bins = len(self.counts)
        if amax > self.limit:
            self._grow(amax)
        if self.limit == 0.0:
            self.counts[0] += magnitudes.size
            return
        index = (magnitudes * np.float32(bins / self.limit)).astype(np.int32)
        np.minimum(index, bins - 1, out=index)
        self.counts += np.bincount(index, minlength=bins)

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
        counts = self.counts.astype(np.float64)
        if counts.sum() == 0 or self.limit == 0.0:
            return 0.0
        counts[0] = counts[1]
        tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tail[i] = counts[i:].sum()
        best_i, best_kl = len(counts), math.inf
        for i in range(quantized_bins, len(counts) + 1):
            head = counts[:i]
            reference = head.copy()
            reference[-1] += tail[i]
            group = np.arange(i) * quantized_bins // i
            nonzero = head != 0
            sums = np.bincount(group, weights=head, minlength=quantized_bins)
            members = np.bincount(group, weights=nonzero, minlength=quantized_bins)
            average = np.divide(sums, members, out=np.zeros_like(sums), where=members > 0)
            candidate = np.where(nonzero, average[group], 0.0)
            kl = _kl_divergence(reference, candidate)
            if kl <= best_kl:
                best_i, best_kl = i, kl
        return self.edge(best_i)


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return math.inf
    p, q = p / p_total, q / q_total
    support = p > 0
    if np.any(q[support] == 0):
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


@dataclass
class TensorStats:
    """Running range of one tensor, with a histogram of ``|x|`` where the tensor may be quantized."""

    minimum: float = math.inf
    maximum: float = -math.inf
    histogram: AbsHistogram | None = None

    def add(self, values: np.ndarray) -> None:
        low, high = float(values.min()), float(values.max())
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)
        if math.isnan(low) or math.isnan(high):
            self.minimum = self.maximum = math.nan
        if self.histogram is not None and math.isfinite(low) and math.isfinite(high):
            self.histogram.add(np.abs(values).ravel(), max(abs(low), abs(high)))

    @property
    def max_abs(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))

    def amax(self, method: str, percentile: float) -> float:
        if method == "minmax" or self.histogram is None:
            return self.max_abs
        if method == "percentile":
            return min(self.histogram.percentile_amax(percentile), self.max_abs)
        return min(self.histogram.entropy_amax(), self.max_abs)


def activation_tensors(model) -> tuple[list[str], list[str], int | None]:
    """The graph's float activations (graph inputs, computed tensors), those that get histograms, bytes per sample.

    The byte count comes from shape inference and is None where a shape is not known.
    """
    from onnx import TensorProto, shape_inference

    constant = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes and Identity of an initializer are constants too
        if node.op_type == "Constant" or (node.input and all(name in constant for name in node.input if name)):
            constant.update(node.output)
    inferred = shape_inference.infer_shapes(model).graph
    types = {value.name: value.type.tensor_type for value in [*inferred.input, *inferred.value_info, *inferred.output]}
    names = [value.name for value in model.graph.input] + [name for node in model.graph.node for name in node.output]
    tensors = [
        name
        for name in names
        if name and name not in constant and name in types and types[name].elem_type == TensorProto.FLOAT
    ]
    wanted = set(tensors)
    histogram = {
        name for node in model.graph.node if node.op_type in HISTOGRAM_OPS for name in node.input if name in wanted
    }
    per_sample: int | None = 0
    for name in tensors:
        dims = [d.dim_value for d in types[name].shape.dim[1:]]
        if not types[name].HasField("shape") or any(d <= 0 for d in dims):
            per_sample = None
            break
        per_sample += 4 * math.prod(dims)
    return tensors, [name for name in tensors if name in histogram], per_sample


def collect_statistics(
    model_path: str | Path,
    dataset: Dataset,
    log: Log = print,
    batch_bytes: int = BATCH_BYTES,
) -> tuple[dict[str, TensorStats], int]:
    """Run ``model_path`` over ``dataset`` once and return per-tensor statistics and the samples read.

    Every batch's activations are folded into fixed-size statistics and released before the next
    batch is decoded, so memory depends on the batch size (chosen to fetch about ``batch_bytes``),
    never on the number of images.
    """
    import onnx
    import onnxruntime as ort

    model = load_onnx(model_path)
    tensors, histogram, per_sample = activation_tensors(model)
    graph_inputs = {value.name for value in model.graph.input}
    fetched = [name for name in tensors if name not in graph_inputs]
    outputs = {value.name for value in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in fetched if name not in outputs)
    batch_size = MAX_BATCH if per_sample is None else max(1, min(MAX_BATCH, batch_bytes // max(per_sample, 1)))
    try:
        session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
        raise BadInputError(f"ONNX Runtime cannot load {model_path}: {one_line(exc)}") from None
    del model
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise BadInputError(f"{model_path} must have one NCHW image input; found {[i.name for i in inputs]}")
    feed = inputs[0]
    static_batch = feed.shape[0] if isinstance(feed.shape[0], int) else None
    batch_size = static_batch or batch_size
    stats = {name: TensorStats(histogram=AbsHistogram() if name in histogram else None) for name in tensors}

    seen = 0
    with progress(dataset.count, f"calibrating on {dataset.count} samples") as advance:
        for batch in dataset.batches(batch_size):
            images = batch.images
            _check_fits(feed, images, model_path)
            real = len(images)
            if static_batch and real < static_batch:  # pad, then drop the padding's activations below
                images = np.concatenate([images, np.zeros((static_batch - real, *images.shape[1:]), images.dtype)])
            values = session.run(fetched, {feed.name: images})
            stats[feed.name].add(images[:real])
            for name, value in zip(fetched, values, strict=True):
                stats[name].add(np.asarray(value)[:real])
            del values
            seen += real
            advance(real)
    skipped = dataset.skipped_summary()
    if skipped:
        log(f"warning: {skipped}")
    return stats, seen + len(dataset.skipped)


def _check_fits(feed: Any, images: np.ndarray, model_path: str | Path) -> None:
    """Refuse a model whose fixed C, H or W differ from the preprocessed data (a file swapped behind the manifest)."""
    declared = feed.shape[1:]
    if any(isinstance(d, int) and d != actual for d, actual in zip(declared, images.shape[1:], strict=True)):
        raise BadInputError(
            f"{model_path} takes input {feed.name!r} of shape {feed.shape}, but its model's preprocessing gives "
            f"{'x'.join(map(str, images.shape[1:]))} images; the file does not fit its manifest entry: export again"
        )


# ----------------------------------------------------------------------------------------------
# The saved result


@dataclass
class Calibration:
    """Per-tensor ranges from one calibration run and what they were computed from."""

    model_sha256: str
    fingerprint: str
    description: str
    count: int
    consumed: int
    method: str
    percentile: float
    tensors: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    created: str = ""

    def amax(self, name: str) -> float:
        """The calibrated clip for a quantized tensor: ``|x|`` above it saturates."""
        try:
            return self.tensors[name]["amax"]
        except KeyError:
            raise BadInputError(
                f"{CALIBRATION_NAME} has no range for tensor {name!r}; delete it and run again"
            ) from None

    def with_method(self, method: str) -> Calibration:
        """The same statistics with ``method``'s clips as the ranges (all methods are computed at once)."""
        check_method(method, self.percentile)
        tensors = {
            name: {**entry, "amax": entry.get(f"amax_{method}", entry["amax"])} if "amax" in entry else entry
            for name, entry in self.tensors.items()
        }
        return replace(self, method=method, tensors=tensors)

    def max_abs(self, name: str) -> float | None:
        entry = self.tensors.get(name)
        return None if entry is None else max(abs(entry["min"]), abs(entry["max"]))

    def stale_reason(self, model_sha256: str, dataset: Dataset, method: str, percentile: float) -> str | None:
        """Why this calibration does not fit a request, or None when it does."""
        if self.model_sha256 != model_sha256:
            return "model.onnx changed"
        if self.fingerprint != dataset.fingerprint or self.count != dataset.count:
            return f"it was made on other data ({self.description})"
        if self.method != method:
            return f"it was made with --calib-method {self.method}"
        if method == "percentile" and self.percentile != percentile:
            return f"it was made with --percentile {self.percentile}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "format": CALIBRATION_FORMAT, **asdict(self)}

    def problem(self) -> str | None:
        """What in a loaded file this tool would never have written (a hand edit), field by field, or None."""
        texts = ("model_sha256", "fingerprint", "description", "method", "created")
        if bad := [name for name in texts if not isinstance(getattr(self, name), str)]:
            return f"has {bad[0]} that is not a string"
        if self.method not in METHODS:
            return f"has an unknown method {self.method!r}"
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (self.count, self.consumed)):
            return "has a count that is not a non-negative integer"
        if not is_number(self.percentile) or not is_number(self.seconds):
            return "has a percentile or seconds that is not a finite number"
        if not isinstance(self.tensors, dict):
            return "has tensors that are not an object"
        for name, entry in self.tensors.items():
            if not isinstance(entry, dict) or not all(is_number(v) for v in entry.values()):
                return f"has tensor {str(name)[:80]!r} with values that are not finite numbers"
            if not is_number(entry.get("min")) or not is_number(entry.get("max")) or entry["min"] > entry["max"]:
                return f"has tensor {str(name)[:80]!r} without a valid min <= max"
            peak = max(abs(entry["min"]), abs(entry["max"]))
            clips = [v for key, v in entry.items() if key.startswith("amax")]
            if any(v < 0 or v > peak * 1.001 or (v == 0 and peak > 0) for v in clips):
                return f"has tensor {str(name)[:80]!r} with a range that is negative, zero or beyond its min/max"
        return None

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ValueError("not a calibration file of this version")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def calibrate(
    directory: str | Path,
    model_path: str | Path,
    dataset: Dataset,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    log: Log = print,
) -> Calibration:
    """Calibrate ``model_path`` on ``dataset`` or reuse ``DIR/calibration.json`` when it was made for the same.

    Same means the same model.onnx (sha256), the same data (fingerprint and count) and the same
    method (and percentile); a file made for anything else is recomputed, and the log says why.
    """
    check_method(method, percentile)
    path = Path(directory) / CALIBRATION_NAME
    model_sha = sha256_file(model_path)
    if path.exists():
        try:
            saved = Calibration.from_dict(read_json(path))
        except (BadInputError, ValueError, KeyError, TypeError):
            reason = "it is unreadable"
        else:
            if problem := saved.problem():
                raise cache_error(path, problem)
            reason = saved.stale_reason(model_sha, dataset, method, percentile)
        if reason is None:
            log(f"reusing {path} ({saved.method}, {saved.count} samples of {saved.description})")
            return saved
        log(f"{path} is stale ({reason}); calibrating again")
    started = time.perf_counter()
    stats, consumed = collect_statistics(model_path, dataset, log)
    tensors = {}
    for name, stat in stats.items():
        entry = {"min": stat.minimum, "max": stat.maximum}
        if stat.histogram is not None:  # every method's clip, so the INT8 search can try them without rerunning
            entry.update({f"amax_{m}": stat.amax(m, percentile) for m in METHODS})
            entry["amax"] = entry[f"amax_{method}"]
        tensors[name] = entry
    result = Calibration(
        model_sha256=model_sha,
        fingerprint=dataset.fingerprint,
        description=dataset.description,
        count=dataset.count,
        consumed=consumed,
        method=method,
        percentile=percentile,
        tensors=tensors,
        seconds=round(time.perf_counter() - started, 2),
        created=now_iso(),
    )
    write_json(path, result.to_dict())
    log(f"calibrated {len(stats)} tensors ({method}) on {dataset.description} in {result.seconds:.1f} s; wrote {path}")
    return result


def check_method(method: str, percentile: float) -> None:
    if method not in METHODS:
        raise BadInputError(f"unknown --calib-method {method!r}; choose one of: {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise BadInputError(f"--percentile must be in (50, 100], got {percentile}")
