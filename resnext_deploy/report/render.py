"""report.md from a :class:`~.model.Report`: only formatting, every figure as the records hold it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..artifacts import MANIFEST_NAME, ArtifactEntry
from ..evaluate.bench import BENCH_JSON, BenchReport, bench_table, format_speedup, runner_table
from ..evaluate.status import RunStatus, Verdict
from ..evaluate.verify import VERIFY_JSON, VerifyRecord, failure_notes, verify_table
from ..precision.search import RemedyTrial, SearchRecord, TrialSummary
from ..ui import markdown_table
from .model import FastestRatio, Report

NAMED = 3  # faster-but-unreliable rows named beside a headline


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
    out += _bench_section(report.bench, report.ratios, report.plot)
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
    if bench is not None and (note := bench.load.note()):
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


def _measured_section(bench: BenchReport | None) -> list[str]:
    """The noise floor and the stability rule: what a reader needs to trust the intervals, after the results."""
    if bench is None:
        return []
    run = bench.settings
    return [
        "",
        "## How this was measured",
        "",
        f"Each runner in its own process; warm-up {run.warmup_ms:g} ms, then {run.rounds} interleaved rounds of "
        f"{run.slice_s * 1e3:.0f} ms slices (at least {run.min_iterations} calls per row), {run.wall_s:.0f} s in all "
        f"within a {run.budget_s:g} s budget. Speedup is torch fp32's median on the same device at the same batch "
        "size over the row's median; images/s comes from the same median.",
        "",
        f"Read the speedups with their interval: {bench.noise.rule}.",
    ]


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


def _bench_section(bench: BenchReport | None, ratios: list[FastestRatio], plot: str | None) -> list[str]:
    out = ["", "## Latency and throughput", ""]
    if bench is None:
        return [*out, "bench did not run."]
    rows = bench.results
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
    if plot:
        out += ["", f"![median latency and speedup against batch size, log scale, 95% intervals]({plot})"]
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


def triton_section(directory: Path) -> str:
    """bench-triton's load test of the served model (DIR/bench_triton.json), where it ran."""
    from ..serving.load_test import triton_report_lines

    lines = triton_report_lines(directory)
    return "\n".join(["", "## Triton load test", "", *lines]) + "\n" if lines else ""
