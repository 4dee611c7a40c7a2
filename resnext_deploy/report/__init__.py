"""One page for a review: DIR/report.md and DIR/report.json, built only from the JSON files in DIR.

Every number comes from ``manifest.json``, ``verify.json`` and ``bench.json`` as written, so the
report cannot disagree with them; a step that did not run is shown as such, with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..artifacts import MANIFEST_NAME, Manifest, now_iso, read_json, write_json, write_text
from ..errors import BadInputError
from ..evaluate.bench import (
    BENCH_JSON,
    BENCH_PNG,
    BenchRow,
    bench_table,
    format_ratio,
    format_speedup,
    read_bench,
    runner_table,
)
from ..evaluate.verify import VERIFY_JSON, failure_notes, verify_table
from ..source import export_command
from ..ui import markdown_table

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
NAMED = 3  # faster-but-unreliable rows named beside a headline


def write_report(directory: str | Path, log: Callable[[str], None] = print) -> Path:
    """Write DIR/report.md and DIR/report.json from the directory alone; return the Markdown path.

    Steps that did not run or failed are read from the manifest (``build-trt`` and ``pipeline`` record them
    there), so ``report --dir`` after single commands writes what ``pipeline`` writes.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).exists():
        raise BadInputError(f"{directory} has no {MANIFEST_NAME}; run `{export_command(directory)}` first")
    manifest = Manifest(directory)
    verify = _optional_json(directory / VERIFY_JSON)
    bench = _optional_json(directory / BENCH_JSON)
    steps = manifest.skipped
    report = build_report(manifest, verify, bench, steps, (directory / BENCH_PNG).exists())
    write_json(directory / REPORT_JSON, report)
    path = directory / REPORT_MD
    write_text(path, render_markdown(report))
    log(f"wrote {path} and {directory / REPORT_JSON}")
    return path


def _optional_json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


def build_report(
    manifest: Manifest,
    verify: dict[str, Any] | None,
    bench: dict[str, Any] | None,
    steps: Mapping[str, str],
    has_plot: bool,
) -> dict[str, Any]:
    """The content of report.json: the manifest's artifacts, verify's and bench's results as written."""
    fp32 = manifest.entry("model.onnx")
    artifacts = [
        {
            "file": name,
            "precision": entry.get("precision"),
            "size_bytes": entry.get("size_bytes"),
            "sha256": entry.get("sha256"),
            "parent_sha256": entry.get("parent_sha256"),
            "created": entry.get("created"),
        }
        for name, entry in manifest.artifacts.items()
    ]
    skipped = [{"step": step, "reason": reason} for step, reason in steps.items()]
    runners: dict[tuple[str, str], list[str]] = {}  # (runner, reason) -> the commands that skipped it
    for name, source in (("verify", verify), ("bench", bench)):
        for entry in (source or {}).get("skipped", []):
            runner = f"{entry['backend']}-{entry['device']}:{entry['precision']}"
            runners.setdefault((runner, entry["reason"]), []).append(name)
    skipped += [{"step": f"{runner} ({', '.join(names)})", "reason": why} for (runner, why), names in runners.items()]
    if verify is None:
        skipped.append({"step": "verify", "reason": f"no {VERIFY_JSON} in the directory"})
    if bench is None:
        skipped.append({"step": "bench", "reason": f"no {BENCH_JSON} in the directory"})
    return {
        "created": now_iso(),
        "model": fp32["options"].get("source") if fp32 else None,
        "artifacts": artifacts,
        "verify": None
        if verify is None
        else {k: verify.get(k) for k in ("passed", "reference", "results", "warnings")},
        "bench": None
        if bench is None
        else {
            "settings": bench.get("settings"),
            "noise": bench.get("noise"),
            "load": bench.get("load"),
            "results": bench["results"],
            "warnings": bench.get("warnings", []),
            "plot": BENCH_PNG if has_plot else None,
        },
        "summary": _summary(verify, bench),
        "weights_warning": fp32.get("weights_warning") if fp32 else None,
        "onnxruntime_vs_torch": [] if bench is None else _runtime_ratios(read_bench(bench)[0]),
        "skipped": skipped,
        "precision": {
            name: {k: entry.get(k) for k in ("heldout", "heldout_synthetic", "search")}
            for name, entry in manifest.artifacts.items()
            if "heldout" in entry
        },
        "stale": _stale(manifest, {VERIFY_JSON: verify, BENCH_JSON: bench}),
        "machine": (bench or verify or {}).get("machine"),
    }


def _stale(manifest: Manifest, sources: Mapping[str, dict[str, Any] | None]) -> list[str]:
    """Artifacts made from an earlier model.onnx, and results measured on a file that has changed (or gone) since."""
    stale = [
        f"{name} is stale, {reason}; build-trt or pipeline makes it again" for name, reason in manifest.stale().items()
    ]
    for name, data in sources.items():
        for artifact, sha256 in ((data or {}).get("artifacts") or {}).items():
            entry = manifest.entry(artifact)
            if entry is None or entry["sha256"] != sha256:
                stale.append(f"{name} was measured on an earlier {artifact}; run {name.split('.')[0]} again")
    return stale


def _summary(verify: dict[str, Any] | None, bench: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per device (GPU, CPU): the fastest verified artifact whose speedup is reliable, and faster unreliable ones.

    Only a candidate that passed ``verify`` counts, and only a reliable speedup (a narrow interval, no
    unstable or disturbed row) is headlined; verified rows that measured faster but unreliably are
    named beside it, never as the result.
    """
    passed = {
        (r["backend"], r["precision"], r["device"], r["artifact"])
        for r in (verify or {}).get("results", [])
        if r.get("passed")
    }
    rows = (
        [r for r in read_bench(bench)[0] if r.speedup_vs_reference is not None and not r.is_reference] if bench else []
    )
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
        item: dict[str, Any] = {
            "device": device,
            "best": best.to_dict() if best else None,
            "faster_unreliable": [r.to_dict() for r in faster],
        }
        if bench is None:
            item["note"] = "bench did not run"
        elif not measured:
            item["note"] = "no runner measured on this device here"
        elif verify is None:
            item["note"] = "verify did not run, so no artifact is verified"
        elif not verified:
            item["note"] = "no measured artifact passed verify"
        elif not reliable:
            item["note"] = "no verified speedup is reliable (see the stability note)"
        summary.append(item)
    return summary


def _runtime_ratios(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """ONNX Runtime FP32 against torch FP32 on the CPU at each batch size, as bench measured it."""
    torch = {r.batch_size: r for r in rows if (r.backend, r.precision, r.device) == ("torch", "fp32", "cpu")}
    return [
        {
            "batch_size": r.batch_size,
            "onnxruntime_median_ms": r.median_ms,
            "torch_median_ms": torch[r.batch_size].median_ms,
            "speedup": r.speedup_vs_reference,
            "speedup_low": r.speedup_low,
            "speedup_high": r.speedup_high,
            "speedup_reliable": r.speedup_reliable,
        }
        for r in rows
        if (r.backend, r.precision, r.device) == ("onnxruntime", "fp32", "cpu") and r.batch_size in torch
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md from the content of report.json."""
    model = report["model"] or {}
    out = [f"# resnext-deploy report: {model.get('arch', 'unknown model')}", ""]
    out += _status_lines(report)
    out.append(f"Made {report['created']} from {MANIFEST_NAME}, {VERIFY_JSON} and {BENCH_JSON} in this directory.")
    out += [f"\n**Out of date:** {line}." for line in report["stale"]]
    out += _summary_section(report["summary"], report["bench"])
    if report.get("weights_warning"):
        out += ["", f"**{report['weights_warning']}.**"]
    warnings = (report["bench"] or {}).get("warnings") or []
    if warnings:
        out += ["", "bench warnings:", ""] + [f"- {w}" for w in warnings]
    if model:
        weights = model.get("checkpoint") or "random initialisation (seed 0)"
        out += ["", f"Model: `{model['arch']}`, {model['num_classes']} classes, {model['image_size']} px input."]
        out.append(f"Weights: {weights}.")
    out += ["", "## Artifacts", ""]
    out.append(
        markdown_table(
            ["file", "precision", "size", "sha256", "made from (sha256)"],
            [
                [
                    a["file"],
                    a["precision"] or "-",
                    _size(a["size_bytes"]),
                    f"`{(a['sha256'] or '')[:12]}`",
                    f"`{a['parent_sha256'][:12]}`" if a["parent_sha256"] else "-",
                ]
                for a in report["artifacts"]
            ],
        )
    )
    out += _precision_section(report.get("precision") or {})
    out += _verify_section(report["verify"])
    out += _bench_section(report["bench"], report["onnxruntime_vs_torch"])
    if report["skipped"]:
        out += ["", "## Skipped", ""]
        for step in report["skipped"]:
            first, *commands = step["reason"].split("\n")  # later lines are commands to run elsewhere
            out.append(f"- {step['step']}: {first}")
            if commands:
                out += ["", "  ```", *(f"  {command}" for command in commands), "  ```"]
    if report["machine"]:
        out += ["", "## Machine", ""]
        out.append(markdown_table(["", ""], [[str(k), str(v)] for k, v in report["machine"].items()]))
    return "\n".join(out) + "\n"


def _status_lines(report: Mapping[str, Any]) -> list[str]:
    """The first lines: every step that failed (a typed file, verify, bench), or that all that ran passed."""
    failed = [(step["step"], step["reason"]) for step in report["skipped"] if step["reason"].startswith("failed")]
    verify = report["verify"]
    if verify is not None and not verify["passed"]:
        failed += [("verify", note) for note in failure_notes(verify)] or [("verify", "failed")]
    if not failed:
        ran = "every step that ran passed" + ("" if verify is not None else " (verify did not run)")
        return [f"**Status: passed**: {ran}.", ""]
    lines = [f"**Status: FAILED** ({len(failed)} problem{'s' if len(failed) > 1 else ''}):", ""]
    for step, reason in failed:
        first = reason.split("\n")[0]
        lines.append(f"- {step}: {first[:400] + ' ...' if len(first) > 400 else first}")
    return [*lines, ""]


def _precision_section(checks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """How each typed file was checked when it was made, and what the INT8 search did."""
    if not checks:
        return []
    out = ["", "## Typed files: held-out check and INT8 search", ""]
    for name, check in checks.items():
        loud = " **(synthetic inputs: numeric parity only, no accuracy)**" if check.get("heldout_synthetic") else ""
        out.append(f"- `{name}` was checked on {check.get('heldout')}{loud}.")
        search = check.get("search")
        if not search:
            continue
        tried = ", ".join(
            f"{method} ({'pass' if m['passed'] else 'fail'}, cosine min {m['cosine_min']:.4f})"
            for method, m in search["methods"].items()
        )
        out.append(
            f"- INT8 search ({search['seconds']} s): calibration methods tried: {tried}; kept: {search['method']}."
        )
        if equalization := search.get("equalization"):
            out.append(
                f"- Cross-layer equalization (Nagel et al.) of {equalization['pairs']} Conv -> ReLU -> Conv pairs, "
                f"tried before keeping sites in float: {'pass' if equalization['passed'] else 'fail'}, cosine min "
                f"{equalization['cosine_min']:.4f}; {'used in the file' if equalization['chosen'] else 'not used'}."
            )
        out += _bias_correction_lines(search)
        if search["ranking"]:
            out += [
                "",
                markdown_table(
                    ["most sensitive Q/DQ site", "sensitivity"], [[f"`{n}`", f"{v:.3g}"] for n, v in search["ranking"]]
                ),
                "",
            ]
        kept = ", ".join(f"`{n}`" for n in search["kept"]) or "none"
        result = "passes" if search["passed"] else "still fails"
        out.append(
            f"- Kept out of INT8: {kept} ({len(search['kept'])} of {search['layers']} Q/DQ sites, budget "
            f"{search['budget']}); the file {result} its check." + (f" {search['note']}." if search["note"] else "")
        )
        if search.get("needed"):
            out.append(f"- Keeping the {search['needed']} most sensitive sites out would pass (beyond the budget).")
    return out


def _bias_correction_lines(search: Mapping[str, Any]) -> list[str]:
    """The INT8 search's bias correction and the remedies the file uses (a search recorded before them has neither)."""
    out = []
    if correction := search.get("bias_correction"):
        out.append(
            f"- Bias correction of {correction['layers']} Conv/Gemm layers (each one's INT8 output mean shift on the "
            f"calibration images, taken off its bias), tried before keeping sites in float: "
            f"{'pass' if correction['passed'] else 'fail'}, cosine min {correction['cosine_min']:.4f}; "
            f"{'used in the file' if correction['chosen'] else 'not used'}."
        )
    if "remedies" in search:
        out.append(f"- Remedies the file uses: {', '.join(search['remedies']) or 'none'}.")
    return out


def _summary_section(summary: list[Mapping[str, Any]], bench: Mapping[str, Any] | None) -> list[str]:
    out = ["", "## Summary", ""]
    _, noise, load = read_bench(dict(bench)) if bench else ([], None, None)
    if load is not None and (note := load.note()):
        out += [f"**{note}.**", ""]
    if noise is not None:
        out += [f"Read the speedups with their interval: {noise.rule}.", ""]
    for item in summary:
        best = BenchRow.from_dict(item["best"]) if item["best"] else None
        if best:
            out.append(
                f"- {item['device']}: fastest verified artifact with a reliable ratio: **{best.backend} "
                f"{best.precision}** (`{best.artifact or 'in memory'}`), batch {best.batch_size}: speedup over "
                f"PyTorch fp32 at the same batch size **{format_speedup(best)}**"
            )
        else:
            out.append(f"- {item['device']}: no headline: {item['note']}.")
        faster = [BenchRow.from_dict(r) for r in item.get("faster_unreliable") or []]
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


def _verify_section(verify: Mapping[str, Any] | None) -> list[str]:
    out = ["", "## Parity and accuracy", ""]
    if verify is None:
        return [*out, "verify did not run."]
    reference = verify["reference"]
    out.append(f"Result: **{'passed' if verify['passed'] else 'FAILED'}**.")
    out.append(f"Data: {reference['data']}; the same images through every runner.")
    if reference.get("accuracy") is not None:
        out.append(f"Reference (torch fp32 on the CPU) accuracy: {reference['accuracy']:.2f}%.")
    if reference.get("failures"):
        out.append(f"Reference problems: {'; '.join(reference['failures'])}.")
    out += [f"\n**Note:** {warning}." for warning in verify.get("warnings") or []]
    out += ["", markdown_table(*verify_table(verify))]
    if notes := failure_notes(verify):
        out += ["", "Failures:", "", *(f"- {note}" for note in notes)]
    out += ["", "Tolerances applied:", ""]
    tolerances = {r["precision"]: r["tolerance"] for r in verify["results"]}
    for precision, tolerance in tolerances.items():
        used = ", ".join(f"{k} {v}" for k, v in tolerance.items() if v is not None)
        out.append(f"- {precision}: {used}")
    return out


def _bench_section(bench: Mapping[str, Any] | None, ratios: list[dict[str, Any]]) -> list[str]:
    out = ["", "## Latency and throughput", ""]
    if bench is None:
        return [*out, "bench did not run."]
    settings = bench.get("settings") or {}
    rows = [BenchRow.from_dict(r) for r in bench["results"]]
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
        speedup = format_ratio(ratio["speedup"], ratio["speedup_low"], ratio["speedup_high"], ratio["speedup_reliable"])
        out.append(
            f"- ONNX Runtime fp32 vs torch fp32 (CPU), batch {ratio['batch_size']}: {speedup} (median "
            f"{ratio['onnxruntime_median_ms']:.3f} ms vs {ratio['torch_median_ms']:.3f} ms)"
        )
    if ratios:
        out.append("")
    out.append(markdown_table(*bench_table(rows)))
    out += ["", markdown_table(*runner_table(rows))]
    if bench.get("plot"):
        out += ["", f"![median latency and speedup against batch size, log scale, 95% intervals]({bench['plot']})"]
    return out


def _size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "-"
    return f"{size_bytes / 1e6:.2f} MB" if size_bytes >= 1e5 else f"{size_bytes / 1e3:.1f} kB"
