"""Accuracy-aware INT8: when the held-out check fails, find the Q/DQ sites INT8 hurts and keep them in float.

A few sites cause most INT8 damage (an activation with outlier channels makes its per-tensor
scale crush every other channel). TensorRT 11 has no precision constraints to search with, so the
search runs here, on explicit Q/DQ graphs in ONNX Runtime:

1. every calibration method (entropy, percentile, minmax; the statistics hold all three) is
   checked, and the best kept;
2. the remedies that keep every layer in INT8: cross-layer equalization (:mod:`.equalize`), then bias
   correction (:mod:`.bias`) of the best graph so far, each kept when it scores better;
3. the Q/DQ sites are ranked by their own error from one recorded pass (the per-site code of ``inspect``,
   :mod:`resnext_deploy.inspect.accuracy`), and the worst few are confirmed on the check set: the logit
   error of the graph with this one site in INT8 and everything else in FP32. A site is a weighted layer
   (its weight and data input) or a residual Add (its shortcut input): outliers on a shortcut reach the
   Add's pair, which keeping a Conv in float never removes;
4. the most sensitive sites are kept out of INT8 greedily until the tolerance holds or the budget
   (a share of the sites, a time limit) runs out; when it runs out, a few more checks find the
   smallest budget that would pass, for the failure message.

The sensitivities are saved in ``DIR/int8_search.json``, keyed by model, data and method only (a new
budget or tolerance reuses them), also when the time limit cut the ranking short (a rerun resumes).
"""

from __future__ import annotations

import glob
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_path, cache_error, is_number, read_json, write_json
from ..backends.onnxruntime import open_session
from ..data import Dataset
from ..errors import BadInputError
from ..parity import Parity, Tolerance, compare
from ..ui import progress
from .bias import bias_shifts, correct_biases
from .calibration import METHODS, Calibration, Log, calibrate
from .equalize import equalize
from .graph import save_model
from .int8 import int8_model, qdq_plan
from .options import PrecisionOptions

SEARCH_NAME = "int8_search.json"
EQUALIZED_DIR = "int8_equalized"  # the equalized graph and its calibration, reused by a rerun
SEARCH_FORMAT = 3  # 3: every Q/DQ site (weighted layers, residual Adds); keyed by model, data and method only
SENSITIVITY_SAMPLES = 8  # check samples the per-site error is measured on (a continuous measure needs few)
RANKING_SHOWN = 10
EARLY_SAMPLES = 16  # check images a calibration method is first tried on; one that fails by far stops there
FAR_FACTOR = 10.0
CONFIRMED_SITES = 8  # sites measured on the logits after the one-pass ranking (at least the budget and half this)


@dataclass(frozen=True)
class TrialSummary:
    """How one graph the search tried compared with model.onnx on the check images."""

    passed: bool
    cosine_min: float
    top1_agreement: float | None = None
    top1_decisive: float | None = None
    decisive: int | None = None
    top1_decidable: bool | None = None
    rel_error: float | None = None
    accuracy: float | None = None
    failures: tuple[str, ...] = ()

    @classmethod
    def of(cls, parity: Parity) -> TrialSummary:
        return cls(
            parity.passed,
            parity.cosine_min,
            parity.top1_agreement,
            parity.top1_decisive,
            parity.decisive,
            parity.top1_decidable,
            parity.rel_error,
            parity.accuracy,
            tuple(parity.failures),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialSummary:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**{**values, "failures": tuple(values.get("failures", ()))})


@dataclass(frozen=True)
class RemedyTrial:
    """A remedy tried before keeping sites in float: its size, how the repaired graph compared, whether it is used.

    ``size`` is the number of Conv -> ReLU -> Conv pairs rescaled (equalization) or of layers whose bias was
    corrected (bias correction); the record stores it under that name (``pairs``, ``layers``).
    """

    size: int
    summary: TrialSummary
    chosen: bool

    def to_dict(self, size_key: str) -> dict[str, Any]:
        return {size_key: self.size, **asdict(self.summary), "chosen": self.chosen}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], size_key: str) -> RemedyTrial:
        return cls(int(data[size_key]), TrialSummary.from_dict(data), bool(data["chosen"]))


REMEDY_SIZE_KEYS = {"equalization": "pairs", "bias_correction": "layers"}


@dataclass
class SearchRecord:
    """What the search tried and found, for the manifest and the report."""

    methods: dict[str, TrialSummary] = field(default_factory=dict)  # method (+ remedies) -> how it compared
    method: str = ""
    ranking: list[tuple[str, float]] = field(default_factory=list)  # (site, sensitivity), most sensitive first
    ranked: int = 0
    layers: int = 0  # Q/DQ sites: weighted layers and residual Adds
    kept: list[str] = field(default_factory=list)
    budget: int = 0
    passed: bool = False
    reused_ranking: bool = False
    seconds: float = 0.0
    note: str = ""
    needed: int | None = None  # the fewest top-ranked sites kept out that passes, found beyond the budget
    time_limited: bool = False
    equalization: RemedyTrial | None = None
    bias_correction: RemedyTrial | None = None

    @property
    def remedies(self) -> list[str]:
        """What the file uses beyond plain INT8 with the best method, in the order the search tries them."""
        used = [
            name
            for name, tried in (("equalization", self.equalization), ("bias correction", self.bias_correction))
            if tried is not None and tried.chosen
        ]
        return used + (["exclusion"] if self.kept else [])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, size_key in REMEDY_SIZE_KEYS.items():
            trial = getattr(self, name)
            data[name] = None if trial is None else trial.to_dict(size_key)
        data["remedies"] = self.remedies
        data["ranking"] = [[name, score] for name, score in self.ranking[:RANKING_SHOWN]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchRecord:
        """A record as :meth:`to_dict` wrote it (older ones lack the remedies); BadInputError when malformed."""
        try:
            values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            values["methods"] = {name: TrialSummary.from_dict(m) for name, m in data.get("methods", {}).items()}
            values["ranking"] = [(str(name), float(score)) for name, score in data.get("ranking", [])]
            for name, size_key in REMEDY_SIZE_KEYS.items():
                values[name] = RemedyTrial.from_dict(data[name], size_key) if data.get(name) else None
            return cls(**values)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInputError(
                f"the INT8 search record in manifest.json is malformed ({type(exc).__name__}: {exc}); "
                "make model.int8.onnx again"
            ) from None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


def fails_by_far(parity: Parity, tolerance: Tolerance) -> bool:
    """The minimum cosine misses its bound by FAR_FACTOR times the allowed deficit: the minimum over more images
    can only be lower, so the whole check set fails too, and a method that fails so on a first slice need not
    run on the rest (#31)."""
    if tolerance.cosine_min is None:
        return False
    return 1.0 - parity.cosine_min > FAR_FACTOR * (1.0 - tolerance.cosine_min)


def _score(parity: Parity) -> tuple:
    """Higher is better: passing first, then accuracy, the judged top-1 figure and the relative error.

    The judged top-1 (:attr:`Parity.top1`) falls back to raw agreement when too few samples are
    decisive, so a candidate that agrees on a fifth of the images never ranks first as "100% decisive".
    """
    return (parity.passed, parity.accuracy or 0.0, parity.top1, -parity.rel_error)


class CheckSet:
    """The check images in memory and model.onnx's logits on them, so every candidate runs on the same inputs."""

    def __init__(self, reference: Path, dataset: Dataset, use_labels: bool) -> None:
        images, labels = [], []
        for batch in dataset.batches(16):
            images.append(batch.images)
            if batch.labels is not None:
                labels.append(batch.labels)
        self.images = np.concatenate(images)
        self.labels = np.concatenate(labels) if use_labels and labels else None
        self.reference = run_model(str(reference), self.images)


def run_model(model: Any, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Logits of an ONNX model (a path or a ModelProto) on the CPU provider."""

    session = open_session(model)
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float32)


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Squared logit error relative to the logits' energy; non-finite output is infinitely wrong."""
    if not np.isfinite(candidate).all():
        return math.inf
    return float(((candidate - reference) ** 2).sum() / max(float((reference**2).sum()), 1e-30))


def _patterns(names: list[str]) -> tuple[str, ...]:
    return tuple(glob.escape(name) for name in names)


def search_int8(
    directory: Path,
    prepared: Any,
    calibration: Calibration,
    dataset: Dataset,
    check: CheckSet,
    tolerance: Tolerance,
    options: PrecisionOptions,
    key: dict[str, Any],
    log: Log,
) -> tuple[Any, list[str], Any, Parity, SearchRecord]:
    """Search for an INT8 graph that passes ``tolerance`` on ``check``; return the best one found.

    ``prepared`` is model.onnx as :func:`~resnext_deploy.precision.graph.load_prepared` gives it (copied,
    never changed). ``key`` identifies the model and the data (calibration, check set) for reusing the
    saved ranking; the method is added here. The budget is not in it: a larger one reuses the ranking.
    """
    import onnx

    key = json.loads(json.dumps(key))  # compared with the saved file's key, so JSON types throughout
    exclude, high_precision = options.exclude, options.high_precision
    started = time.perf_counter()
    deadline = started + options.search_minutes * 60.0
    record = SearchRecord()

    def expired() -> bool:
        return time.perf_counter() > deadline

    def build(method: str, kept: list[str], precision: str = high_precision, only: list[str] | None = None):
        base, ranges, shifts = current  # model.onnx or its equalized graph, and bias shifts once chosen
        model = onnx.ModelProto()
        model.CopyFrom(base)
        ranges, excluded = ranges.with_method(method), exclude + _patterns(kept)
        if shifts:  # only the layers in INT8 are corrected: one kept in float keeps its bias
            correct_biases(model, shifts, qdq_plan(model, ranges, excluded, only).weighted)
        return int8_model(model, ranges, excluded, precision, only=only)

    def check_parity(model, early: bool = False) -> Parity:
        """The parity on the check set; ``early``: a first slice that already fails by far ends the check there."""
        if early and len(check.images) >= 2 * EARLY_SAMPLES:
            first = run_model(model, check.images[:EARLY_SAMPLES])
            labels = None if check.labels is None else check.labels[:EARLY_SAMPLES]
            partial = compare(check.reference[:EARLY_SAMPLES], first, tolerance, labels)
            if fails_by_far(partial, tolerance):
                log(f"INT8 search: stopped after {EARLY_SAMPLES} check images: fails by far")
                return partial
            rest = run_model(model, check.images[EARLY_SAMPLES:])
            return compare(check.reference, np.concatenate([first, rest]), tolerance, check.labels)
        return compare(check.reference, run_model(model, check.images), tolerance, check.labels)

    current: tuple[Any, Calibration, dict[str, np.ndarray]] = (prepared, calibration, {})

    def try_methods(label: str, methods: list[str]) -> tuple:
        """Each of ``methods`` on the current graph, best first; stops at the first that passes."""
        best: tuple | None = None
        for method in methods:
            built = build(method, [])
            parity = check_parity(built[0], early=True)
            record.methods[f"{method}{label}"] = TrialSummary.of(parity)
            log(f"INT8 search: --calib-method {method}{label}: {_line(parity)}")
            if best is None or _score(parity) > _score(best[3]):
                best = (*built, parity, method)
            if parity.passed:
                break
        return best

    def remedy(repaired: tuple, label: str, methods: list[str], size: int) -> RemedyTrial:
        """Try ``methods`` on a repaired graph; keep it as the current one when it scores better than the best."""
        nonlocal best, current
        before, current = current, repaired
        candidate = try_methods(label, methods)
        chosen = _score(candidate[3]) > _score(best[3])
        if chosen:
            best = candidate
        else:
            current = before
        return RemedyTrial(size, TrialSummary.of(candidate[3]), chosen)

    methods = [calibration.method, *[m for m in METHODS if m != calibration.method]]
    best = try_methods("", methods)
    label = ""
    if not best[3].passed:
        equalized = _equalized(directory, prepared, dataset, calibration, log)
        if equalized is not None:
            graph, ranges, pairs = equalized
            record.equalization = remedy((graph, ranges, {}), " + equalization", methods, len(pairs))
            label = " + equalization" if record.equalization.chosen else ""
    if not best[3].passed:
        graph, ranges, _none = current
        log(f"INT8 search: bias correction of the quantized Conv/Gemm layers ({best[4]} ranges)")
        shifts = bias_shifts(graph, ranges.with_method(best[4]), dataset, exclude)
        if shifts:
            label += " + bias correction"
            record.bias_correction = remedy((graph, ranges, shifts), label, [best[4]], len(shifts))
    model, fp32_nodes, plan, parity, method = best
    record.method = method
    sites = plan.sites
    record.layers = len(sites)
    record.budget = min(len(sites), math.floor(options.search_max_fraction * len(sites)))
    if parity.passed:
        return _finish(record, model, fp32_nodes, plan, parity, started)
    flags = {"equalization": "equalized", "bias correction": "bias_corrected"}
    key.update({flags[name]: True for name in record.remedies})  # the graph the ranking is measured on

    confirm = max(CONFIRMED_SITES, record.budget + CONFIRMED_SITES // 2)
    record.ranking, order, record.reused_ranking, cut = _ranking(
        directory, {**key, "method": method}, build, method, sites, check, expired, log, current[0], confirm
    )
    record.ranked = len(record.ranking)
    if cut:
        record.time_limited = True
        record.add_note(f"time limit: ranked {record.ranked} of {len(sites)} Q/DQ sites (saved; a rerun resumes)")
    shown = ", ".join(f"{name} ({score:.3g})" for name, score in record.ranking[:5])
    log(f"INT8 search: most sensitive Q/DQ sites: {shown}")

    tried: dict[int, tuple] = {}

    def keep(count: int) -> tuple:
        """The graph with the ``count`` most sensitive sites kept out of INT8, and its parity (once per count)."""
        if count not in tried:
            candidate = build(method, order[:count])
            tried[count] = (*candidate, check_parity(candidate[0]))
            log(f"INT8 search: {count} site(s) kept in {high_precision}: {_line(tried[count][3])}")
        return tried[count]

    for count in range(1, min(record.budget, len(order)) + 1):
        if expired():
            record.time_limited = True
            record.add_note("time limit reached while keeping sites")
            break
        candidate = keep(count)
        if _score(candidate[3]) > _score(parity):
            model, fp32_nodes, plan, parity = candidate
            record.kept = order[:count]
        if candidate[3].passed:
            break
    if not parity.passed:
        record.needed = _smallest_passing(keep, record.budget, len(order), expired)
        if record.needed is None and expired():
            record.time_limited = True
    return _finish(record, model, fp32_nodes, plan, parity, started)


def _equalized(directory: Path, prepared: Any, dataset: Dataset, calibration: Calibration, log: Log) -> tuple | None:
    """model.onnx with cross-layer equalization, its calibration and the pairs rescaled; None without any pair.

    Equalization changes the activations between the pairs, so the graph is calibrated again on the
    same images; the graph and its calibration are kept in ``DIR/int8_equalized/`` so that a rerun
    (another budget, a resumed ranking) reuses the calibration, which is checked by content as usual.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(prepared)
    pairs = equalize(model)
    if not pairs:
        return None
    log(f"INT8 search: cross-layer equalization of {len(pairs)} Conv -> ReLU -> Conv pairs; calibrating it")
    folder = directory / EQUALIZED_DIR
    folder.mkdir(exist_ok=True)
    path = folder / "model.equalized.onnx"
    with atomic_path(path) as tmp:
        save_model(model, tmp)
    ranges = calibrate(folder, path, dataset, calibration.method, calibration.percentile, log)
    return model, ranges, pairs


def _smallest_passing(
    keep: Callable[[int], tuple], budget: int, ranked: int, expired: Callable[[], bool]
) -> int | None:
    """The fewest top-ranked sites kept out that passes, beyond ``budget``; None if up to half of them do not.

    Doubling, then bisection: a handful of checks, so the failure can name the budget that would pass.
    """
    limit = max(1, math.ceil(ranked / 2))
    if budget >= limit:
        return None
    failing, count = budget, max(1, 2 * budget)
    while True:
        count = min(count, limit)
        if expired():
            return None
        if keep(count)[3].passed:
            passing = count
            break
        failing = count
        if count >= limit:
            return None
        count *= 2
    while passing - failing > 1 and not expired():
        middle = (failing + passing) // 2
        if keep(middle)[3].passed:
            passing = middle
        else:
            failing = middle
    return passing


def _finish(record: SearchRecord, model, fp32_nodes, plan, parity: Parity, started: float):
    record.passed = parity.passed
    record.seconds = round(time.perf_counter() - started, 1)
    return model, fp32_nodes, plan, parity, record


def _ranking(
    directory: Path,
    key: dict[str, Any],
    build: Callable,
    method: str,
    sites: list[str],
    check: CheckSet,
    expired: Callable[[], bool],
    log: Log,
    base: Any,
    confirm: int,
) -> tuple[list[tuple[str, float]], list[str], bool, bool]:
    """The measured sensitivities (most sensitive first), the order to keep sites out in, whether saved scores were
    reused, and whether the time limit cut the measuring short.

    One recorded pass gives every site's own error (:func:`~resnext_deploy.inspect.accuracy.local_errors`:
    the noise at the site's layer output when only its pair and weight are INT8, the code ``inspect`` shows);
    only the ``confirm`` worst of those are measured on the logits. A site's sensitivity is the logit error
    when that site alone is INT8 and the rest of the graph FP32: each costs about one FP32 pass over at most
    SENSITIVITY_SAMPLES images. The order is the measured sites by sensitivity, then the rest by their own
    error. The scores are saved as they are (a ranking cut short by the time limit too) and a rerun measures
    only the sites missing.
    """
    from ..inspect.accuracy import local_errors

    path = directory / SEARCH_NAME
    scores = _load_scores(path, key, sites)
    reused = bool(scores)
    if reused:
        log(f"INT8 search: reusing {len(scores)} saved sensitivities from {path}")
    images = check.images[:SENSITIVITY_SAMPLES]
    reference = check.reference[:SENSITIVITY_SAMPLES]
    own = local_errors(base, build(method, [], "fp32")[0], images)
    by_own = sorted(sites, key=lambda site: -own.get(site, math.inf))  # a site the pass cannot see is measured
    missing = [site for site in by_own[:confirm] if site not in scores]
    log(f"INT8 search: ranked {len(sites)} Q/DQ sites by their own error in one pass; confirming the worst {confirm}")
    if missing:
        with progress(
            len(missing), f"measuring the INT8 sensitivity of {len(missing)} Q/DQ sites", unit="sites"
        ) as advance:
            for site in missing:
                if expired():
                    break
                scores[site] = relative_error(reference, run_model(build(method, [], "fp32", only=[site])[0], images))
                advance(1)
        write_json(path, {"format": SEARCH_FORMAT, "key": key, "scores": scores})
    ranking = sorted(((site, scores[site]) for site in sites if site in scores), key=lambda item: -item[1])
    measured = {name for name, _score in ranking}
    order = [name for name, _score in ranking] + [site for site in by_own if site not in measured]
    cut = any(site not in scores for site in missing)
    return ranking, order, reused, cut


def _load_scores(path: Path, key: dict[str, Any], sites: list[str]) -> dict[str, float]:
    """Saved sensitivities for the same key, checked entry by entry against this model's Q/DQ ``sites``."""
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except BadInputError:
        return {}
    if not isinstance(data, dict) or data.get("format") != SEARCH_FORMAT or data.get("key") != key:
        return {}
    scores = data.get("scores")
    if not isinstance(scores, dict):
        raise cache_error(path, "has scores that are not an object")
    known = set(sites)
    for name, score in scores.items():
        if not is_number(score) or score < 0:
            raise cache_error(path, f"scores site {str(name)[:80]!r} with {str(score)[:40]}, not a finite number >= 0")
        if name not in known:
            raise cache_error(path, f"scores site {str(name)[:80]!r}, which this model does not quantize")
    return {str(name): float(score) for name, score in scores.items()}


def _line(parity: Parity) -> str:
    text = (
        f"cosine min {parity.cosine_min:.4f}, relative error {parity.rel_error:.3g}, top-1 "
        f"{parity.top1_agreement:.2%} raw, {parity.top1_decisive:.2%} on {parity.decisive} decisive"
        + ("" if parity.top1_decidable else " (too few decisive: undecidable)")
    )
    if parity.accuracy is not None:
        text += f", accuracy {parity.accuracy:.2f}% (FP32 {parity.reference_accuracy:.2f}%)"
    return text + (" -- passes" if parity.passed else " -- fails")
