"""Accuracy-aware INT8: when the held-out check fails, find the Q/DQ sites INT8 hurts and keep them in float.

A few sites cause most INT8 damage (an activation with outlier channels makes its per-tensor
scale crush every other channel). TensorRT 11 has no precision constraints to search with, so the
search runs here, on explicit Q/DQ graphs in ONNX Runtime:

1. every calibration method (entropy, percentile, minmax; the statistics hold all three) is
   checked, and the best kept; a candidate whose first EARLY_SAMPLES check images already miss the
   cosine bound fails for sure and is not run on the rest;
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

Each step is a method of :class:`Int8Search`, which holds the state (the current float graph, the best
:class:`Candidate`, the record); the greedy keeping and the bisection are markers stepped with each
check's verdict (:class:`KeepMarker`, :class:`BisectMarker`), as Polygraphy's ``debug precision`` does.

The sensitivities are saved in ``DIR/int8_search.json``, keyed by model, data and method only (a new
budget or tolerance reuses them), also when the time limit cut the ranking short (a rerun resumes).
"""

from __future__ import annotations

import glob
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..artifacts import atomic_path, cache_error, is_number, read_json, write_json
from ..backends.onnxruntime import open_session
from ..data import Dataset
from ..errors import BadInputError
from ..parity import Parity, Tolerance, compare
from ..serde import RecordError, decode, encode
from ..ui import progress
from .bias import bias_shifts, correct_biases
from .calibration import METHODS, Calibration, Log, calibrate
from .equalize import equalize
from .graph import at_least_opset, save_model
from .int8 import QDQ_OPSET, QdqPlan, int8_model, qdq_plan
from .options import PrecisionOptions
from .records import CheckData

SEARCH_NAME = "int8_search.json"
EQUALIZED_DIR = "int8_equalized"  # the equalized graph and its calibration, reused by a rerun
SEARCH_FORMAT = 4  # 4: the key is a SearchKey (remedy flags always written); 3: every Q/DQ site, keyed by data
SENSITIVITY_SAMPLES = 8  # check samples the per-site error is measured on (a continuous measure needs few)
RANKING_SHOWN = 10
EARLY_SAMPLES = 16  # check images a candidate is first checked on; one whose minimum cosine fails there stops
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


@dataclass(frozen=True)
class RemedyTrial(TrialSummary):
    """A remedy tried before keeping sites in float: how the repaired graph compared, whether it is used, and its
    size under the name the record stores it by (:class:`EqualizationTrial`, :class:`BiasCorrectionTrial`)."""

    SIZE: ClassVar[str] = ""
    chosen: bool = False

    @classmethod
    def made(cls, size: int, summary: TrialSummary, chosen: bool) -> RemedyTrial:
        values: dict[str, Any] = {**asdict(summary), "chosen": chosen, cls.SIZE: size}
        return cls(**values)

    @property
    def size(self) -> int:
        return getattr(self, self.SIZE)

    @property
    def summary(self) -> TrialSummary:
        return TrialSummary(**{f.name: getattr(self, f.name) for f in fields(TrialSummary)})


@dataclass(frozen=True)
class EqualizationTrial(RemedyTrial):
    SIZE: ClassVar[str] = "pairs"
    pairs: int = 0  # Conv -> ReLU -> Conv pairs rescaled


@dataclass(frozen=True)
class BiasCorrectionTrial(RemedyTrial):
    SIZE: ClassVar[str] = "layers"
    layers: int = 0  # Conv/Gemm layers whose bias was corrected


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
    equalization: EqualizationTrial | None = None
    bias_correction: BiasCorrectionTrial | None = None

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
        """The record as JSON values (:mod:`~resnext_deploy.serde`), the ranking's top only, with the remedies used."""
        data = encode(replace(self, ranking=self.ranking[:RANKING_SHOWN]))
        data["ranking"] = [list(item) for item in data["ranking"]]
        return {**data, "remedies": self.remedies}

    @classmethod
    def from_dict(cls, data: Any) -> SearchRecord:
        """A record as :meth:`to_dict` wrote it (older ones lack the remedies); BadInputError when malformed."""
        try:
            return decode(cls, data)
        except RecordError as exc:
            raise BadInputError(
                f"the INT8 search record in manifest.json is malformed ({exc}); make model.int8.onnx again"
            ) from None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


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


def open_model(model: Any, batch: int = 16) -> Callable[[np.ndarray], np.ndarray]:
    """The logits of an ONNX model (a path or a ModelProto) on the CPU provider, as a function of the images: one
    session for every slice a check runs."""

    session = open_session(model)
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        out = [session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
        return np.concatenate(out).astype(np.float32)

    return run


def run_model(model: Any, images: np.ndarray) -> np.ndarray:
    """Logits of an ONNX model (a path or a ModelProto) on the CPU provider."""
    return open_model(model)(images)


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Squared logit error relative to the logits' energy; non-finite output is infinitely wrong."""
    if not np.isfinite(candidate).all():
        return math.inf
    return float(((candidate - reference) ** 2).sum() / max(float((reference**2).sum()), 1e-30))


def _patterns(names: list[str]) -> tuple[str, ...]:
    return tuple(glob.escape(name) for name in names)


@dataclass(frozen=True)
class SearchKey:
    """What saved sensitivities were measured on: model.onnx and the data by content, the options that set the
    sites, and (added by the search) the method and remedies of the graph. Not the budget nor the tolerance: a
    rerun with another one reuses them."""

    model: str
    calibration: str
    check: CheckData
    percentile: float
    exclude: tuple[str, ...] = ()
    method: str = ""
    equalized: bool = False
    bias_corrected: bool = False


@dataclass
class Graph:
    """The float graph candidates are made from: model.onnx or its equalized graph, its ranges, and the bias
    shifts once bias correction is chosen; ``label`` is what it adds to a method's name in the record."""

    model: Any
    ranges: Calibration
    shifts: dict[str, np.ndarray] = field(default_factory=dict)
    label: str = ""
    upgraded: Any = None  # ``model`` at the opset Q/DQ needs, converted once, not once per candidate

    def at_qdq_opset(self) -> Any:
        if self.upgraded is None:
            self.upgraded = at_least_opset(self.model, QDQ_OPSET)
        return self.upgraded


@dataclass
class Candidate:
    """One INT8 graph the search made and checked: its method, the sites kept out of INT8, the graph and parity."""

    method: str
    kept: tuple[str, ...]
    model: Any
    fp32_nodes: list[str]
    plan: QdqPlan
    parity: Parity  # on every check image, or on the first EARLY_SAMPLES when those already fail
    first: Parity  # on the first EARLY_SAMPLES (or every image of a small check set)
    complete: bool = True  # whether ``parity`` covers every check image


@dataclass
class SearchResult:
    """The best candidate, what the search tried, and the float graph it was made from (reused by ONNX Runtime's
    INT8 file: the equalized graph and the bias shifts are not measured twice)."""

    best: Candidate
    record: SearchRecord
    graph: Graph


def fails_for_sure(parity: Parity, tolerance: Tolerance) -> bool:
    """The minimum cosine of a first slice already misses its bound: the minimum over more images can only be
    lower, so the whole check set fails too, and the rest need not run (#31)."""
    return tolerance.cosine_min is not None and not parity.cosine_min >= tolerance.cosine_min


def better(candidate: Candidate, than: Candidate | None) -> bool:
    """Whether ``candidate`` ranks above ``than``: passing first, then the figures on the images both ran on."""
    if than is None:
        return True
    if candidate.parity.passed != than.parity.passed:
        return candidate.parity.passed
    if candidate.complete and than.complete:
        return _score(candidate.parity) > _score(than.parity)
    return _score(candidate.first) > _score(than.first)


class KeepMarker:
    """Greedy, as Polygraphy's markers step: keep the 1, 2, ... most sensitive sites out of INT8 until a count
    passes or ``limit`` counts were tried. ``count`` is the next count to try, None when done."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count: int | None = 1 if limit >= 1 else None

    def step(self, passed: bool) -> None:
        if self.count is not None:
            self.count = None if passed or self.count >= self.limit else self.count + 1


class BisectMarker:
    """The fewest sites kept out that passes, above ``failing`` (known to fail) and up to ``limit``: doubling, then
    bisection, a handful of checks. ``count`` is the next to try (None when done), ``passing`` the smallest count
    found to pass (None while none has)."""

    def __init__(self, failing: int, limit: int) -> None:
        self.failing, self.limit = failing, limit
        self.passing: int | None = None
        self.count: int | None = min(max(1, 2 * failing), limit) if failing < limit else None

    def step(self, passed: bool) -> None:
        if self.count is None:
            return
        if passed:
            self.passing = self.count
        else:
            self.failing = self.count
        if self.passing is None:
            self.count = None if self.count >= self.limit else min(2 * self.count, self.limit)
        else:
            self.count = (self.failing + self.passing) // 2 if self.passing - self.failing > 1 else None


class Int8Search:
    """The search's state: the current float graph, the best candidate so far, the record; one method per step."""

    def __init__(
        self,
        directory: Path,
        graph: Graph,
        dataset: Dataset,
        check: CheckSet,
        tolerance: Tolerance,
        options: PrecisionOptions,
        key: SearchKey,
        log: Log,
    ) -> None:
        self.directory, self.dataset, self.check = directory, dataset, check
        self.tolerance, self.options, self.key, self.log = tolerance, options, key, log
        self.graph = graph
        self.record = SearchRecord()
        self.started = time.perf_counter()
        self.deadline = self.started + options.search_minutes * 60.0
        self.best: Candidate | None = None
        self.order: list[str] = []  # the sites in the order they are kept out
        self.tried: dict[int, Candidate] = {}  # per count of sites kept out

    def expired(self) -> bool:
        return time.perf_counter() > self.deadline

    def build(self, method: str, kept: Sequence[str] = (), precision: str = "", only: list[str] | None = None):
        """The Q/DQ graph of the current float graph with ``method``'s ranges, ``kept`` out of INT8."""
        import onnx

        graph = self.graph
        model = onnx.ModelProto()
        model.CopyFrom(graph.at_qdq_opset())
        ranges, excluded = graph.ranges.with_method(method), self.options.exclude + _patterns(list(kept))
        if graph.shifts:  # only the layers in INT8 are corrected: one kept in float keeps its bias
            correct_biases(model, graph.shifts, qdq_plan(model, ranges, excluded, only).weighted)
        return int8_model(model, ranges, excluded, precision or self.options.high_precision, only=only)

    def candidate(self, method: str, kept: Sequence[str] = ()) -> Candidate:
        model, fp32_nodes, plan = self.build(method, kept)
        parity, first, complete = self.check_parity(model)
        return Candidate(method, tuple(kept), model, fp32_nodes, plan, parity, first, complete)

    def check_parity(self, model: Any) -> tuple[Parity, Parity, bool]:
        """The parity on the check set, on its first EARLY_SAMPLES images, and whether the first covers every image.

        A first slice that already fails for sure (:func:`fails_for_sure`) ends the check there.
        """
        check, tolerance = self.check, self.tolerance
        run = open_model(model)
        if len(check.images) < 2 * EARLY_SAMPLES:
            parity = compare(check.reference, run(check.images), tolerance, check.labels)
            return parity, parity, True
        first_logits = run(check.images[:EARLY_SAMPLES])
        labels = None if check.labels is None else check.labels[:EARLY_SAMPLES]
        first = compare(check.reference[:EARLY_SAMPLES], first_logits, tolerance, labels)
        if fails_for_sure(first, tolerance):
            self.log(f"INT8 search: stopped after {EARLY_SAMPLES} check images: the minimum cosine already fails")
            return first, first, False
        logits = np.concatenate([first_logits, run(check.images[EARLY_SAMPLES:])])
        return compare(check.reference, logits, tolerance, check.labels), first, True

    def try_methods(self, methods: Sequence[str]) -> Candidate:
        """Each of ``methods`` on the current graph; the best, stopping at the first that passes."""
        best = None
        for method in methods:
            candidate = self.candidate(method)
            self.record.methods[f"{method}{self.graph.label}"] = TrialSummary.of(candidate.parity)
            self.log(f"INT8 search: --calib-method {method}{self.graph.label}: {_line(candidate.parity)}")
            if better(candidate, best):
                best = candidate
            if candidate.parity.passed:
                break
        assert best is not None, "no calibration method to try"
        return best

    def try_remedy(self, graph: Graph, methods: Sequence[str], kind: type[RemedyTrial], size: int) -> Any:
        """``methods`` on a repaired graph, kept as the current one when its best ranks above the best so far."""
        before, self.graph = self.graph, graph
        candidate = self.try_methods(methods)
        chosen = better(candidate, self.best)
        if chosen:
            self.best = candidate
        else:
            self.graph = before
        return kind.made(size, TrialSummary.of(candidate.parity), chosen)

    def try_remedies(self, prepared: Any, methods: Sequence[str]) -> None:
        """Equalization, then bias correction of the best graph so far, each only while nothing passes."""
        if self.passed:
            return
        equalized = _equalized(self.directory, prepared, self.dataset, self.graph.ranges, self.log)
        if equalized is not None:
            model, ranges, pairs = equalized
            graph = Graph(model, ranges, label=" + equalization")
            self.record.equalization = self.try_remedy(graph, methods, EqualizationTrial, len(pairs))
        if self.passed:
            return
        method, graph = self.best_candidate.method, self.graph
        self.log(f"INT8 search: bias correction of the quantized Conv/Gemm layers ({method} ranges)")
        shifts = bias_shifts(graph.model, graph.ranges.with_method(method), self.dataset, self.options.exclude)
        if shifts:
            corrected = replace(graph, shifts=shifts, label=f"{graph.label} + bias correction")
            self.record.bias_correction = self.try_remedy(corrected, [method], BiasCorrectionTrial, len(shifts))

    @property
    def best_candidate(self) -> Candidate:
        assert self.best is not None, "no candidate checked yet"
        return self.best

    @property
    def passed(self) -> bool:
        return self.best is not None and self.best.parity.passed

    def rank(self) -> None:
        """Rank the sites of the best graph (one recorded pass, the worst few confirmed); the order to keep out in."""
        record, method = self.record, self.best_candidate.method
        remedies = record.remedies
        key = replace(
            self.key,
            method=method,
            equalized="equalization" in remedies,
            bias_corrected="bias correction" in remedies,
        )
        sites = self.best_candidate.plan.sites
        confirm = max(CONFIRMED_SITES, record.budget + CONFIRMED_SITES // 2)
        ranking = _ranking(
            self.directory,
            key,
            self.build,
            method,
            sites,
            self.check,
            self.expired,
            self.log,
            self.graph.model,
            confirm,
        )
        record.ranking, self.order, record.reused_ranking, cut = ranking
        record.ranked = len(record.ranking)
        if cut:
            record.time_limited = True
            record.add_note(f"time limit: ranked {record.ranked} of {len(sites)} Q/DQ sites (saved; a rerun resumes)")
        shown = ", ".join(f"{name} ({score:.3g})" for name, score in record.ranking[:5])
        self.log(f"INT8 search: most sensitive Q/DQ sites: {shown}")

    def keep(self, count: int) -> Candidate:
        """The graph with the ``count`` first sites of the order kept out of INT8, checked (once per count)."""
        if count not in self.tried:
            self.tried[count] = self.candidate(self.best_candidate.method, self.order[:count])
            self.log(
                f"INT8 search: {count} site(s) kept in {self.options.high_precision}: {_line(self.tried[count].parity)}"
            )
        return self.tried[count]

    def keep_greedily(self) -> None:
        """Keep the most sensitive sites out one more at a time until the check passes or the budget runs out."""
        marker = KeepMarker(min(self.record.budget, len(self.order)))
        while marker.count is not None:
            if self.expired():
                self.record.time_limited = True
                self.record.add_note("time limit reached while keeping sites")
                return
            candidate = self.keep(marker.count)
            if better(candidate, self.best):
                self.best = candidate
                self.record.kept = list(candidate.kept)
            marker.step(candidate.parity.passed)

    def find_needed(self) -> None:
        """The fewest top-ranked sites kept out that passes beyond the budget, for the failure message; up to half."""
        marker = BisectMarker(self.record.budget, max(1, math.ceil(len(self.order) / 2)))
        while marker.count is not None and not self.expired():
            marker.step(self.keep(marker.count).parity.passed)
        self.record.needed = marker.passing
        if marker.passing is None and self.expired():
            self.record.time_limited = True

    def run(self, prepared: Any, first_method: str) -> SearchResult:
        """Every calibration method, the remedies, then sites kept out of INT8, each only while nothing passes."""
        methods = [first_method, *[m for m in METHODS if m != first_method]]
        self.best = self.try_methods(methods)
        self.try_remedies(prepared, methods)
        record, best = self.record, self.best_candidate
        record.method = best.method
        record.layers = len(best.plan.sites)
        record.budget = min(record.layers, math.floor(self.options.search_max_fraction * record.layers))
        if not self.passed:
            self.rank()
            self.keep_greedily()
        if not self.passed:
            self.find_needed()
        record.passed = self.passed
        record.seconds = round(time.perf_counter() - self.started, 1)
        return SearchResult(self.best_candidate, record, self.graph)


def search_int8(
    directory: Path,
    prepared: Any,
    calibration: Calibration,
    dataset: Dataset,
    check: CheckSet,
    tolerance: Tolerance,
    options: PrecisionOptions,
    key: SearchKey,
    log: Log,
) -> SearchResult:
    """Search for an INT8 graph that passes ``tolerance`` on ``check``; the best one found.

    ``prepared`` is model.onnx as :func:`~resnext_deploy.precision.graph.load_prepared` gives it (copied,
    never changed). ``key`` identifies the model and the data (calibration, check set) for reusing the
    saved ranking; the method and remedies are added here.
    """
    search = Int8Search(directory, Graph(prepared, calibration), dataset, check, tolerance, options, key, log)
    return search.run(prepared, calibration.method)


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


def _ranking(
    directory: Path,
    key: SearchKey,
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
        write_json(path, {"format": SEARCH_FORMAT, "key": _key_json(key), "scores": scores})
    ranking = sorted(((site, scores[site]) for site in sites if site in scores), key=lambda item: -item[1])
    measured = {name for name, _score in ranking}
    order = [name for name, _score in ranking] + [site for site in by_own if site not in measured]
    cut = any(site not in scores for site in missing)
    return ranking, order, reused, cut


def _load_scores(path: Path, key: SearchKey, sites: list[str]) -> dict[str, float]:
    """Saved sensitivities for the same key, checked entry by entry against this model's Q/DQ ``sites``."""
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except BadInputError:
        return {}
    if not isinstance(data, dict) or data.get("format") != SEARCH_FORMAT or data.get("key") != _key_json(key):
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


def _key_json(key: SearchKey) -> Any:
    """The key as the saved file holds it (JSON types: a tuple reads back as a list)."""
    return json.loads(json.dumps(encode(key)))


def _line(parity: Parity) -> str:
    text = (
        f"cosine min {parity.cosine_min:.4f}, relative error {parity.rel_error:.3g}, top-1 "
        f"{parity.top1_agreement:.2%} raw, {parity.top1_decisive:.2%} on {parity.decisive} decisive"
        + ("" if parity.top1_decidable else " (too few decisive: undecidable)")
    )
    if parity.accuracy is not None:
        text += f", accuracy {parity.accuracy:.2f}% (FP32 {parity.reference_accuracy:.2f}%)"
    return text + (" -- passes" if parity.passed else " -- fails")
