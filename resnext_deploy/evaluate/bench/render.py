"""bench's results as people read them: terminal tables, bench.md, bench.csv and the plot, and bench.json."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np

from ...artifacts import atomic_path, write_json, write_text
from ...serde import encode
from ...ui import markdown_table, render_table
from .records import BENCH_CSV, BENCH_JSON, BENCH_MD, BENCH_PNG, PASSIVE, BenchReport, BenchRow, BenchRun

ROW_FIELDS = tuple(f.name for f in fields(BenchRow))
CSV_FIELDS = tuple(f for f in ROW_FIELDS if f != "round_medians_ms")


def bench_text(report: BenchReport) -> str:
    """The terminal tables (rows, then one line per runner), a busy machine, failed rows, the threading mode and
    the stability rule said once."""
    text = render_table(*bench_table(report.results), title="bench (milliseconds per batch)")
    text += "\n" + render_table(*runner_table(report.results), title="runners")
    note = report.load.note()
    text += f"\nWARNING: {note}" if note else ""
    text += "".join(f"\nFAILED: {f.label} ({f.stage}): {f.reason}" for f in report.failed)
    return text + f"\nnote: {threading_note(report.settings)}\nnote: {report.noise.rule}"


def threading_note(run: BenchRun) -> str:
    """Which threading the rows were measured in (``settings.isolation`` of a bench.json), in one sentence."""
    isolation = run.isolation
    pause = isolation.pause_ms
    if isolation.pause == "until quiet" and pause is not None:
        pause_text = (
            f"; after each slice bench waited until the runner's pool went quiet (median {pause:.0f} ms, longest "
            f"{isolation.pause_max_ms or 0:.0f} ms) before the next slice"
        )
    elif pause is not None and pause > 0:
        pause_text = f"; a {pause:.0f} ms pause after each slice (--pause-ms)"
    else:
        pause_text = ""
    if isolation.mode == PASSIVE:
        return (
            "measured with idle thread pools put to sleep (--passive-pools: OMP_WAIT_POLICY=PASSIVE, ONNX Runtime "
            "allow_spinning=0), not each library's default threading; users who keep the defaults may see other "
            "figures" + pause_text
        )
    return f"measured in each library's default threading ({isolation.threads})" + pause_text


def bench_table(rows: Sequence[BenchRow]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of bench rows (the terminal, bench.md and the report share them).

    "spread" is the round spread, marked ``!`` beyond the noise threshold and ``busy`` when other
    processes disturbed the row; a speedup marked ``?`` is not reliable.
    """
    headers = [
        "backend",
        "precision",
        "device",
        "batch",
        "calls",
        "median ms (95% interval)",
        "p99 ms",
        "spread",
        "images/s",
        "speedup (95% interval)",
        "device median ms",
    ]
    cells = [
        [
            r.backend,
            r.precision,
            r.device,
            str(r.batch_size),
            str(r.iterations),
            f"{r.median_ms:.3f}"
            + (f" ({r.median_low_ms:.3f}-{r.median_high_ms:.3f})" if r.median_low_ms is not None else ""),
            f"{r.p99_ms:.3f}",
            ("-" if r.round_spread is None else f"{r.round_spread:.1%}")
            + (" !" if r.unstable else "")
            + (" busy" if r.disturbed else ""),
            f"{r.throughput_ips:.1f}",
            format_speedup(r),
            "-" if r.device_median_ms is None else f"{r.device_median_ms:.3f}",
        ]
        for r in rows
    ]
    return headers, cells


def runner_table(rows: Sequence[BenchRow]) -> tuple[list[str], list[list[str]]]:
    """One line per runner: what it computes in, its file's size, load time, first call and peak memory."""
    headers = ["runner", "artifact", "size MB", "computes in", "load s", "first call ms", "peak RSS MB", "runner MB"]
    seen: dict[tuple[str, str | None], BenchRow] = {}
    for row in rows:
        seen.setdefault((row.label, row.artifact), row)
    cells = [
        [
            r.label,
            r.artifact or "in memory",
            "-" if r.artifact_bytes is None else f"{r.artifact_bytes / 1e6:.1f}",
            r.compute_precision or "as typed in the graph",
            "-" if r.load_s is None else f"{r.load_s:.2f}",
            "-" if r.first_call_ms is None else f"{r.first_call_ms:.1f} (batch {r.batch_size})",
            "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
            "-" if r.runner_rss_mb is None else f"{r.runner_rss_mb:.0f}",
        ]
        for r in seen.values()
    ]
    return headers, cells


def format_speedup(row: BenchRow) -> str:
    """A row's speedup as :func:`format_ratio` writes it; the reference row has no interval."""
    low, high = (None, None) if row.is_reference else (row.speedup_low, row.speedup_high)
    return format_ratio(row.speedup_vs_reference, low, high, bool(row.speedup_reliable))


def format_ratio(ratio: float | None, low: float | None, high: float | None, reliable: bool) -> str:
    """``2.10x (1.95-2.30)``, with ``?`` after an unreliable ratio; ``-`` without one."""
    if ratio is None:
        return "-"
    text = f"{ratio:.2f}x" + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else "")
    return text if reliable else text + " ?"


def write_outputs(report: BenchReport, directory: Path, json_path: str | Path | None = None) -> None:
    """bench.json, bench.csv, bench.md and bench.png in DIR (and the JSON at ``json_path`` too)."""
    data = encode(report)
    write_json(directory / BENCH_JSON, data)
    if json_path is not None:
        write_json(json_path, data)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "options": json.dumps(r["options"]) if r["options"] else ""} for r in data["results"])
    write_text(directory / BENCH_CSV, buffer.getvalue())
    text = "# bench\n\n" + markdown_table(*bench_table(report.results))
    text += "\n\n" + markdown_table(*runner_table(report.results))
    if report.failed:
        text += "\n\nFailed (not measured):\n\n" + "".join(
            f"- {f.label} ({f.stage}): {f.reason}\n" for f in report.failed
        )
    text += f"\n\nThreading: {threading_note(report.settings)}.\n\nNote: {report.noise.rule}.\n"
    if report.warnings:
        text += "\nWarnings:\n\n" + "".join(f"- {w}\n" for w in report.warnings)
    write_text(directory / BENCH_MD, text)
    plot(report.results, directory / BENCH_PNG)


def plot(rows: Sequence[BenchRow], path: Path) -> None:
    """Median latency (log scale, 95% interval as error bars) and speedup over PyTorch against batch size."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    latency, speedup = figure.subplots(1, 2)
    series: dict[str, list[BenchRow]] = {}
    for row in rows:
        series.setdefault(row.label, []).append(row)
    for label, points in series.items():
        points = sorted(points, key=lambda r: r.batch_size)
        sizes = [r.batch_size for r in points]
        medians = np.array([r.median_ms for r in points])
        low = np.array([r.median_low_ms if r.median_low_ms is not None else r.median_ms for r in points])
        high = np.array([r.median_high_ms if r.median_high_ms is not None else r.median_ms for r in points])
        latency.errorbar(sizes, medians, yerr=[medians - low, high - medians], marker="o", capsize=3, label=label)
        ratios = [r for r in points if r.speedup_vs_reference is not None]
        if ratios:
            values = np.array([r.speedup_vs_reference for r in ratios])
            errors = [
                values - np.array([r.speedup_low or v for r, v in zip(ratios, values, strict=True)]),
                np.array([r.speedup_high or v for r, v in zip(ratios, values, strict=True)]) - values,
            ]
            speedup.errorbar([r.batch_size for r in ratios], values, yerr=errors, marker="o", capsize=3, label=label)
    batch_sizes = sorted({r.batch_size for r in rows})
    titles = ((latency, "median latency (95% interval)", "ms per batch"), (speedup, "speedup over PyTorch fp32", "x"))
    for axes, title, unit in titles:
        if len(batch_sizes) > 1:
            axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        axes.set_xlabel("batch size")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
