"""inspect's tables (terminal and inspect.md), the report's short "Where" section, and inspect.png."""

from __future__ import annotations

from pathlib import Path

from ..ui import markdown_table
from .latency import compare_layers, overhead_note
from .records import ArtifactAccuracy, ArtifactLatency, InspectRecord

SHOWN = 5  # rows of each table on the terminal and in the report
SQNR_FLOOR_DB = 20.0  # a site below this (local view) loses more than 1% of its signal energy: named as a problem


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def site_rows(accuracy: ArtifactAccuracy, view: str, limit: int | None) -> list[list[str]]:
    rows = []
    for site in accuracy.ranked(view)[:limit]:
        rank = site.local_rank if view == "local" else site.accumulated_rank
        rows.append(
            [
                str(rank),
                f"`{site.node}`",
                site.module,
                site.kind,
                _db(site.local_sqnr_db),
                _db(site.accumulated_sqnr_db),
                "-" if site.added is None else f"{site.added:.2%}",
                f"{site.rel_error:.2f}",
                f"[{site.low:.3g}, {site.high:.3g}]",
                f"{site.clipped:.2%} / {site.flushed:.2%}",
                "-" if site.alone_top1 is None else f"{site.alone_top1:.1%}",
                site.search or "-",
            ]
        )
    return rows


SITE_HEADERS = [
    "rank", "ONNX node", "module", "site", "local SQNR dB", "accum. SQNR dB", "added", "err/step",
    "range", "clipped / flushed", "top-1 alone", "search",
]  # fmt: skip


def accuracy_text(accuracy: ArtifactAccuracy, limit: int | None) -> list[str]:
    out = [f"### {accuracy.artifact}: {len(accuracy.sites)} sites, top-1 agreement {accuracy.top1:.1%}", ""]
    for view, title in (("local", "local view (only this site typed)"), ("accumulated", "accumulated view")):
        out += [f"{title}:", "", markdown_table(SITE_HEADERS, site_rows(accuracy, view, limit)), ""]
    fixes = [s.fix for s in accuracy.ranked("local") if s.fix]
    out += [f"- {fix}" for fix in fixes]
    return out + ([""] if fixes else [])


def latency_text(latency: list[ArtifactLatency], limit: int | None) -> list[str]:
    out = []
    for item in latency:
        bench = f", bench median {item.bench_ms:.3f} ms" if item.bench_ms is not None else ""
        out.append(
            f"- {item.artifact} on {item.backend} (batch {item.batch_size}): layers sum {item.total_ms:.3f} ms, "
            f"end-to-end median {item.wall_ms:.3f} ms{bench}; {overhead_note(item)}."
        )
    for backend in dict.fromkeys(item.backend for item in latency):
        pair = {item.precision: item for item in latency if item.backend == backend}
        if "fp32" in pair and "int8" in pair:
            rows = compare_layers(pair["fp32"], pair["int8"])[:limit]
            out += [
                "",
                f"{backend}: FP32 against INT8, largest changes first:",
                "",
                markdown_table(
                    ["ONNX node", "FP32 ms", "INT8 ms", "INT8 / FP32"],
                    [[f"`{n}`", f"{a:.4f}", f"{b:.4f}", f"{b / a:.2f}x" if a > 0 else "-"] for n, a, b in rows],
                ),
            ]
    return out


def inspect_markdown(record: InspectRecord, limit: int | None = None) -> str:
    out = ["# resnext-deploy inspect", "", f"{record.images} images from {record.data}.", ""]
    out.append(
        "SQNR: signal-to-noise in dB at the site's consumer outputs (local: only this site typed; accumulated: the "
        "typed file). added: share of the signal's energy the site's layer adds to the error that reached it. "
        "err/step: RMS rounding error in quantization steps (0.29 is plain rounding). "
        f"Sites below {SQNR_FLOOR_DB:g} dB locally lose over 1% of their signal."
    )
    out.append("")
    for accuracy in record.accuracy:
        out += accuracy_text(accuracy, limit)
    if record.latency:
        out += ["## Layer times", ""] + latency_text(record.latency, limit) + [""]
    out += [f"- note: {note}" for note in record.notes]
    return "\n".join(out).rstrip() + "\n"


def where_section(record: InspectRecord) -> list[str]:
    """The report's short "Where" section: the worst site of each file and each runtime's INT8 layers."""
    out = ["", "## Where", ""]
    for accuracy in record.accuracy:
        worst = accuracy.ranked("local")[:1]
        added = accuracy.ranked("accumulated")[:1]
        if worst:
            site = worst[0]
            out.append(
                f"- `{accuracy.artifact}` (top-1 agreement {accuracy.top1:.1%}): worst site `{site.node}` "
                f"({site.module}, {site.kind}), local SQNR {_db(site.local_sqnr_db)} dB"
                + (f"; most error added at `{added[0].node}`" if added else "")
                + (f"; {site.fix}" if site.fix else "")
                + "."
            )
    for item in record.latency:
        if item.precision == "int8":
            out.append(f"- `{item.artifact}` on {item.backend}: {overhead_note(item)}.")
    return out + ["", "Details: inspect.md and inspect.json."]


def write_png(record: InspectRecord, path: Path) -> bool:
    """SQNR by depth for each typed file, and layer time by depth for each profiled artifact; False without data."""
    if not record.accuracy and not record.latency:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..artifacts import atomic_path

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7))
    for accuracy in record.accuracy:
        points = [(s.depth, s.local_sqnr_db) for s in accuracy.sites if s.local_sqnr_db is not None]
        if points:
            top.plot(*zip(*points, strict=True), marker="o", label=f"{accuracy.artifact} (local)")
        accumulated = [(s.depth, s.accumulated_sqnr_db) for s in accuracy.sites if s.accumulated_sqnr_db is not None]
        if accumulated:
            top.plot(*zip(*accumulated, strict=True), linestyle="--", label=f"{accuracy.artifact} (accumulated)")
    top.axhline(SQNR_FLOOR_DB, color="grey", linewidth=0.8)
    top.set(xlabel="node index in model.onnx", ylabel="SQNR (dB)", title="accuracy by depth")
    top.legend(fontsize=7)
    for item in record.latency:
        points = [(layer.depth, layer.ms) for layer in item.layers if layer.depth >= 0]
        if points:
            bottom.plot(*zip(*points, strict=True), marker=".", label=f"{item.artifact} on {item.backend}")
    bottom.set(xlabel="node index in model.onnx", ylabel="ms per inference", title="layer time by depth")
    if record.latency:
        bottom.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
    return True
