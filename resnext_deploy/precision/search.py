"""Accuracy-aware INT8: when the held-out check fails, find the layers INT8 hurts and keep them in float.

A few layers cause most INT8 damage (an activation with outlier channels makes its per-tensor
scale crush every other channel). TensorRT 11 has no precision constraints to search with, so the
search runs here, on explicit Q/DQ graphs in ONNX Runtime:

1. every calibration method (entropy, percentile, minmax; the statistics hold all three) is
   checked, and the best kept;
2. each quantized Conv/Gemm's sensitivity is measured on the check set: the logit error of the
   graph with this one layer in INT8 and everything else in FP32;
3. the most sensitive layers are kept out of INT8 greedily until the tolerance holds or the budget
   (a share of the layers, a time limit) runs out.

The ranking is saved in ``DIR/int8_search.json`` and reused while model, data and options match.
"""

from __future__ import annotations

import glob
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import read_json, write_json
from ..backends.onnxruntime import session_options
from ..data import Dataset
from ..errors import BadInputError
from ..evaluate.metrics import Parity, Tolerance, compare
from ..ui import progress
from .calibration import METHODS, Calibration, Log
from .int8 import int8_model

SEARCH_NAME = "int8_search.json"
SEARCH_FORMAT = 2  # 2: sensitivity of one INT8 layer in an FP32 graph
SENSITIVITY_SAMPLES = 8  # check samples the per-layer error is measured on (a continuous measure needs few)
RANKING_SHOWN = 10


@dataclass
class SearchRecord:
    """What the search tried and found, for the manifest and the report."""

    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> parity summary
    method: str = ""
    ranking: list[tuple[str, float]] = field(default_factory=list)  # (layer, sensitivity), most sensitive first
    ranked: int = 0
    layers: int = 0
    kept: list[str] = field(default_factory=list)
    budget: int = 0
    passed: bool = False
    reused_ranking: bool = False
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ranking"] = [[name, score] for name, score in self.ranking[:RANKING_SHOWN]]
        return data


def _summary(parity: Parity) -> dict[str, Any]:
    return {
        "passed": parity.passed,
        "cosine_min": parity.cosine_min,
        "top1_agreement": parity.top1_agreement,
        "top1_decisive": parity.top1_decisive,
        "decisive": parity.decisive,
        "top1_decidable": parity.top1_decidable,
        "rel_error": parity.rel_error,
        "accuracy": parity.accuracy,
        "failures": list(parity.failures),
    }


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
    import onnxruntime as ort

    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])
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
    check: CheckSet,
    tolerance: Tolerance,
    exclude: tuple[str, ...],
    high_precision: str,
    max_fraction: float,
    minutes: float,
    key: dict[str, Any],
    log: Log,
) -> tuple[Any, list[str], Any, Parity, SearchRecord]:
    """Search for an INT8 graph that passes ``tolerance`` on ``check``; return the best one found.

    ``prepared`` is model.onnx as :func:`~resnext_deploy.precision.graph.load_prepared` gives it (copied,
    never changed). ``key`` identifies model, data and options for reusing the saved ranking.
    """
    import onnx

    key = json.loads(json.dumps(key))  # compared with the saved file's key, so JSON types throughout
    started = time.perf_counter()
    deadline = started + minutes * 60.0
    record = SearchRecord()

    def build(method: str, kept: list[str], precision: str = high_precision):
        model = onnx.ModelProto()
        model.CopyFrom(prepared)
        return int8_model(model, calibration.with_method(method), exclude + _patterns(kept), precision)

    def check_parity(model) -> Parity:
        return compare(check.reference, run_model(model, check.images), tolerance, check.labels)

    best: tuple | None = None
    for method in [calibration.method, *[m for m in METHODS if m != calibration.method]]:
        built = build(method, [])
        parity = check_parity(built[0])
        record.methods[method] = _summary(parity)
        log(f"INT8 search: --calib-method {method}: {_line(parity)}")
        if best is None or _score(parity) > _score(best[3]):
            best = (*built, parity, method)
        if parity.passed:
            break
    model, fp32_nodes, plan, parity, method = best
    record.method = method
    record.layers = len(plan.weighted)
    record.budget = min(len(plan.weighted), math.floor(max_fraction * len(plan.weighted)))
    if parity.passed or record.budget == 0:
        return _finish(record, model, fp32_nodes, plan, parity, started)

    saved = _load_ranking(directory, {**key, "method": method})
    if saved is not None:
        record.ranking, record.ranked, record.reused_ranking = saved, len(saved), True
        log(f"INT8 search: reusing the sensitivity ranking in {directory / SEARCH_NAME}")
    else:
        record.ranking, record.ranked = _rank(build, method, plan.weighted, check, deadline)
        if record.ranked == len(plan.weighted):
            write_json(
                directory / SEARCH_NAME,
                {"format": SEARCH_FORMAT, "key": {**key, "method": method}, "ranking": record.ranking},
            )
        else:
            record.note = f"time limit: ranked {record.ranked} of {len(plan.weighted)} layers"
    shown = ", ".join(f"{name} ({score:.3g})" for name, score in record.ranking[:5])
    log(f"INT8 search: most sensitive layers: {shown}")

    kept: list[str] = []
    for name, _score_value in record.ranking[: record.budget]:
        if time.perf_counter() > deadline:
            record.note = (record.note + "; " if record.note else "") + "time limit reached while keeping layers"
            break
        kept.append(name)
        candidate = build(method, kept)
        candidate_parity = check_parity(candidate[0])
        log(f"INT8 search: {len(kept)} layer(s) kept in {high_precision}: {_line(candidate_parity)}")
        if _score(candidate_parity) > _score(parity):
            model, fp32_nodes, plan, parity = (*candidate, candidate_parity)
            record.kept = list(kept)
        if candidate_parity.passed:
            break
    return _finish(record, model, fp32_nodes, plan, parity, started)


def _finish(record: SearchRecord, model, fp32_nodes, plan, parity: Parity, started: float):
    record.passed = parity.passed
    record.seconds = round(time.perf_counter() - started, 1)
    return model, fp32_nodes, plan, parity, record


def _rank(
    build: Callable, method: str, layers: list[str], check: CheckSet, deadline: float
) -> tuple[list[tuple[str, float]], int]:
    """Each layer's sensitivity: the logit error when that layer alone is INT8 and the rest of the graph FP32.

    One quantized layer in an FP32 graph runs on ONNX Runtime's fast FP32 kernels, so each of the N
    runs costs about one FP32 pass over at most SENSITIVITY_SAMPLES images; the greedy step then
    checks the real (FP16-rest) graphs on the whole check set.
    """
    images = check.images[:SENSITIVITY_SAMPLES]
    reference = check.reference[:SENSITIVITY_SAMPLES]
    scores: list[tuple[str, float]] = []
    with progress(len(layers), f"measuring the INT8 sensitivity of {len(layers)} layers", unit="layers") as advance:
        for name in layers:
            if time.perf_counter() > deadline:
                break
            others = [other for other in layers if other != name]
            scores.append((name, relative_error(reference, run_model(build(method, others, "fp32")[0], images))))
            advance(1)
    scores.sort(key=lambda item: -item[1])
    return scores, len(scores)


def _load_ranking(directory: Path, key: dict[str, Any]) -> list[tuple[str, float]] | None:
    path = directory / SEARCH_NAME
    if not path.exists():
        return None
    try:
        data = read_json(path)
    except BadInputError:
        return None
    if not isinstance(data, dict) or data.get("format") != SEARCH_FORMAT or data.get("key") != key:
        return None
    return [(str(name), float(score)) for name, score in data.get("ranking", [])]


def _line(parity: Parity) -> str:
    text = (
        f"cosine min {parity.cosine_min:.4f}, relative error {parity.rel_error:.3g}, top-1 "
        f"{parity.top1_agreement:.2%} raw, {parity.top1_decisive:.2%} on {parity.decisive} decisive"
        + ("" if parity.top1_decidable else " (undecidable: raw judged)")
    )
    if parity.accuracy is not None:
        text += f", accuracy {parity.accuracy:.2f}% (FP32 {parity.reference_accuracy:.2f}%)"
    return text + (" -- passes" if parity.passed else " -- fails")
