"""One page for a review: DIR/report.md and DIR/report.json, built only from the JSON files in DIR.

Every number comes from ``manifest.json``, ``verify.json`` and ``bench.json`` as written, so the
report cannot disagree with them; a step that did not run is shown as such, with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import MANIFEST_NAME, ArtifactEntry, Manifest, SkippedStep, now_iso, read_json, write_json, write_text
from ..backends.base import SkipRecord
from ..errors import BadInputError, one_line
from ..evaluate.bench import (
    BENCH_JSON,
    BENCH_PNG,
    BenchRow,
    LoadRecord,
    NoiseFloor,
    bench_table,
    format_ratio,
    format_speedup,
    read_bench,
    runner_table,
)
from ..evaluate.verify import VERIFY_JSON, VerifyRecord, failure_notes, verify_table
from ..precision.search import RemedyTrial, SearchRecord
from ..source import ModelSource, export_command, recorded_source
from ..ui import markdown_table

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
            "results": [r.to_dict() for r in self.rows],
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
            "best": None if self.best is None else self.best.to_dict(),
            "faster_unreliable": [r.to_dict() for r in self.faster_unreliable],
        }
        return data if self.note is None else {**data, "note": self.note}


@dataclass(frozen=True)
class RuntimeRatio:
    """ONNX Runtime FP32 against torch FP32 on the CPU at one batch size, as bench measured it."""

    batch_size: int
    onnxruntime_median_ms: float
    torch_median_ms: float
    speedup: float | None
    speedup_low: float | None
    speedup_high: float | None
    speedup_reliable: bool | None


@dataclass(frozen=True)
class Report:
    """What report.md and report.json say, built from the directory's records alone."""

    model: ModelSource | None
    artifacts: list[ArtifactEntry]
    verify: VerifyRecord | None
    bench: BenchSection | None
    summary: list[Headline]
    ratios: list[RuntimeRatio]
    skipped: list[SkippedStep]
    stale: list[str]
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
            "onnxruntime_vs_torch": [asdict(r) for r in self.ratios],
            "skipped": [asdict(s) for s in self.skipped],
            "precision": {
                a.name: {"heldout": a.heldout, "heldout_synthetic": a.heldout_synthetic, "search": a.search}
                for a in self.checked
            },
            "stale": self.stale,
            "machine": self.machine,
        }


def write_report(directory: str | Path, log: Callable[[str], None] = print) -> Path:
    """Write DIR/report.md and DIR/report.json from the directory alone; return the Markdown path.

    Steps that did not run or failed are read from the manifest (``build-trt`` and ``pipeline`` record them
    there), so ``report --dir`` after single commands writes what ``pipeline`` writes.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).exists():
        raise BadInputError(f"{directory} has no {MANIFEST_NAME}; run `{export_command(directory)}` first")
    manifest = Manifest(directory)
    verify_path, bench_path = directory / VERIFY_JSON, directory / BENCH_JSON
    verify = VerifyRecord.from_dict(read_json(verify_path)) if verify_path.exists() else None
    plot = BENCH_PNG if (directory / BENCH_PNG).exists() else None
    bench = BenchSection.from_dict(read_json(bench_path), plot) if bench_path.exists() else None
    report = build_report(manifest, verify, bench, manifest.skipped)
    where = where_markdown(directory)  # read, and a malformed inspect.json refused, before anything is written
    write_json(directory / REPORT_JSON, report.to_dict())
    path = directory / REPORT_MD
    write_text(path, render_markdown(report) + where)
    log(f"wrote {path} and {directory / REPORT_JSON}")
    return path


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
    return Report(
        model=recorded_source(manifest) if fp32 is not None else None,
        artifacts=list(manifest.artifacts.values()),
        verify=verify,
        bench=bench,
        summary=_summary(verify, bench),
        ratios=[] if bench is None else _runtime_ratios(bench.rows),
        skipped=skipped,
        stale=_stale(manifest, measured),
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
    passed = {(r.backend, r.precision, r.device, r.artifact) for r in (verify.rows if verify else []) if r.passed}
    rows = [r for r in bench.rows if r.speedup_vs_reference is not None and not r.is_reference] if bench else []
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


def _runtime_ratios(rows: list[BenchRow]) -> list[RuntimeRatio]:
    """ONNX Runtime FP32 against torch FP32 on the CPU at each batch size, as bench measured it."""
    torch = {r.batch_size: r for r in rows if (r.backend, r.precision, r.device) == ("torch", "fp32", "cpu")}
    return [
        RuntimeRatio(
            r.batch_size,
            r.median_ms,
            torch[r.batch_size].median_ms,
            r.speedup_vs_reference,
            r.speedup_low,
            r.speedup_high,
            r.speedup_reliable,
        )
        for r in rows
        if (r.backend, r.precision, r.device) == ("onnxruntime", "fp32", "cpu") and r.batch_size in torch
    ]


def render_markdown(report: Report) -> str:
    """report.md from the report's objects."""
    model = report.model
    out = [f"# resnext-deploy report: {model.arch if model else 'unknown model'}", ""]
    out += _status_lines(report)
    out.append(f"Made {report.created} from {MANIFEST_NAME}, {VERIFY_JSON} and {BENCH_JSON} in this directory.")
    out += [f"\n**Out of date:** {line}." for line in report.stale]
    out += _summary_section(report.summary, report.bench)
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
    out += _verify_section(report.verify)
    out += _bench_section(report.bench, report.ratios)
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


def _status_lines(report: Report) -> list[str]:
    """The first lines: every step that failed (a typed file, verify, bench), or that all that ran passed."""
    failed = [(step.step, step.reason) for step in report.skipped if step.failed]
    verify = report.verify
    if verify is not None and not verify.passed:
        failed += [("verify", note) for note in failure_notes(verify.rows)] or [("verify", "failed")]
    if not failed:
        ran = "every step that ran passed" + ("" if verify is not None else " (verify did not run)")
        return [f"**Status: passed**: {ran}.", ""]
    lines = [f"**Status: FAILED** ({len(failed)} problem{'s' if len(failed) > 1 else ''}):", ""]
    for step, reason in failed:
        first = reason.split("\n")[0]
        lines.append(f"- {step}: {first[:400] + ' ...' if len(first) > 400 else first}")
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
        out += _search_lines(SearchRecord.from_dict(entry.search))
    return out


def _search_lines(search: SearchRecord) -> list[str]:
    """What the INT8 search tried (methods, remedies), the sites it ranked, and what the file keeps in float."""
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
    for name, what in remedies:
        trial: RemedyTrial | None = getattr(search, name)
        if trial is not None:
            out.append(
                f"- {what.format(trial.size)}, tried before keeping sites in float: "
                f"{'pass' if trial.summary.passed else 'fail'}, cosine min {trial.summary.cosine_min:.4f}; "
                f"{'used in the file' if trial.chosen else 'not used'}."
            )
    out.append(f"- Remedies the file uses: {', '.join(search.remedies) or 'none'}.")
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


def _summary_section(summary: list[Headline], bench: BenchSection | None) -> list[str]:
    out = ["", "## Summary", ""]
    load, noise = (bench.load, bench.noise) if bench else (None, None)
    if load is not None and (note := load.note()):
        out += [f"**{note}.**", ""]
    if noise is not None:
        out += [f"Read the speedups with their interval: {noise.rule}.", ""]
    for item in summary:
        best = item.best
        if best:
            out.append(
                f"- {item.device}: fastest verified artifact with a reliable ratio: **{best.backend} "
                f"{best.precision}** (`{best.artifact or 'in memory'}`), batch {best.batch_size}: speedup over "
                f"PyTorch fp32 at the same batch size **{format_speedup(best)}**"
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
    return out


def _verify_section(verify: VerifyRecord | None) -> list[str]:
    out = ["", "## Parity and accuracy", ""]
    if verify is None:
        return [*out, "verify did not run."]
    reference = verify.reference
    out.append(f"Result: **{'passed' if verify.passed else 'FAILED'}**.")
    out.append(f"Data: {reference.data}; the same images through every runner.")
    if reference.accuracy is not None:
        out.append(f"Reference (torch fp32 on the CPU) accuracy: {reference.accuracy:.2f}%.")
    if reference.failures:
        out.append(f"Reference problems: {'; '.join(reference.failures)}.")
    out += [f"\n**Note:** {warning}." for warning in verify.warnings]
    out += ["", markdown_table(*verify_table(verify.rows))]
    if notes := failure_notes(verify.rows):
        out += ["", "Failures:", "", *(f"- {note}" for note in notes)]
    out += ["", "Tolerances applied:", ""]
    tolerances = {r.precision: r.tolerance for r in verify.rows}
    for precision, tolerance in tolerances.items():
        used = ", ".join(f"{k} {v}" for k, v in asdict(tolerance).items() if v is not None)
        out.append(f"- {precision}: {used}")
    return out


def _bench_section(bench: BenchSection | None, ratios: list[RuntimeRatio]) -> list[str]:
    out = ["", "## Latency and throughput", ""]
    if bench is None:
        return [*out, "bench did not run."]
    settings = bench.settings or {}
    rows = bench.rows
    if settings:
        out.append(
            f"Each runner in its own process; warm-up {settings['warmup_ms']:g} ms, then {settings['rounds']} "
            f"interleaved rounds of {settings.get('slice_s', 0) * 1e3:.0f} ms slices (at least "
            f"{settings['min_iterations']} calls per row), {settings.get('wall_s', 0):.0f} s in all within a "
            f"{settings.get('budget_s', 0):g} s budget. Speedup is torch fp32's median on the same device at the same "
            "batch size over the row's median; images/s comes from the same median."
        )
        out.append("")
    for ratio in ratios:
        speedup = format_ratio(ratio.speedup, ratio.speedup_low, ratio.speedup_high, bool(ratio.speedup_reliable))
        out.append(
            f"- ONNX Runtime fp32 vs torch fp32 (CPU), batch {ratio.batch_size}: {speedup} (median "
            f"{ratio.onnxruntime_median_ms:.3f} ms vs {ratio.torch_median_ms:.3f} ms)"
        )
    if ratios:
        out.append("")
    out.append(markdown_table(*bench_table(rows)))
    out += ["", markdown_table(*runner_table(rows))]
    if bench.plot:
        out += ["", f"![median latency and speedup against batch size, log scale, 95% intervals]({bench.plot})"]
    return out


def _size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "-"
    return f"{size_bytes / 1e6:.2f} MB" if size_bytes >= 1e5 else f"{size_bytes / 1e3:.1f} kB"
