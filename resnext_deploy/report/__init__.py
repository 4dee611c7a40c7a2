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
from ..evaluate.bench import BENCH_JSON, BENCH_PNG, STABILITY_RULE, bench_table, format_speedup
from ..evaluate.verify import VERIFY_JSON, failure_notes, verify_table
from ..ui import markdown_table

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


def write_report(
    directory: str | Path,
    log: Callable[[str], None] = print,
    skipped: Mapping[str, str] | None = None,
) -> Path:
    """Write DIR/report.md and DIR/report.json; return the Markdown path.

    ``skipped`` maps a step (e.g. ``"tensorrt"``) to why it did not run; steps recorded in the
    manifest under ``"skipped"`` (the same mapping) are included too.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).exists():
        raise BadInputError(f"{directory} has no {MANIFEST_NAME}; run `resnext-deploy export --dir {directory}` first")
    manifest = Manifest(directory)
    verify = _optional_json(directory / VERIFY_JSON)
    bench = _optional_json(directory / BENCH_JSON)
    steps = {**manifest.data.get("skipped", {}), **(skipped or {})}
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
            "results": bench["results"],
            "warnings": bench.get("warnings", []),
            "plot": BENCH_PNG if has_plot else None,
        },
        "summary": _summary(verify, bench),
        "weights_warning": fp32.get("weights_warning") if fp32 else None,
        "onnxruntime_vs_torch": [] if bench is None else _runtime_ratios(bench["results"]),
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
    """Per device (GPU, CPU): the verified artifact with the best reliable speedup, or why there is none.

    Only a candidate that passed ``verify`` counts, and only a speedup whose per-round interval is
    narrow is headlined; the fastest unreliable one is named as such instead.
    """
    passed = {
        (r["backend"], r["precision"], r["device"], r["artifact"])
        for r in (verify or {}).get("results", [])
        if r.get("passed")
    }
    rows = [
        r
        for r in (bench or {}).get("results", [])
        if r.get("speedup_vs_reference") is not None and (r["backend"], r["precision"]) != ("torch", "fp32")
    ]
    summary = []
    for device, on_device in (("GPU", lambda d: d != "cpu"), ("CPU", lambda d: d == "cpu")):
        measured = [r for r in rows if on_device(r["device"])]
        verified = [r for r in measured if (r["backend"], r["precision"], r["device"], r["artifact"]) in passed]
        reliable = [r for r in verified if r.get("speedup_reliable")]
        item: dict[str, Any] = {"device": device, "best": None, "fastest_unreliable": None}
        if reliable:
            item["best"] = max(reliable, key=lambda r: r["speedup_vs_reference"])
        elif verified:
            item["fastest_unreliable"] = max(verified, key=lambda r: r["speedup_vs_reference"])
        if bench is None:
            item["note"] = "bench did not run"
        elif not measured:
            item["note"] = "no runner measured on this device here"
        elif verify is None:
            item["note"] = "verify did not run, so no artifact is verified"
        elif not verified:
            item["note"] = "no measured artifact passed verify"
        elif not reliable:
            item["note"] = "no verified speedup is reliable (the machine's speed moved during the run)"
        summary.append(item)
    return summary


def _runtime_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ONNX Runtime FP32 against torch FP32 on the CPU at each batch size, as bench measured it."""
    torch = {
        r["batch_size"]: r for r in rows if (r["backend"], r["precision"], r["device"]) == ("torch", "fp32", "cpu")
    }
    return [
        {
            "batch_size": r["batch_size"],
            "onnxruntime_median_ms": r["median_ms"],
            "torch_median_ms": torch[r["batch_size"]]["median_ms"],
            "speedup": r["speedup_vs_reference"],
            "speedup_low": r.get("speedup_low"),
            "speedup_high": r.get("speedup_high"),
            "speedup_reliable": r.get("speedup_reliable"),
        }
        for r in rows
        if (r["backend"], r["precision"], r["device"]) == ("onnxruntime", "fp32", "cpu") and r["batch_size"] in torch
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md from the content of report.json."""
    model = report["model"] or {}
    out = [f"# resnext-deploy report: {model.get('arch', 'unknown model')}", ""]
    out += _status_lines(report)
    out.append(f"Made {report['created']} from {MANIFEST_NAME}, {VERIFY_JSON} and {BENCH_JSON} in this directory.")
    out += [f"\n**Out of date:** {line}." for line in report["stale"]]
    out += _summary_section(report["summary"])
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


def _summary_section(summary: list[Mapping[str, Any]]) -> list[str]:
    out = ["", "## Summary", "", f"Read the speedups with their spread: {STABILITY_RULE}.", ""]
    for item in summary:
        best, unreliable = item["best"], item["fastest_unreliable"]
        if best:
            out.append(
                f"- {item['device']}: best verified artifact **{best['backend']} {best['precision']}** "
                f"(`{best['artifact'] or 'in memory'}`), batch {best['batch_size']}: speedup over PyTorch fp32 at the "
                f"same batch size **{format_speedup(best)}**"
            )
        else:
            out.append(f"- {item['device']}: no headline: {item['note']}.")
        if unreliable:
            out.append(
                f"  The fastest verified one, {unreliable['backend']} {unreliable['precision']} at batch "
                f"{unreliable['batch_size']}, measured {format_speedup(unreliable)}: unreliable, not a result; "
                "rerun bench on an idle machine or with a longer --duration."
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
    if settings:
        out.append(
            f"Warm-up {settings['warmup_ms']:g} ms, then at least {settings['duration_s']:g} s and "
            f"{settings['min_iterations']} iterations per row, runners interleaved over {settings['rounds']} rounds; "
            "speedup is torch fp32's median on the same device at the same batch size over the row's median."
        )
        out.append("")
    for ratio in ratios:
        out.append(
            f"- ONNX Runtime fp32 vs torch fp32 (CPU), batch {ratio['batch_size']}: "
            f"{format_speedup({**ratio, 'speedup_vs_reference': ratio['speedup']})} (median "
            f"{ratio['onnxruntime_median_ms']:.3f} ms vs "
            f"{ratio['torch_median_ms']:.3f} ms)"
        )
    if ratios:
        out.append("")
    out.append(markdown_table(*bench_table(bench["results"])))
    if bench.get("plot"):
        out += ["", f"![median latency and throughput against batch size]({bench['plot']})"]
    return out


def _size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "-"
    return f"{size_bytes / 1e6:.2f} MB" if size_bytes >= 1e5 else f"{size_bytes / 1e3:.1f} kB"
