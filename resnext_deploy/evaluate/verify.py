"""Does every artifact compute what the PyTorch model computes? The same images through every runner.

The candidates come from the backend registry (:func:`~resnext_deploy.backends.registry.discover_runners`);
this module knows nothing else about backends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import (
    ONNX_FILES,
    PRECISIONS,
    RUNTIME_FILES,
    Manifest,
    check_writable,
    load_onnx,
    now_iso,
    read_json,
    write_json,
)
from ..backends.base import Candidate, Runner, SkipRecord
from ..backends.registry import REFERENCE, Discovery, discover_runners, open_runners
from ..data import Dataset, open_dataset
from ..environment import describe
from ..errors import BadInputError, DeployError, one_line
from ..parity import DEFAULT_TOLERANCES, Parity, Tolerance, compare
from ..schemas import SCHEMA_VERSION
from ..serde import INLINE, JSON_KEY, RecordError, decode, encode
from ..source import ModelSource, demo_data, label_note, labels_match_model
from ..ui import progress, render_table
from .status import Problem, failed_steps, step_problem

VERIFY_JSON = "verify.json"
Log = Callable[[str], None]


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
        changed: dict[str, Any] = {name: value}
        result[precision] = replace(result[precision], **changed)
    return result


@dataclass(frozen=True)
class ReferenceRecord:
    """The PyTorch FP32 run every candidate is judged against: its model, data, accuracy and problems."""

    backend: str
    precision: str
    device: str
    artifact: str | None
    model: ModelSource
    n: int | None
    accuracy: float | None
    nonfinite: int | None
    data: str
    data_fingerprint: str
    labeled: bool
    failures: tuple[str, ...]


@dataclass(frozen=True)
class VerifyRow:
    """One candidate's line of ``verify.json``: which runner and file, its metrics, tolerance and verdict."""

    backend: str
    precision: str
    device: str
    artifact: str | None
    # Written inline in the row; None (nulls there): the candidate never produced outputs (its error is in failures).
    parity: Parity | None = field(metadata=INLINE)
    passed: bool
    failures: tuple[str, ...]
    tolerance: Tolerance

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.device}:{self.precision}"

    @property
    def full_label(self) -> str:
        """The label with the file it ran, as a candidate names itself in logs."""
        return f"{self.label} ({self.artifact})" if self.artifact else self.label


@dataclass
class VerifyRecord:
    """What ``verify`` found, as ``verify.json`` holds it; truthy when the reference is sound and every row passed.

    The terminal table and the report are printed from this object, whether just measured or read back.
    """

    reference: ReferenceRecord
    rows: list[VerifyRow] = field(metadata={JSON_KEY: "results"})
    skipped: list[SkipRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    failed_steps: list[Problem] = field(default_factory=list)  # recorded in the manifest: artifacts not made

    @property
    def passed(self) -> bool:
        return not self.reference.failures and all(r.passed for r in self.rows) and not self.failed_steps

    def __bool__(self) -> bool:
        return self.passed

    def problems(self) -> list[Problem]:
        """The reference's problems and each failing candidate, with all its reasons (what the run's status reads)."""
        problems = [Problem("reference torch-cpu:fp32", failure) for failure in self.reference.failures]
        return problems + [Problem(row.full_label, "; ".join(row.failures)) for row in self.rows if not row.passed]

    def failure_summary(self) -> str:
        """One line naming every failing candidate and its first reason."""
        failures = self.reference.failures
        parts = [f"reference torch-cpu:fp32: {failures[0]}"] if failures else []
        parts += [f"{r.full_label}: {r.failures[0]}" for r in self.rows if not r.passed]
        parts += [str(problem) for problem in self.failed_steps]
        return f"{len(parts)} failed: " + "; ".join(parts)


def verify_json(record: VerifyRecord) -> dict[str, Any]:
    """The content of ``verify.json``: the record as strict JSON, with its format's version and its verdict."""
    return {"schema_version": SCHEMA_VERSION, **encode(record, nan_as_null=True), "passed": record.passed}


def read_verify(path: str | Path) -> VerifyRecord:
    """``verify.json`` as verify wrote it; a malformed or other-version file is one ``BadInputError`` naming the key."""
    path = Path(path)
    data: Any = read_json(path)
    if not isinstance(data, dict):
        raise BadInputError(f"{path.name} is a JSON {type(data).__name__}, not an object; run verify again")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BadInputError(
            f"{path.name}: schema_version {str(data.get('schema_version'))[:40]} is not one this resnext-deploy reads "
            f"({SCHEMA_VERSION}); run verify again with this version"
        )
    try:
        return decode(VerifyRecord, data, nan_as_null=True)
    except RecordError as exc:
        where = str(exc).removeprefix(f"{VerifyRecord.__name__}.")
        raise BadInputError(f"{path.name}: {where}; run verify again (or restore the file)") from None


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

    def row(self) -> VerifyRow:
        c = self.candidate
        failures = tuple(self.failures)
        return VerifyRow(
            c.backend, c.precision, c.device, c.artifact, self.parity, self.passed, failures, self.tolerance
        )


@dataclass
class VerifyReport:
    """A ``verify`` run: its record (what verify.json holds, what the printers read) and each candidate's result."""

    record: VerifyRecord
    results: list[CandidateResult]

    @property
    def passed(self) -> bool:
        return self.record.passed

    def __bool__(self) -> bool:
        return self.passed

    def failure_summary(self) -> str:
        return self.record.failure_summary()


@dataclass
class VerifyPlan:
    """What a verify run compares: the reference, the chosen candidates, those that cannot run here, the images."""

    found: Discovery
    reference: Candidate
    candidates: list[Candidate]
    skipped: list[Candidate]
    dataset: Dataset
    notes: list[str]  # why accuracy is not reported, random weights: said before the run and recorded


@dataclass
class VerifyRun:
    """Every opened runner's outputs on the plan's images, the reference first, and the runners that did not run."""

    ran: list[Candidate]
    logits: list[np.ndarray | None]  # None where the runner failed; its error is in ``errors``
    labels: np.ndarray | None  # None when unlabeled or not the model's classes
    errors: list[str | None]
    skipped: list[SkipRecord]  # could not open here
    failed: list[tuple[Candidate, str]]  # failed to open


def default_data(source: ModelSource) -> Path | None:
    """The demo model's labeled validation split; nothing (seeded synthetic input) for any other model."""
    demo = demo_data(source)
    return demo.val if demo is not None and demo.val.is_dir() else None


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

    Four steps: :func:`plan_verify` (which runners, which images), :func:`run_candidates` (their logits),
    :func:`judge` (each against the reference) and :func:`record_verify` (``DIR/verify.json``, and
    ``json_path`` when given). The caller shows the report (:func:`verify_text`), so that results can go
    to stdout and ``log`` lines to stderr. Images are decoded once and streamed batch by batch through all
    runners, so memory does not grow with the count. ``backends`` limits the candidates to those backends
    (the PyTorch reference is always run); naming one that cannot run here is an error naming its pip
    extra. ``precisions`` picks the candidates' precisions (bf16 only when named); the reference is always
    torch FP32. ``dataset``, already opened (``pipeline``'s held-out split of ``--calib-dir``), replaces
    ``data`` and ``count``.
    ``backend_options`` are the backends' knobs by name (see ``discover_runners``).
    """
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    check_writable(Path(directory) / VERIFY_JSON)  # fail before the work, not after it
    if json_path is not None:
        check_writable(json_path)
    plan = plan_verify(directory, data, count, backends, precisions, dataset, backend_options)
    log(f"verifying {len(plan.candidates)} candidate(s) against {plan.reference.label} on {plan.dataset.description}")
    for note in plan.notes:
        log(f"warning: {note}")
    report = judge(plan, run_candidates(plan, batch_size), {**DEFAULT_TOLERANCES, **(tolerances or {})})
    record_verify(report.record, plan.found.manifest.directory, json_path, log, logged=plan.notes)
    return report


def plan_verify(
    directory: str | Path,
    data: str | Path | None,
    count: int | None,
    backends: Sequence[str] | None,
    precisions: Sequence[str],
    dataset: Dataset | None = None,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> VerifyPlan:
    """The runners DIR offers here (the reference and the chosen candidates) and the images they all see."""
    names = None if backends is None else tuple(dict.fromkeys((REFERENCE[0], *backends)))
    chosen = tuple(dict.fromkeys(("fp32", *precisions)))
    found = discover_runners(directory, names, chosen, required=backends or (), options=backend_options)
    if dataset is None:
        dataset = open_dataset(
            data if data is not None else default_data(found.source),
            found.source.preprocessing,
            count,
            num_classes=found.source.num_classes,
            class_names=found.source.class_names,
        )
    reference = next(c for c in found.runnable if c.key == REFERENCE)
    candidates = [c for c in found.runnable if c is not reference and c.precision in precisions]
    skipped = [c for c in found.skipped if c.precision in precisions]
    notes = [note for note in (label_note(dataset, found.source), found.source.weights_warning()) if note]
    return VerifyPlan(found, reference, candidates, skipped, dataset, notes)


def run_candidates(plan: VerifyPlan, batch_size: int) -> VerifyRun:
    """Open every planned runner and stream the images through them all; each is closed again, whatever happens."""
    opened, skipped, failed = open_runners([plan.reference, *plan.candidates])
    try:
        logits, labels, errors = _run_all([runner for _, runner in opened], plan.dataset, batch_size)
    finally:
        for _, runner in opened:
            runner.close()
    if not labels_match_model(plan.dataset, plan.found.source):
        labels = None  # labels that are not the model's classes make accuracy meaningless
    return VerifyRun([c for c, _ in opened], logits, labels, errors, skipped, failed)


def judge(plan: VerifyPlan, run: VerifyRun, tolerances: Mapping[str, Tolerance]) -> VerifyReport:
    """Each candidate's outputs against the reference's, with its precision's tolerance: the run's report."""
    reference = run.logits[0]
    results = []
    shortfalls = {  # per INT8 file: the ONNX file a candidate runs, else (an engine) model.int8.onnx it was built from
        name: int8_shortfall(plan.found.manifest, name)
        for name in {_int8_file(c.artifact) for c in run.ran if c.precision == "int8"}
    }
    for candidate, output, error in list(zip(run.ran, run.logits, run.errors, strict=True))[1:]:
        tolerance = tolerances[candidate.precision]
        parity = None
        if reference is None:
            error = error or "no reference outputs to compare with"
        elif error is None and output is not None and output.shape != reference.shape:
            error = f"outputs of shape {output.shape} where the PyTorch model gives {reference.shape}"
        elif error is None and output is not None:
            parity = compare(reference, output, tolerance, run.labels)
        shortfall = shortfalls.get(_int8_file(candidate.artifact)) if candidate.precision == "int8" else None
        if parity is not None and shortfall:
            parity = replace(parity, failures=(*parity.failures, shortfall))
        results.append(CandidateResult(candidate, tolerance, parity, error))
    results += [CandidateResult(c, tolerances[c.precision], error=error) for c, error in run.failed]
    record = VerifyRecord(
        _reference_record(plan, run),
        [r.row() for r in results],
        [c.skip_record() for c in plan.skipped] + run.skipped,
        [w for w in (plan.dataset.skipped_summary(), *plan.notes) if w],
        describe(),
        plan.found.hashes([*run.ran, *(c for c, _ in run.failed)]),
        failed_steps=[step_problem(step) for step in failed_steps(plan.found.manifest) if step.artifact],
    )
    return VerifyReport(record, results)


def record_verify(
    record: VerifyRecord,
    directory: Path,
    json_path: str | Path | None,
    log: Callable[[str], None],
    logged: Sequence[str] = (),
) -> None:
    """Write ``DIR/verify.json`` (and ``json_path``), then log the warnings and the runners that did not run.

    ``logged``: warnings already said before the run (the data's notes), recorded but not said twice.
    """
    data = verify_json(record)
    write_json(directory / VERIFY_JSON, data)
    if json_path is not None:
        write_json(json_path, data)
    for line in record.warnings:
        if line not in logged:
            log(f"warning: {line}")
    for entry in record.skipped:
        log(f"skipped {entry.label}: {entry.reason}")


def _int8_file(artifact: str | None) -> str:
    """The INT8 ONNX file behind a candidate: the one it runs (a runtime's variant too), else model.int8.onnx."""
    return artifact if artifact in INT8_ONNX_FILES else ONNX_FILES["int8"]


INT8_ONNX_FILES = frozenset(
    [ONNX_FILES["int8"], *(name for (precision, _family), name in RUNTIME_FILES.items() if precision == "int8")]
)


def int8_shortfall(manifest: Manifest, name: str = ONNX_FILES["int8"]) -> str | None:
    """Why the INT8 file ``name`` (which a candidate runs or was built from) is not the INT8 file recorded.

    Parity alone cannot tell a float file from an INT8 one that is close to it; the graph can.
    """
    from ..precision.int8 import quantization_shortfall

    entry = manifest.entry(name)
    if entry is None:
        return None
    try:
        model = load_onnx(manifest.directory / name, load_external_data=False)
    except BadInputError:
        return None  # a file that does not load fails its candidates with that error already
    return quantization_shortfall(model, entry.quantized_nodes, entry.quantized_tensors)


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


def _reference_record(plan: VerifyPlan, run: VerifyRun) -> ReferenceRecord:
    """The reference's own run: how many images, its accuracy where labels count, and what went wrong with it."""
    logits, error, reference = run.logits[0], run.errors[0], plan.reference
    failures = [error] if error else []
    nonfinite = None if logits is None else int((~np.isfinite(logits)).sum())
    if nonfinite:
        failures.append(f"{nonfinite} non-finite outputs from the PyTorch model itself")
    accuracy = None
    if logits is not None and run.labels is not None:
        accuracy = float(np.mean(np.argmax(logits, axis=1) == run.labels) * 100.0)
    return ReferenceRecord(
        reference.backend,
        reference.precision,
        reference.device,
        reference.artifact,
        plan.found.source,
        None if logits is None else len(logits),
        accuracy,
        nonfinite,
        plan.dataset.description,
        plan.dataset.fingerprint,
        plan.dataset.has_labels,
        tuple(failures),
    )


def verify_text(record: VerifyRecord) -> str:
    """The terminal table of a verify run, titled with the verdict, failure reasons under it."""
    table = render_table(*verify_table(record.rows), title=f"verify: {'passed' if record.passed else 'FAILED'}")
    return "\n".join([table, *failure_notes(record.rows), *step_notes(record)])


def step_notes(record: VerifyRecord) -> list[str]:
    """The artifacts a recorded step failed to make, which verify could not check: each one fails it."""
    return [f"step failed: {problem}" for problem in record.failed_steps]


def _fmt(value: float | None, spec: str) -> str:
    """A cell; a metric that is missing or not finite (written as null in verify.json) is a dash."""
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def verify_table(rows: Sequence[VerifyRow]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of verify's rows (the terminal table and the report share them)."""
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
    cells = []
    failed = 0
    for r in rows:
        p = r.parity  # a failing Parity is falsy: test it against None, so a failed row shows its figures
        failed += not r.passed
        accuracy = _fmt(p.accuracy if p is not None else None, ".2f")
        if p is not None and p.accuracy is not None and p.reference_accuracy is not None:
            accuracy += f" ({p.accuracy - p.reference_accuracy:+.2f})"
        cells.append(
            [
                r.label,
                r.artifact or "-",
                _fmt(p.n if p is not None else None, "d"),
                _fmt(p.max_abs if p is not None else None, ".3g"),
                _fmt(p.rel_error if p is not None else None, ".3g"),
                _fmt(p.cosine_min if p is not None else None, ".6f"),
                _top1_cell(p),
                _fmt(p.top5_overlap if p is not None else None, ".2%"),
                _fmt(p.nonfinite if p is not None else None, "d"),
                accuracy,
                "pass" if r.passed else f"FAIL [{failed}]",
            ]
        )
    return headers, cells


def _top1_cell(p: Parity | None) -> str:
    """Raw agreement beside the decisive figure and its count; the figure not judged is in brackets."""
    if p is None or not math.isfinite(p.top1_agreement):
        return "-"
    raw = f"{p.top1_agreement:.2%}"
    if not math.isfinite(p.top1_decisive):
        return raw
    decisive = f"{p.top1_decisive:.2%} ({p.decisive})"
    return f"{raw} / [{decisive}]" if not p.top1_decidable else f"[{raw}] / {decisive}"


def failure_notes(rows: Sequence[VerifyRow]) -> list[str]:
    """``[n] candidate: reasons`` for each failing row of :func:`verify_table`, printed under it to keep it narrow."""
    failing = [r for r in rows if not r.passed]
    return [f"[{n}] {r.label}: {'; '.join(r.failures)}" for n, r in enumerate(failing, 1)]
