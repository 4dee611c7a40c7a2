"""One page for a review: DIR/report.md and DIR/report.json, built only from the JSON files in DIR.

Every number comes from ``manifest.json``, ``verify.json`` and ``bench.json`` as written, so the
report cannot disagree with them; a step that did not run is shown as such, with its reason.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import MANIFEST_NAME, ArtifactEntry, Manifest, SkippedStep, atomic_path, now_iso, read_json
from ..backends.base import SkipRecord
from ..errors import BadInputError, one_line
from ..evaluate.bench import (
    BENCH_JSON,
    BENCH_PNG,
    BenchRow,
    LoadRecord,
    NoiseFloor,
    bench_table,
    format_speedup,
    read_bench,
    runner_table,
)
from ..evaluate.status import RunStatus, Verdict, changed_since, run_status
from ..evaluate.verify import VERIFY_JSON, VerifyRecord, failure_notes, verify_table
from ..precision.search import RemedyTrial, SearchRecord, TrialSummary
from ..schemas import SCHEMA_VERSION
from ..serde import encode
from ..source import ModelSource, export_command, recorded_source
from ..ui import markdown_table
from .records import check_record, check_settings

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
NAMED = 3  # faster-but-unreliable rows named beside a headline


@dataclass(frozen=True)
class BenchSection:
    """``bench.json`` as the report reads it: typed rows, noise floor and load, and bench's own settings record."""

    rows: list[BenchRow]
    noise: NoiseFloor | None = None
    load: LoadRecord | None = None
    settings: Mapping[str, Any] | None = None  # bench's record of how it measured (JSON, bench owns its shape)
    warnings: list[str] = field(default_factory=list)
    machine: Mapping[str, Any] | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)
    skipped: list[SkipRecord] = field(default_factory=list)
    plot: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], plot: str | None) -> BenchSection:
        """A ``bench.json`` read back; a malformed one is a ``BadInputError`` that says to run bench again."""
        try:
            rows, noise, load = read_bench(dict(data))
            return cls(
                rows,
                noise,
                load,
                data.get("settings"),
                list(data.get("warnings") or []),
                data.get("machine"),
                dict(data.get("artifacts") or {}),
                [SkipRecord.from_dict(s) for s in data.get("skipped") or []],
                plot,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInputError(f"{BENCH_JSON} is malformed ({one_line(exc, 80)}); run bench again") from None

    def to_dict(self) -> dict[str, object]:
        return {
            "settings": self.settings,
            "noise": None if self.noise is None else asdict(self.noise),
            "load": None if self.load is None else asdict(self.load),
            "results": [encode(r) for r in self.rows],
            "warnings": self.warnings,
            "plot": self.plot,
        }


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
    bench: BenchSection | None
    summary: list[Headline]
    ratios: list[FastestRatio]
    skipped: list[SkippedStep]
    stale: list[str]
    status: RunStatus
    changed: list[str] = field(default_factory=list)  # files verify ran whose content has changed since
    weights_warning: str | None = None
    created: str = field(default_factory=now_iso)

    @property
    def checked(self) -> list[ArtifactEntry]:
        """The typed files checked on held-out data when they were made."""
        return [a for a in self.artifacts if a.heldout is not None]

    @property
    def machine(self) -> Mapping[str, Any] | None:
        if self.bench is not None:
            return self.bench.machine
        return self.verify.machine if self.verify is not None else None

    def to_dict(self) -> dict[str, object]:
        """The content of report.json."""
        verify = None
        if self.verify is not None:
            record = self.verify.to_dict()
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
            "bench": None if self.bench is None else self.bench.to_dict(),
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


def write_report(directory: str | Path, log: Callable[[str], None] = print) -> WrittenReport:
    """Write DIR/report.md and DIR/report.json from the directory alone; return where, and the run's status.

    Steps that did not run or failed are read from the manifest (every command records them there), so
    ``report --dir`` after single commands writes what ``pipeline`` writes. Each record is read as the typed
    object its command wrote, checked field by field: a wrong type, a missing key or an unknown format is bad
    input naming the file and the key. Both files are rendered before either is renamed into place.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).exists():
        raise BadInputError(f"{directory} has no {MANIFEST_NAME}; run `{export_command(directory)}` first")
    manifest = Manifest(directory)
    verify_path, bench_path = directory / VERIFY_JSON, directory / BENCH_JSON
    verify = read_verify(verify_path) if verify_path.exists() else None
    plot = BENCH_PNG if (directory / BENCH_PNG).exists() else None
    bench = read_bench_section(bench_path, plot) if bench_path.exists() else None
    report = build_report(manifest, verify, bench, manifest.skipped)
    triton = _triton_section(directory)  # read, and a malformed file refused, before anything is written
    where = where_markdown(directory)  # read, and a malformed inspect.json refused, before anything is written
    markdown = render_markdown(report) + triton + where
    data = json.dumps(_strict(report.to_dict()), indent=2, allow_nan=False, default=str) + "\n"
    path, json_path = directory / REPORT_MD, directory / REPORT_JSON
    with atomic_path(json_path) as json_tmp, atomic_path(path) as markdown_tmp:
        json_tmp.write_bytes(data.encode("utf-8", "backslashreplace"))
        markdown_tmp.write_bytes(markdown.encode("utf-8", "backslashreplace"))
    log(f"wrote {path} and {json_path}")
    return WrittenReport(path, json_path, report.status)


def _schema_version(data: Any, name: str, command: str) -> None:
    """A file written by another version of its format is refused, naming the file and the key."""
    if not isinstance(data, dict):
        raise BadInputError(f"{name} is a JSON {type(data).__name__}, not an object; run {command} again")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BadInputError(
            f"{name}: schema_version {str(version)[:40]} is not one this resnext-deploy reads ({SCHEMA_VERSION}); "
            f"run {command} again with this version"
        )


def read_verify(path: Path) -> VerifyRecord:
    """``verify.json`` as its typed record, each field checked."""
    data = read_json(path)
    _schema_version(data, VERIFY_JSON, "verify")
    record = VerifyRecord.from_dict(data)
    check_record(record, VERIFY_JSON, "verify")
    return record


def read_bench_section(path: Path, plot: str | None) -> BenchSection:
    """``bench.json`` as the report reads it, each field checked."""
    data = read_json(path)
    _schema_version(data, BENCH_JSON, "bench")
    section = BenchSection.from_dict(data, plot)
    check_record(section, BENCH_JSON, "bench")
    if section.settings:
        check_settings(section.settings, BENCH_JSON)
    return section


def _strict(value: Any) -> Any:
    """Strict JSON has no NaN or infinity: null in their place."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def build_report(
    manifest: Manifest, verify: VerifyRecord | None, bench: BenchSection | None, steps: Sequence[SkippedStep]
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
        ratios=[] if bench is None else _fastest_ratios(bench.rows, _verified(verify)),
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


def _summary(verify: VerifyRecord | None, bench: BenchSection | None) -> list[Headline]:
    """Per device (GPU, CPU): the fastest verified artifact whose speedup is reliable, and faster unreliable ones.

    Only a candidate that passed ``verify`` counts, and only a reliable speedup (a narrow interval, no
    unstable or disturbed row) is headlined; verified rows that measured faster but unreliably are
    named beside it, never as the result.
    """
    passed = _verified(verify)
    rows = [r for r in bench.rows if _finite_speedup(r) and not r.is_reference] if bench else []
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


def render_markdown(report: Report) -> str:
    """report.md from the report's objects."""
    model = report.model
    out = [f"# resnext-deploy report: {model.arch if model else 'unknown model'}: {report.status.verdict.value}", ""]
    out += _status_lines(report.status)
    out.append(f"Made {report.created} from {MANIFEST_NAME}, {VERIFY_JSON} and {BENCH_JSON} in this directory.")
    out += [f"\n**Out of date:** {line}." for line in report.stale]
    out += _summary_section(report)
    if report.weights_warning:
        out += ["", f"**{report.weights_warning}.**"]
    warnings = report.bench.warnings if report.bench else []
    if warnings:
        out += ["", "bench warnings:", ""] + [f"- {w}" for w in warnings]
    if model:
        weights = model.checkpoint or "random initialisation (seed 0)"
        out += ["", f"Model: `{model.arch}`, {model.num_classes} classes, {model.image_size} px input."]
        out.append(f"Weights: {weights}.")
    out += ["", "## Artifacts", ""]
    out.append(
        markdown_table(
            ["file", "precision", "size", "sha256", "made from (sha256)"],
            [
                [
                    a.name,
                    a.precision or "-",
                    _size(a.size_bytes),
                    f"`{a.sha256[:12]}`",
                    f"`{a.parent_sha256[:12]}`" if a.parent_sha256 else "-",
                ]
                for a in report.artifacts
            ],
        )
    )
    out += _precision_section(report.checked)
    out += _verify_section(report.verify, report.changed)
    out += _bench_section(report.bench, report.ratios)
    out += _measured_section(report.bench)
    if report.skipped:
        out += ["", "## Skipped", ""]
        for step in report.skipped:
            first, *commands = step.reason.split("\n")  # later lines are commands to run elsewhere
            out.append(f"- {step.step}: {first}")
            if commands:
                out += ["", "  ```", *(f"  {command}" for command in commands), "  ```"]
    if report.machine:
        out += ["", "## Machine", ""]
        out.append(markdown_table(["", ""], [[str(k), str(v)] for k, v in report.machine.items()]))
    return "\n".join(out) + "\n"


def where_markdown(directory: Path) -> str:
    """The short "Where" section from ``DIR/inspect.json``, when inspect ran there (else nothing)."""
    from ..inspect.render import where_section
    from ..inspect.run import read_inspect

    found = read_inspect(directory)
    return "\n".join(where_section(found)) + "\n" if found is not None else ""


def _status_lines(status: RunStatus) -> list[str]:
    """The verdict derived from the directory (as ``verify`` and ``pipeline`` derive it), and each problem behind it."""
    if status.passed:
        return [
            "**Status: passed**: every recorded step succeeded and verify passed every candidate on these files.",
            "",
        ]
    count = len(status.problems)
    lines = [f"**Status: {status.verdict.value}** ({count} problem{'s' if count > 1 else ''}):", ""]
    for problem in status.problems:
        first = str(problem).split("\n")[0]
        lines.append(f"- {first[:400] + ' ...' if len(first) > 400 else first}")
    return [*lines, ""]


def _precision_section(checked: list[ArtifactEntry]) -> list[str]:
    """How each typed file was checked when it was made, and what the INT8 search did (its record, as written)."""
    if not checked:
        return []
    out = ["", "## Typed files: held-out check and INT8 search", ""]
    for entry in checked:
        loud = " **(synthetic inputs: numeric parity only, no accuracy)**" if entry.heldout_synthetic else ""
        out.append(f"- `{entry.name}` was checked on {entry.heldout}{loud}.")
        if not entry.search:
            continue
        out += _search_lines(SearchRecord.from_dict(entry.search), entry.remedies)
    return out


def _figures(summary: TrialSummary) -> str:
    rel = "" if summary.rel_error is None else f", relative error {summary.rel_error:.3g}"
    return f"{'pass' if summary.passed else 'fail'}, cosine min {summary.cosine_min:.4f}{rel}"


def _search_lines(search: SearchRecord, used: Sequence[str] | None = None) -> list[str]:
    """What the INT8 search tried (methods, remedies), the sites it ranked, and what the file keeps in float.

    ``used`` is what the file's manifest entry records that it uses (the search record's own list when None):
    a remedy is called used only when the search chose it and the file's entry lists it, with the figures of
    the graph it was compared with, since the search ranks by passing, accuracy, top-1, then relative error
    (so a remedy with the lower cosine but the smaller relative error is chosen, and the reader sees both).
    """
    used = list(search.remedies if used is None else used)
    plain = {method: m for method, m in search.methods.items() if " + " not in method}
    tried = ", ".join(
        f"{method} ({'pass' if m.passed else 'fail'}, cosine min {m.cosine_min:.4f})"
        for method, m in search.methods.items()
    )
    out = [f"- INT8 search ({search.seconds} s): calibration methods tried: {tried}; kept: {search.method}."]
    remedies = (
        ("equalization", "Cross-layer equalization (Nagel et al.) of {} Conv -> ReLU -> Conv pairs"),
        (
            "bias_correction",
            "Bias correction of {} Conv/Gemm layers (each one's INT8 output mean shift on the "
            "calibration images, taken off its bias)",
        ),
    )
    before = plain.get(search.method) or next(iter(plain.values()), None)
    for name, what in remedies:
        trial: RemedyTrial | None = getattr(search, name)
        if trial is None:
            continue
        label = name.replace("_", " ")
        compared = f" (the graph without it: {_figures(before)})" if before is not None else ""
        if trial.chosen and label in used:
            verdict = "used in the file: it ranked above the graph without it (pass, accuracy, top-1, relative error)"
        elif trial.chosen:
            verdict = "chosen by the search, but the file's manifest entry does not list it: not used"
        else:
            verdict = "not used"
        out.append(
            f"- {what.format(trial.size)}, tried before keeping sites in float: {_figures(trial.summary)}"
            f"{compared}; {verdict}."
        )
        if trial.chosen:
            before = trial.summary
    out.append(f"- Remedies the file uses: {', '.join(used) or 'none'}.")
    if search.ranking:
        rows = [[f"`{n}`", f"{v:.3g}"] for n, v in search.ranking]
        out += ["", markdown_table(["most sensitive Q/DQ site", "sensitivity"], rows), ""]
    kept = ", ".join(f"`{n}`" for n in search.kept) or "none"
    result = "passes" if search.passed else "still fails"
    out.append(
        f"- Kept out of INT8: {kept} ({len(search.kept)} of {search.layers} Q/DQ sites, budget "
        f"{search.budget}); the file {result} its check." + (f" {search.note}." if search.note else "")
    )
    if search.needed:
        out.append(f"- Keeping the {search.needed} most sensitive sites out would pass (beyond the budget).")
    return out


def _summary_section(report: Report) -> list[str]:
    """The verdict, then per device the fastest verified artifact with its interval (or why there is none)."""
    status, bench = report.status, report.bench
    out = ["", "## Summary", ""]
    verdict = {
        Verdict.PASSED: "**passed**",
        Verdict.FAILED: f"**FAILED** ({len(status.problems)} problem(s), listed above)",
        Verdict.NOT_VERIFIED: "**not verified** (see above)",
    }[status.verdict]
    out.append(f"- Verdict: {verdict}.")
    load = bench.load if bench else None
    if load is not None and (note := load.note()):
        out.append(f"- **{note}.**")
    for item in report.summary:
        best = item.best
        if best:
            out.append(
                f"- {item.device}: fastest verified artifact: **{best.backend} {best.precision}** "
                f"(`{best.artifact or 'in memory'}`), batch {best.batch_size}: **{format_speedup(best)}** the speed "
                "of PyTorch fp32 at the same batch size (95% interval)"
            )
        else:
            out.append(f"- {item.device}: no headline: {item.note}.")
        faster = item.faster_unreliable
        if faster:
            named = "; ".join(
                f"{r.backend} {r.precision} at batch {r.batch_size}, {format_speedup(r)}" for r in faster[:NAMED]
            )
            named += f" and {len(faster) - NAMED} more" if len(faster) > NAMED else ""
            out.append(
                f"  Measured faster but unreliable, not a result: {named}. Rerun bench on an idle machine or with a "
                "longer --duration."
            )
    if bench is not None:
        out += ["", "How to read the intervals: see [How this was measured](#how-this-was-measured)."]
    return out


def _measured_section(bench: BenchSection | None) -> list[str]:
    """The noise floor and the stability rule: what a reader needs to trust the intervals, after the results."""
    if bench is None:
        return []
    out = ["", "## How this was measured", ""]
    settings = bench.settings or {}
    if settings:
        out += [
            f"Each runner in its own process; warm-up {settings['warmup_ms']:g} ms, then {settings['rounds']} "
            f"interleaved rounds of {settings.get('slice_s', 0) * 1e3:.0f} ms slices (at least "
            f"{settings['min_iterations']} calls per row), {settings.get('wall_s', 0):.0f} s in all within a "
            f"{settings.get('budget_s', 0):g} s budget. Speedup is torch fp32's median on the same device at the same "
            "batch size over the row's median; images/s comes from the same median.",
            "",
        ]
    if bench.noise is not None:
        out.append(f"Read the speedups with their interval: {bench.noise.rule}.")
    return out


def _verify_section(verify: VerifyRecord | None, changed: list[str]) -> list[str]:
    out = ["", "## Parity and accuracy", ""]
    if verify is None:
        return [*out, "verify did not run."]
    reference = verify.reference
    if changed:
        names = ", ".join(f"`{name}`" for name in changed)
        out.append(
            f"Result: **not verified now**: {names} changed since verify (sha256 on disk differs from what verify "
            f"recorded); verify {'passed' if verify.passed else 'FAILED'} on the earlier file(s). Run verify again."
        )
    else:
        out.append(f"Result: **{'passed' if verify.passed else 'FAILED'}**.")
    out.append(f"Data: {reference.data}; the same images through every runner.")
    if reference.accuracy is not None:
        out.append(f"Reference (torch fp32 on the CPU) accuracy: {reference.accuracy:.2f}%.")
    if reference.failures:
        out.append(f"Reference problems: {'; '.join(reference.failures)}.")
    out += [f"\n**Note:** {warning}." for warning in verify.warnings]
    out += ["", markdown_table(*_dash_nonfinite(verify_table(verify.rows)))]
    if notes := failure_notes(verify.rows):
        out += ["", "Failures:", "", *(f"- {note}" for note in notes)]
    out += ["", "Tolerances applied:", ""]
    tolerances = {r.precision: r.tolerance for r in verify.rows}
    for precision, tolerance in tolerances.items():
        used = ", ".join(f"{k} {v}" for k, v in asdict(tolerance).items() if v is not None)
        out.append(f"- {precision}: {used}")
    return out


def _bench_section(bench: BenchSection | None, ratios: list[FastestRatio]) -> list[str]:
    out = ["", "## Latency and throughput", ""]
    if bench is None:
        return [*out, "bench did not run."]
    rows = bench.rows
    for ratio in ratios:
        out.append(
            f"- {ratio.device.upper()}, batch {ratio.batch_size}: the fastest verified artifact, {ratio.backend} "
            f"{ratio.precision} (`{ratio.artifact or 'in memory'}`), {ratio.speedup} the speed of torch fp32 "
            f"(median {ratio.median_ms:.3f} ms vs {ratio.torch_median_ms:.3f} ms)"
        )
    if ratios:
        out.append("")
    out.append(markdown_table(*_dash_nonfinite(bench_table(rows))))
    out += ["", markdown_table(*_dash_nonfinite(runner_table(rows)))]
    if bench.plot:
        out += ["", f"![median latency and speedup against batch size, log scale, 95% intervals]({bench.plot})"]
    return out


_NONFINITE = re.compile(r"(?<![A-Za-z])[-+]?(nan|inf)(?![A-Za-z])", re.IGNORECASE)


def _dash_nonfinite(table: tuple[list[str], list[list[str]]]) -> tuple[list[str], list[list[str]]]:
    """A cell holding a NaN or infinite figure (a hand-edited or broken record) is shown as ``-``."""
    headers, cells = table
    return headers, [["-" if _NONFINITE.search(cell) else cell for cell in row] for row in cells]


def _size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "-"
    return f"{size_bytes / 1e6:.2f} MB" if size_bytes >= 1e5 else f"{size_bytes / 1e3:.1f} kB"


def _triton_section(directory: Path) -> str:
    """bench-triton's load test of the served model (DIR/bench_triton.json), where it ran."""
    from ..serving.load_test import triton_report_lines

    lines = triton_report_lines(directory)
    return "\n".join(["", "## Triton load test", "", *lines]) + "\n" if lines else ""
