"""What the report says, as records read from the directory's JSON files: read them, then render (``render``).

Every number comes from ``manifest.json``, ``verify.json`` and ``bench.json`` as written, so the report cannot
disagree with them; a step that did not run is a skipped step, with its reason. As Polygraphy's ``run`` gives
``RunResults`` and ``compare`` an ``AccuracyResult``, :func:`read_report` gives a :class:`Report`, and
:mod:`.render` only formats it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..artifacts import MANIFEST_NAME, ArtifactEntry, Manifest, SkippedStep, now_iso
from ..errors import BadInputError
from ..evaluate.bench import BENCH_JSON, BENCH_PNG, BenchReport, BenchRow, format_speedup, read_bench_report
from ..evaluate.status import RunStatus, changed_since, run_status
from ..evaluate.verify import VERIFY_JSON, VerifyRecord, read_verify, verify_json
from ..serde import encode
from ..source import ModelSource, export_command, recorded_source

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


@dataclass(frozen=True)
class Headline:
    """Per device: the fastest verified row with a reliable ratio, faster rows that are not reliable, or why none."""

    device: str
    best: BenchRow | None
    faster_unreliable: list[BenchRow]
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "device": self.device,
            "best": None if self.best is None else encode(self.best),
            "faster_unreliable": [encode(r) for r in self.faster_unreliable],
        }
        return data if self.note is None else {**data, "note": self.note}


@dataclass(frozen=True)
class FastestRatio:
    """The fastest verified artifact on a device at one batch size against torch FP32 there, as bench measured it."""

    device: str
    batch_size: int
    backend: str
    precision: str
    artifact: str | None
    median_ms: float
    torch_median_ms: float
    speedup: str  # as the tables write it: the ratio, its interval, ``?`` when not reliable


@dataclass(frozen=True)
class Report:
    """What report.md and report.json say, built from the directory's records alone."""

    model: ModelSource | None
    artifacts: list[ArtifactEntry]
    verify: VerifyRecord | None
    bench: BenchReport | None
    summary: list[Headline]
    ratios: list[FastestRatio]
    skipped: list[SkippedStep]
    stale: list[str]
    status: RunStatus
    changed: list[str] = field(default_factory=list)  # files verify ran whose content has changed since
    weights_warning: str | None = None
    plot: str | None = None  # bench's plot, where it is in the directory
    created: str = field(default_factory=now_iso)

    @property
    def checked(self) -> list[ArtifactEntry]:
        """The typed files checked on held-out data when they were made."""
        return [a for a in self.artifacts if a.heldout is not None]

    @property
    def machine(self) -> Mapping[str, Any] | None:
        """The machine the results were measured on, as its record holds it (bench's, else verify's)."""
        if self.bench is not None:
            return encode(self.bench.machine)
        return self.verify.machine if self.verify is not None else None

    def _bench_json(self, bench: BenchReport) -> dict[str, object]:
        keys = ("settings", "noise", "load", "results", "warnings")
        return {**{key: encode(getattr(bench, key)) for key in keys}, "plot": self.plot}

    def to_dict(self) -> dict[str, object]:
        """The content of report.json."""
        verify = None
        if self.verify is not None:
            record = verify_json(self.verify)
            verify = {k: record[k] for k in ("passed", "reference", "results", "warnings")}
        return {
            "created": self.created,
            "status": self.status.to_dict(),
            "model": None if self.model is None else self.model.to_dict(),
            "artifacts": [
                {
                    "file": a.name,
                    "precision": a.precision,
                    "size_bytes": a.size_bytes,
                    "sha256": a.sha256,
                    "parent_sha256": a.parent_sha256,
                    "created": a.created,
                }
                for a in self.artifacts
            ],
            "verify": verify,
            "bench": None if self.bench is None else self._bench_json(self.bench),
            "summary": [h.to_dict() for h in self.summary],
            "weights_warning": self.weights_warning,
            "fastest_verified_vs_torch": [asdict(r) for r in self.ratios],
            "skipped": [asdict(s) for s in self.skipped],
            "precision": {
                a.name: {"heldout": a.heldout, "heldout_synthetic": a.heldout_synthetic, "search": a.search}
                for a in self.checked
            },
            "stale": self.stale,
            "machine": self.machine,
        }


@dataclass(frozen=True)
class WrittenReport:
    """Where report.md and report.json went, and the run's status they give (the ``report`` command exits with it)."""

    path: Path
    json_path: Path
    status: RunStatus


def read_report(directory: Path) -> Report:
    """The report of ``directory``, from its files alone: the manifest, and verify's and bench's records.

    Steps that did not run or failed are read from the manifest (every command records them there), so
    ``report --dir`` after single commands reports what ``pipeline`` reports. Each record is read as the typed
    object its command wrote, checked field by field: a wrong type, a missing key or an unknown format is bad
    input naming the file and the key.
    """
    if not (directory / MANIFEST_NAME).exists():
        raise BadInputError(f"{directory} has no {MANIFEST_NAME}; run `{export_command(directory)}` first")
    manifest = Manifest(directory)
    verify_path, bench_path = directory / VERIFY_JSON, directory / BENCH_JSON
    verify = read_verify(verify_path) if verify_path.exists() else None
    bench = read_bench_report(bench_path) if bench_path.exists() else None
    report = build_report(manifest, verify, bench, manifest.skipped)
    return replace(report, plot=BENCH_PNG) if (directory / BENCH_PNG).exists() else report


def report_json(report: Report) -> str:
    """The text of report.json: strict JSON, so a NaN or infinite figure is null."""
    return json.dumps(encode(report.to_dict(), nan_as_null=True), indent=2, allow_nan=False, default=str) + "\n"


def build_report(
    manifest: Manifest, verify: VerifyRecord | None, bench: BenchReport | None, steps: Sequence[SkippedStep]
) -> Report:
    """The report of a directory: the manifest's artifacts and skipped steps, verify's and bench's results."""
    fp32 = manifest.entry("model.onnx")
    skipped = list(steps)
    runners: dict[tuple[str, str], list[str]] = {}  # (runner, reason) -> the commands that skipped it
    for name, records in (("verify", verify.skipped if verify else []), ("bench", bench.skipped if bench else [])):
        for record in records:
            runners.setdefault((record.label, record.reason), []).append(name)
    skipped += [SkippedStep(f"{runner} ({', '.join(names)})", why) for (runner, why), names in runners.items()]
    if verify is None:
        skipped.append(SkippedStep("verify", f"no {VERIFY_JSON} in the directory"))
    if bench is None:
        skipped.append(SkippedStep("bench", f"no {BENCH_JSON} in the directory"))
    measured = {VERIFY_JSON: verify.artifacts if verify else {}, BENCH_JSON: bench.artifacts if bench else {}}
    changed = changed_since(manifest.directory, verify.artifacts) if verify else []
    return Report(
        model=recorded_source(manifest) if fp32 is not None else None,
        artifacts=list(manifest.artifacts.values()),
        verify=verify,
        bench=bench,
        summary=_summary(verify, bench),
        ratios=[] if bench is None else _fastest_ratios(bench.results, _verified(verify)),
        skipped=skipped,
        stale=_stale(manifest, measured),
        status=run_status(manifest, verify, changed),
        changed=changed,
        weights_warning=fp32.weights_warning if fp32 else None,
    )


def _stale(manifest: Manifest, measured: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Artifacts made from an earlier model.onnx, and results measured on a file that has changed (or gone) since."""
    stale = [
        f"{name} is stale, {reason}; build-trt or pipeline makes it again" for name, reason in manifest.stale().items()
    ]
    for name, hashes in measured.items():
        for artifact, sha256 in hashes.items():
            entry = manifest.entry(artifact)
            if entry is None or entry.sha256 != sha256:
                stale.append(f"{name} was measured on an earlier {artifact}; run {name.split('.')[0]} again")
    return stale


def _summary(verify: VerifyRecord | None, bench: BenchReport | None) -> list[Headline]:
    """Per device (GPU, CPU): the fastest verified artifact whose speedup is reliable, and faster unreliable ones.

    Only a candidate that passed ``verify`` counts, and only a reliable speedup (a narrow interval, no
    unstable or disturbed row) is headlined; verified rows that measured faster but unreliably are
    named beside it, never as the result.
    """
    passed = _verified(verify)
    rows = [r for r in bench.results if _finite_speedup(r) and not r.is_reference] if bench else []
    summary = []
    for device, on_device in (("GPU", lambda d: d != "cpu"), ("CPU", lambda d: d == "cpu")):
        measured = [r for r in rows if on_device(r.device)]
        verified = [r for r in measured if (r.backend, r.precision, r.device, r.artifact) in passed]
        reliable = [r for r in verified if r.speedup_reliable]
        best = max(reliable, key=lambda r: r.speedup_vs_reference or 0.0) if reliable else None
        floor = best.speedup_vs_reference or 0.0 if best else 0.0
        faster = sorted(
            (r for r in verified if not r.speedup_reliable and (r.speedup_vs_reference or 0.0) > floor),
            key=lambda r: -(r.speedup_vs_reference or 0.0),
        )
        note = None
        if bench is None:
            note = "bench did not run"
        elif not measured:
            note = "no runner measured on this device here"
        elif verify is None:
            note = "verify did not run, so no artifact is verified"
        elif not verified:
            note = "no measured artifact passed verify"
        elif not reliable:
            note = "no verified speedup is reliable (see the stability note)"
        summary.append(Headline(device, best, faster, note))
    return summary


def _verified(verify: VerifyRecord | None) -> set[tuple[str, str, str, str | None]]:
    """The (backend, precision, device, artifact) of every candidate that passed verify."""
    return {(r.backend, r.precision, r.device, r.artifact) for r in (verify.rows if verify else []) if r.passed}


def _finite_speedup(row: BenchRow) -> bool:
    """A speedup that can be shown: a finite ratio of finite medians (a NaN is never headlined)."""
    figures = (row.speedup_vs_reference, row.median_ms)
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in figures)


def _fastest_ratios(rows: list[BenchRow], verified: set[tuple[str, str, str, str | None]]) -> list[FastestRatio]:
    """Per device and batch size, the fastest verified artifact against torch FP32 there (any runtime)."""
    torch = {(r.device, r.batch_size): r for r in rows if r.is_reference and math.isfinite(r.median_ms)}
    best: dict[tuple[str, int], BenchRow] = {}
    for row in rows:
        key = (row.device, row.batch_size)
        if row.is_reference or key not in torch or not _finite_speedup(row):
            continue
        if (row.backend, row.precision, row.device, row.artifact) not in verified:
            continue
        if key not in best or row.median_ms < best[key].median_ms:
            best[key] = row
    return [
        FastestRatio(
            r.device,
            r.batch_size,
            r.backend,
            r.precision,
            r.artifact,
            r.median_ms,
            torch[key].median_ms,
            format_speedup(r),
        )
        for key, r in sorted(best.items())
    ]
