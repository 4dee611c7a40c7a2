"""Does every artifact compute what the PyTorch model computes? The same images through every runner.

The candidates come from the backend registry (:func:`~resnext_deploy.backends.registry.discover_runners`);
this module knows nothing else about backends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import ONNX_FILES, PRECISIONS, Manifest, check_writable, load_onnx, now_iso, write_json
from ..backends.base import Candidate, Runner, SkipRecord
from ..backends.registry import REFERENCE, discover_runners, open_runners
from ..data import Dataset, open_dataset
from ..demo import DEMO_VAL
from ..environment import describe
from ..errors import BadInputError, DeployError, one_line
from ..models import DEMO_ARCH
from ..schemas import SCHEMA_VERSION
from ..source import ModelSource, label_note, labels_match_model
from ..ui import progress, render_table
from .metrics import DEFAULT_TOLERANCES, Parity, Tolerance, compare

VERIFY_JSON = "verify.json"


# Tolerance criteria the command line can override: flag name -> (precision, Tolerance field, low, high).
TOLERANCE_FLAGS = {
    "fp16_cosine": ("fp16", "cosine_min", -1.0, 1.0),
    "fp16_top1": ("fp16", "top1_min", 0.0, 1.0),
    "int8_cosine": ("int8", "cosine_min", -1.0, 1.0),
    "int8_top1": ("int8", "top1_min", 0.0, 1.0),
    "int8_max_accuracy_drop": ("int8", "accuracy_drop_max", 0.0, 100.0),
}


def tolerance_overrides(values: Mapping[str, float | None]) -> dict[str, Tolerance]:
    """The default tolerances with some criteria replaced; keys are :data:`TOLERANCE_FLAGS`, None keeps a default."""
    result = dict(DEFAULT_TOLERANCES)
    for flag, value in values.items():
        if value is None:
            continue
        precision, name, low, high = TOLERANCE_FLAGS[flag]
        if not low <= value <= high:
            raise BadInputError(f"--{flag.replace('_', '-')} must be between {low:g} and {high:g}, got {value:g}")
        result[precision] = replace(result[precision], **{name: value})
    return result


@dataclass
class CandidateResult:
    """One candidate's parity with the reference, or the error that stopped it."""

    candidate: Candidate
    tolerance: Tolerance
    parity: Parity | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.parity is not None and self.parity.passed

    @property
    def failures(self) -> list[str]:
        return [self.error] if self.error else list(self.parity.failures if self.parity is not None else ())

    def to_dict(self) -> dict[str, Any]:
        metrics = self.parity.to_dict() if self.parity is not None else dict.fromkeys(_METRIC_FIELDS)
        return {
            **self.candidate.identity(),
            **metrics,
            "passed": self.passed,
            "failures": self.failures,
            "tolerance": asdict(self.tolerance),
        }


# Parity's metric fields, written as nulls for a candidate that never produced outputs.
_METRIC_FIELDS = tuple(f.name for f in fields(Parity) if f.name != "failures")


@dataclass
class VerifyReport:
    """What ``verify`` found; truthy when the reference is sound and every candidate passed."""

    reference: dict[str, Any]
    results: list[CandidateResult]
    skipped: list[SkipRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.reference["failures"] and all(r.passed for r in self.results)

    def __bool__(self) -> bool:
        return self.passed

    def failure_summary(self) -> str:
        """One line naming every failing candidate and its first reason."""
        parts = [f"reference torch-cpu:fp32: {self.reference['failures'][0]}"] if self.reference["failures"] else []
        parts += [f"{r.candidate.label}: {r.failures[0]}" for r in self.results if not r.passed]
        return f"{len(parts)} failed: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return _finite(
            {
                "schema_version": SCHEMA_VERSION,
                "created": now_iso(),
                "reference": self.reference,
                "results": [r.to_dict() for r in self.results],
                "skipped": [s.to_dict() for s in self.skipped],
                "warnings": self.warnings,
                "passed": self.passed,
                "machine": self.machine,
                "artifacts": self.artifacts,
            }
        )


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write null for them."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def default_data(source: ModelSource) -> Path | None:
    """The demo model's labeled validation split; nothing (seeded synthetic input) for any other model."""
    return DEMO_VAL if source.arch == DEMO_ARCH and DEMO_VAL.is_dir() else None


def run_verify(
    directory: str | Path,
    data: str | Path | None = None,
    count: int | None = None,
    batch_size: int = 32,
    tolerances: Mapping[str, Tolerance] | None = None,
    json_path: str | Path | None = None,
    log: Callable[[str], None] = print,
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] = PRECISIONS,
    dataset: Dataset | None = None,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> VerifyReport:
    """Run the same preprocessed images through every runner and judge each against torch FP32 on the CPU.

    Writes ``DIR/verify.json`` (and ``json_path`` when given) and returns the report; the caller
    shows it (:func:`verify_text`), so that results can go to stdout and ``log`` lines to stderr.
    Images are decoded once and streamed batch by batch through all runners, so memory does not grow
    with the count. ``backends`` limits the candidates to those backends (the PyTorch reference is
    always run); naming one that cannot run here is an error naming its pip extra. ``precisions``
    picks the candidates' precisions (bf16 only when named); the reference is always torch FP32.
    ``dataset``, already opened (``pipeline``'s held-out split of ``--calib-dir``), replaces ``data`` and ``count``.
    ``backend_options`` are the backends' knobs by name (see ``discover_runners``).
    """
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    check_writable(Path(directory) / VERIFY_JSON)  # fail before the work, not after it
    if json_path is not None:
        check_writable(json_path)
    names = None if backends is None else tuple(dict.fromkeys((REFERENCE[0], *backends)))
    chosen = tuple(dict.fromkeys(("fp32", *precisions)))
    found = discover_runners(directory, names, chosen, required=backends or (), options=backend_options)
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if dataset is None:
        dataset = open_dataset(
            data if data is not None else default_data(found.source),
            found.source.preprocessing,
            count,
            num_classes=found.source.num_classes,
        )
    reference = next(c for c in found.runnable if c.key == REFERENCE)
    candidates = [c for c in found.runnable if c is not reference and c.precision in precisions]
    log(f"verifying {len(candidates)} candidate(s) against {reference.label} on {dataset.description}")
    notes = [note for note in (label_note(dataset, found.source), found.source.weights_warning()) if note]
    for note in notes:
        log(f"warning: {note}")
    opened, skipped, failed = open_runners([reference, *candidates])
    try:
        logits, labels, errors = _run_all([runner for _, runner in opened], dataset, batch_size)
    finally:
        for _, runner in opened:
            runner.close()
    if not labels_match_model(dataset, found.source):
        labels = None  # labels that are not the model's classes make accuracy meaningless
    results = []
    shortfall = int8_shortfall(found.manifest) if any(c.precision == "int8" for c, _ in opened) else None
    for (candidate, _), output, error in list(zip(opened, logits, errors, strict=True))[1:]:
        tolerance = tolerances[candidate.precision]
        if logits[0] is None:
            error = error or "no reference outputs to compare with"
        elif error is None and output.shape != logits[0].shape:
            error = f"outputs of shape {output.shape} where the PyTorch model gives {logits[0].shape}"
        parity = None if error else compare(logits[0], output, tolerance, labels)
        if parity is not None and candidate.precision == "int8" and shortfall:
            parity = replace(parity, failures=(*parity.failures, shortfall))
        results.append(CandidateResult(candidate, tolerance, parity, error))
    results += [CandidateResult(c, tolerances[c.precision], error=error) for c, error in failed]
    report = VerifyReport(
        _reference_record(reference, dataset, logits[0], labels, found.source, errors[0]),
        results,
        [c.skip_record() for c in found.skipped if c.precision in precisions] + skipped,
        [w for w in (dataset.skipped_summary(), *notes) if w],
        describe(),
        found.hashes([c for c, _ in opened] + [c for c, _ in failed]),
    )
    record = report.to_dict()
    write_json(found.manifest.directory / VERIFY_JSON, record)
    if json_path is not None:
        write_json(json_path, record)
    for line in report.warnings:
        log(f"warning: {line}")
    for entry in report.skipped:
        log(f"skipped {entry.label}: {entry.reason}")
    return report


def int8_shortfall(manifest: Manifest) -> str | None:
    """Why ``model.int8.onnx`` (which every INT8 candidate runs or was built from) is not the INT8 file recorded.

    Parity alone cannot tell a float file from an INT8 one that is close to it; the graph can.
    """
    from ..precision.int8 import quantization_shortfall

    entry = manifest.entry(ONNX_FILES["int8"])
    if entry is None:
        return None
    try:
        model = load_onnx(manifest.directory / ONNX_FILES["int8"], load_external_data=False)
    except BadInputError:
        return None  # a file that does not load fails its candidates with that error already
    return quantization_shortfall(model, entry.get("quantized_nodes"), entry.get("quantized_tensors"))


def _run_all(
    runners: list[Runner], dataset: Dataset, batch_size: int
) -> tuple[list[np.ndarray | None], np.ndarray | None, list[str | None]]:
    """Each runner's logits on the whole data set, the labels, and per runner the error that stopped it."""
    parts: list[list[np.ndarray]] = [[] for _ in runners]
    errors: list[str | None] = [None] * len(runners)
    labels: list[np.ndarray] = []
    with progress(dataset.count, f"verify ({len(runners)} runners)", unit="images") as advance:
        for batch in dataset.batches(batch_size):
            if batch.labels is not None:
                labels.append(batch.labels)
            for i, runner in enumerate(runners):
                if errors[i] is not None:
                    continue
                try:
                    parts[i].append(runner(batch.images))
                except DeployError as exc:
                    errors[i] = " ".join(str(exc).split())
                except Exception as exc:  # noqa: BLE001 - a candidate that crashes has failed; its error is the reason
                    errors[i] = f"raised {type(exc).__name__}: {one_line(exc, 200)}"
            advance(len(batch.images))
    logits = [None if error else np.concatenate(p) for p, error in zip(parts, errors, strict=True)]
    return logits, np.concatenate(labels) if labels else None, errors


def _reference_record(
    reference: Candidate,
    dataset: Dataset,
    logits: np.ndarray | None,
    labels: np.ndarray | None,
    source: ModelSource,
    error: str | None,
) -> dict[str, Any]:
    failures = [error] if error else []
    nonfinite = None if logits is None else int((~np.isfinite(logits)).sum())
    if nonfinite:
        failures.append(f"{nonfinite} non-finite outputs from the PyTorch model itself")
    accuracy = None
    if logits is not None and labels is not None:
        accuracy = float(np.mean(np.argmax(logits, axis=1) == labels) * 100.0)
    return {
        **reference.identity(),
        "model": source.to_dict(),
        "n": None if logits is None else len(logits),
        "accuracy": accuracy,
        "nonfinite": nonfinite,
        "data": dataset.description,
        "data_fingerprint": dataset.fingerprint,
        "labeled": dataset.has_labels,
        "failures": failures,
    }


def verify_text(data: Mapping[str, Any]) -> str:
    """The terminal table of a ``verify.json`` record, titled with the verdict, failure reasons under it."""
    table = render_table(*verify_table(data), title=f"verify: {'passed' if data['passed'] else 'FAILED'}")
    return "\n".join([table, *failure_notes(data)])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verify_table(data: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of ``verify.json`` results (the terminal table and the report share them)."""
    headers = [
        "candidate",
        "artifact",
        "n",
        "max abs",
        "rel err",
        "cos min",
        "top-1 raw / decisive (count)",
        "top-5",
        "non-finite",
        "accuracy % (Δ)",
        "result",
    ]
    rows = []
    for index, r in enumerate(data["results"]):
        accuracy = _fmt(r["accuracy"], ".2f")
        if r["accuracy"] is not None and r["reference_accuracy"] is not None:
            accuracy += f" ({r['accuracy'] - r['reference_accuracy']:+.2f})"
        rows.append(
            [
                f"{r['backend']}-{r['device']}:{r['precision']}",
                r["artifact"] or "-",
                _fmt(r["n"], "d"),
                _fmt(r["max_abs"], ".3g"),
                _fmt(r.get("rel_error"), ".3g"),
                _fmt(r["cosine_min"], ".6f"),
                _top1_cell(r),
                _fmt(r["top5_overlap"], ".2%"),
                _fmt(r["nonfinite"], "d"),
                accuracy,
                "pass" if r["passed"] else f"FAIL [{len([x for x in data['results'][:index] if not x['passed']]) + 1}]",
            ]
        )
    return headers, rows


def _top1_cell(r: Mapping[str, Any]) -> str:
    """Raw agreement beside the decisive figure and its count; the figure not judged is in brackets."""
    if r["top1_agreement"] is None:
        return "-"
    raw = f"{r['top1_agreement']:.2%}"
    if r.get("top1_decisive") is None:
        return raw
    decisive = f"{r['top1_decisive']:.2%} ({r['decisive']})"
    return f"{raw} / [{decisive}]" if r.get("top1_decidable") is False else f"[{raw}] / {decisive}"


def failure_notes(data: Mapping[str, Any]) -> list[str]:
    """``[n] candidate: reasons`` for each failing row of :func:`verify_table`, printed under it to keep it narrow."""
    failing = [r for r in data["results"] if not r["passed"]]
    return [
        f"[{n}] {r['backend']}-{r['device']}:{r['precision']}: {'; '.join(r['failures'])}"
        for n, r in enumerate(failing, 1)
    ]
