"""How much faster is each artifact? Latency and throughput of every runner, measured the way trtexec does.

Each runner at each batch size is warmed up by time, then measured for a duration and at least a
number of iterations. Runners are interleaved: every round gives every (runner, batch size) one
short time slice, so drift of the machine (other load, clocks, heat) hits all of them alike.
Only the runner call is timed; inputs are made once per batch size beforehand.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import PRECISIONS, atomic_path, now_iso, write_json, write_text
from ..backends.base import Candidate, Runner
from ..backends.openvino import PERFORMANCE_HINTS
from ..backends.registry import backend_names, discover_runners, open_runners
from ..errors import BadInputError, one_line
from ..schemas import SCHEMA_VERSION
from ..ui import markdown_table, render_table
from ..ui import progress as ui_progress
from .metrics import SELECTABLE_PRECISIONS

BENCH_JSON, BENCH_CSV, BENCH_MD, BENCH_PNG = "bench.json", "bench.csv", "bench.md", "bench.png"
# A row is unstable when its per-round medians spread by more than this fraction of their median
# ((p90 - p10) / median). The per-round median ignores the isolated slow calls every VM has (which
# push the coefficient of variation over trtexec's 2.5% on an idle machine); the spread across
# rounds is the machine's speed changing during the run, which is what moves a ratio.
UNSTABLE_SPREAD = 0.10
# A speedup is reliable when the 10th-90th percentile interval of its per-round ratios is no wider
# than this fraction of the ratio of medians.
RELIABLE_RATIO_WIDTH = 0.25
STABILITY_RULE = (
    f"a row is unstable when its per-round medians spread by more than {UNSTABLE_SPREAD:.0%} of their median "
    "((p90 - p10) / median, 'round spread'); a speedup is the ratio of medians, with the 10th-90th percentile "
    "interval of the ratios measured round by round, and is unreliable when that interval is wider than "
    f"{RELIABLE_RATIO_WIDTH:.0%} of the ratio"
)
ROUNDS = 10  # time slices per runner in one measurement duration
MAX_BATCH = 4096
ROW_FIELDS = (
    "backend",
    "precision",
    "device",
    "artifact",
    "batch_size",
    "iterations",
    "mean_ms",
    "median_ms",
    "min_ms",
    "max_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "std_ms",
    "cv",
    "round_spread",
    "throughput_ips",
    "speedup_vs_reference",
    "speedup_low",
    "speedup_high",
    "speedup_reliable",
    "options",
    "device_mean_ms",
    "device_median_ms",
    "device_p99_ms",
    "round_medians_ms",
)
CSV_FIELDS = tuple(f for f in ROW_FIELDS if f != "round_medians_ms")


@dataclass
class Unit:
    """One runner at one batch size, with its input made beforehand and its measured times."""

    candidate: Candidate
    runner: Runner
    batch_size: int
    inputs: np.ndarray
    times_ms: list[float] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)

    def run_for(self, seconds: float, record: bool) -> float:
        """Call the runner until ``seconds`` have passed, at least once; return the seconds spent.

        A recorded slice also adds its median to ``round_medians_ms``: rounds are aligned across
        units, so per-round ratios between units compare calls made at nearly the same time.
        """
        start = time.perf_counter()
        first = len(self.times_ms)
        while True:
            t0 = time.perf_counter()
            self.runner(self.inputs)
            t1 = time.perf_counter()
            if record:
                self.times_ms.append((t1 - t0) * 1e3)
                if self.runner.last_device_ms is not None:
                    self.device_ms.append(self.runner.last_device_ms)
            if t1 - start >= seconds:
                if record:
                    self.round_medians_ms.append(float(np.median(self.times_ms[first:])))
                return t1 - start

    def done(self, duration_s: float, min_iterations: int) -> bool:
        return len(self.times_ms) >= min_iterations and sum(self.times_ms) >= duration_s * 1e3


def measure(
    units: Sequence[Unit],
    warmup_s: float,
    duration_s: float,
    min_iterations: int,
    on_slice: Callable[[Unit, float], None] | None = None,
) -> int:
    """Warm every unit up, then run rounds of one time slice per unit until every unit is done.

    Each round starts one unit later than the previous, so no unit always follows the same other
    one. Returns the number of rounds.
    """
    for unit in units:
        unit.run_for(warmup_s, record=False)
    slice_s = duration_s / ROUNDS
    rounds = 0
    while not all(unit.done(duration_s, min_iterations) for unit in units):
        shift = rounds % len(units)
        for unit in [*units[shift:], *units[:shift]]:
            spent = unit.run_for(slice_s, record=True)
            if on_slice is not None:
                on_slice(unit, spent)
        rounds += 1
    return rounds


def _stats(values_ms: Sequence[float], prefix: str = "") -> dict[str, float]:
    values = np.asarray(values_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return {
        f"{prefix}mean_ms": float(values.mean()),
        f"{prefix}median_ms": float(p50),
        f"{prefix}min_ms": float(values.min()),
        f"{prefix}max_ms": float(values.max()),
        f"{prefix}p90_ms": float(p90),
        f"{prefix}p95_ms": float(p95),
        f"{prefix}p99_ms": float(p99),
        f"{prefix}std_ms": float(values.std()),
    }


def result_row(unit: Unit) -> dict[str, Any]:
    """One row of ``bench.json``; ``speedup_vs_reference`` is filled in by :func:`add_speedups`."""
    stats = _stats(unit.times_ms)
    device = _stats(unit.device_ms, "device_") if unit.device_ms else {}
    return {
        **unit.candidate.identity(),
        "batch_size": unit.batch_size,
        "iterations": len(unit.times_ms),
        **stats,
        "cv": stats["std_ms"] / stats["mean_ms"] if stats["mean_ms"] > 0 else 0.0,
        "round_spread": round_spread(unit.round_medians_ms),
        "throughput_ips": unit.batch_size * 1e3 / stats["mean_ms"] if stats["mean_ms"] > 0 else None,
        "speedup_vs_reference": None,
        "speedup_low": None,
        "speedup_high": None,
        "speedup_reliable": None,
        "options": unit.runner.options,
        "device_mean_ms": device.get("device_mean_ms"),
        "device_median_ms": device.get("device_median_ms"),
        "device_p99_ms": device.get("device_p99_ms"),
        "round_medians_ms": list(unit.round_medians_ms),
    }


def round_spread(medians_ms: Sequence[float]) -> float | None:
    """(p90 - p10) / median of the per-round medians: how much the machine's speed moved during the run."""
    if len(medians_ms) < 2:
        return None
    p10, p50, p90 = np.percentile(np.asarray(medians_ms, dtype=np.float64), [10, 50, 90])
    return float((p90 - p10) / p50) if p50 > 0 else None


def _reference_device(device: str) -> str:
    """Torch runs on ``cpu`` or ``cuda``; ONNX Runtime's CUDA and TensorRT providers and engines are on the GPU."""
    return "cpu" if device == "cpu" else "cuda"


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Median of torch FP32 on the same device at the same batch size, over the row's median, with its spread.

    The interval is the 10th-90th percentile of the ratios taken round by round (both rows measured
    in the same round); the speedup is reliable when that interval is narrow (:data:`RELIABLE_RATIO_WIDTH`).
    """
    reference = {
        (r["device"], r["batch_size"]): r for r in rows if r["backend"] == "torch" and r["precision"] == "fp32"
    }
    for row in rows:
        base = reference.get((_reference_device(row["device"]), row["batch_size"]))
        row.update(speedup_vs_reference=None, speedup_low=None, speedup_high=None, speedup_reliable=None)
        if not base or not base["median_ms"] or row["median_ms"] <= 0:
            continue
        speedup = base["median_ms"] / row["median_ms"]
        row["speedup_vs_reference"] = speedup
        pairs = list(zip(base.get("round_medians_ms") or [], row.get("round_medians_ms") or [], strict=False))
        ratios = [b / r for b, r in pairs if r > 0]
        if len(ratios) >= 2:
            low, high = (float(v) for v in np.percentile(ratios, [10, 90]))
            row["speedup_low"], row["speedup_high"] = low, high
            row["speedup_reliable"] = bool((high - low) <= RELIABLE_RATIO_WIDTH * speedup)
        else:
            row["speedup_reliable"] = False


# Why INT8 may not beat FP16, by (backend, device); measured or documented, not guessed.
INT8_NOT_FASTER = {
    ("onnxruntime", "cpu"): "ONNX Runtime's CPU provider runs this Q/DQ graph through quantize/dequantize pairs "
    "and float kernels (QDQ-to-float fallbacks) rather than fused int8 kernels",
    ("onnxruntime", "cuda"): "ONNX Runtime's CUDA provider has few int8 kernels and runs most Q/DQ pairs as "
    "separate quantize/dequantize steps",
    ("onnxruntime", "tensorrt"): "ResNeXt's grouped convolutions have few fast INT8 kernels in TensorRT",
    ("tensorrt", "cuda"): "ResNeXt's grouped convolutions have few fast INT8 kernels in TensorRT",
    ("openvino", "cpu"): "OpenVINO's CPU plugin fuses the Q/DQ pairs into int8 convolutions, which are fast "
    "only with VNNI or AMX-INT8 instructions (avx512_vnni, avx_vnni, amx_int8); without them, or when the "
    "machine is busy, int8 gains little",
}


def bench_warnings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Unstable rows (by :data:`STABILITY_RULE`, which bench states once), and INT8 not faster than FP16."""
    unstable = [
        f"{_label(r)} batch {r['batch_size']}: unstable measurement, round spread {r['round_spread']:.1%}"
        for r in rows
        if r.get("round_spread") is not None and r["round_spread"] > UNSTABLE_SPREAD
    ]
    warnings = []
    if unstable:
        warnings.append(
            f"{len(unstable)} row(s) unstable: round spread over {UNSTABLE_SPREAD:.0%} (other load or clock "
            "changes; rerun on an idle machine or with a longer --duration)"
        )
        warnings += unstable
    fp16 = {(r["backend"], r["device"], r["batch_size"]): r for r in rows if r["precision"] == "fp16"}
    for row in rows:
        other = fp16.get((row["backend"], row["device"], row["batch_size"]))
        if row["precision"] == "int8" and other and row["median_ms"] >= other["median_ms"]:
            warnings.append(
                f"{row['backend']}-{row['device']} batch {row['batch_size']}: INT8 ({row['median_ms']:.3f} ms) is not "
                f"faster than FP16 ({other['median_ms']:.3f} ms): "
                + INT8_NOT_FASTER.get((row["backend"], row["device"]), "this runner has no faster int8 path here")
            )
    return warnings


def _label(row: dict[str, Any]) -> str:
    return f"{row['backend']}-{row['device']}:{row['precision']}"


def machine_record(threads: int | None) -> dict[str, Any]:
    """The machine and library versions the numbers belong to, with the threads actually used."""
    import torch

    from ..environment import describe

    return {
        **describe(),
        "cpu cores": os.cpu_count(),
        "cpus usable": len(os.sched_getaffinity(0)),
        "threads requested": threads if threads else "library defaults",
        "torch threads": torch.get_num_threads(),
    }


@dataclass
class BenchReport:
    """What ``bench`` measured, in the shape of ``bench.json``."""

    machine: dict[str, Any]
    results: list[dict[str, Any]]
    warnings: list[str]
    skipped: list[dict[str, Any]]
    settings: dict[str, Any]
    artifacts: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created": now_iso(),
            "machine": self.machine,
            "settings": self.settings,
            "results": self.results,
            "warnings": self.warnings,
            "skipped": self.skipped,
            "artifacts": self.artifacts,
        }


def parse_list(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    """``a,b`` into ``("a", "b")``, each checked against ``allowed``."""
    items = tuple(dict.fromkeys(item.strip().lower() for item in text.split(",") if item.strip()))
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise BadInputError(f"{flag} takes a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return items


def parse_int_list(text: str, flag: str, maximum: int) -> tuple[int, ...]:
    """``1,8,32`` into ``(1, 8, 32)``, each from 1 to ``maximum``."""
    try:
        values = tuple(sorted({int(item) for item in text.split(",") if item.strip()}))
    except ValueError:
        values = ()
    if not values or not all(1 <= value <= maximum for value in values):
        raise BadInputError(f"{flag} takes comma-separated integers from 1 to {maximum}; got {text!r}")
    return values


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    return parse_int_list(text, "--batch-sizes", MAX_BATCH)


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and for how long; validated when made, so nothing downstream checks it again.

    ``backends`` None means every registered backend; naming one that cannot run here is an error.
    """

    backends: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = PRECISIONS
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup_ms: float = 200.0
    duration_s: float = 3.0
    min_iterations: int = 10
    threads: int | None = None
    ov_hint: str = "latency"

    def __post_init__(self) -> None:
        if self.backends is not None:
            parse_list(",".join(self.backends), backend_names(), "--backends")
        parse_list(",".join(self.precisions), SELECTABLE_PRECISIONS, "--precisions")
        parse_list(self.ov_hint, PERFORMANCE_HINTS, "--ov-hint")
        parse_batch_sizes(",".join(str(b) for b in self.batch_sizes))
        if not 0 <= self.warmup_ms <= 600_000:
            raise BadInputError(f"--warmup-ms must be between 0 and 600000, got {self.warmup_ms:g}")
        if not 0 < self.duration_s <= 3600:
            raise BadInputError(f"--duration must be more than 0 and at most 3600 seconds, got {self.duration_s:g}")
        if self.min_iterations < 1:
            raise BadInputError(f"--min-iterations must be at least 1, got {self.min_iterations}")
        if self.threads is not None and self.threads < 1:
            raise BadInputError(f"--threads must be at least 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "backends": list(self.backends) if self.backends else list(backend_names())}


def run_bench(
    directory: str | Path,
    settings: BenchSettings | None = None,
    json_path: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> BenchReport:
    """Measure every runner in DIR at every batch size; write bench.json, .csv, .md and .png there.

    Returns the report; the caller shows its table (:func:`bench_text`), ``log`` gets the rest.
    """
    settings = settings or BenchSettings()
    precisions, batch_sizes, threads = settings.precisions, sorted(set(settings.batch_sizes)), settings.threads
    warmup_ms, duration_s, min_iterations = settings.warmup_ms, settings.duration_s, settings.min_iterations
    backends = settings.backends or backend_names()
    found = discover_runners(
        directory,
        backends,
        precisions,
        threads,
        required=settings.backends or (),
        options={"openvino": {"performance_hint": settings.ov_hint}},
    )
    skipped = [c.skip_record() for c in found.skipped]
    opened, unavailable, broken = open_runners(found.runnable)
    skipped += unavailable + [c.skip_record(f"cannot be loaded: {error}") for c, error in broken]
    size = found.source.preprocessing.image_size
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batch_sizes}
    opened, failing = _drop_failing(opened, inputs[batch_sizes[0]])
    skipped += failing
    if not opened:
        reasons = "; ".join(f"{s['backend']}-{s['device']}:{s['precision']}: {s['reason']}" for s in skipped)
        raise BadInputError(
            f"nothing to benchmark in {found.manifest.directory} for backends {','.join(backends)} and "
            f"precisions {','.join(precisions)}" + (f" ({reasons})" if reasons else "")
        )
    units = [Unit(c, runner, b, inputs[b]) for b in batch_sizes for c, runner in opened]
    log(
        f"benchmarking {len(opened)} runner(s) x {len(inputs)} batch size(s): {warmup_ms:g} ms warm-up, "
        f"then at least {duration_s:g} s and {min_iterations} iterations each, interleaved in rounds"
    )
    try:
        with ui_progress(len(units) * duration_s, "warming up", unit="s") as advance:

            def on_slice(unit: Unit, spent: float) -> None:
                advance(spent, f"{unit.candidate.label} batch {unit.batch_size}")

            rounds = measure(units, warmup_ms / 1e3, duration_s, min_iterations, on_slice if progress else None)
        machine = machine_record(threads)
    finally:
        for _, runner in opened:
            runner.close()
    rows = [result_row(unit) for unit in units]
    add_speedups(rows)
    record = {
        **settings.to_dict(),
        "rounds": rounds,
        "input": "seeded N(0,1) float32 NCHW, made once per batch size and not timed",
        "speedup": "median of torch fp32 on the same device at the same batch size / this row's median",
        "stability": STABILITY_RULE,
    }
    hashes = found.hashes([c for c, _ in opened])
    report = BenchReport(machine, rows, bench_warnings(rows), skipped, record, hashes)
    write_outputs(report, found.manifest.directory, json_path)
    for line in report.warnings:
        log(f"warning: {line}")
    for entry in skipped:
        log(f"skipped {entry['backend']}-{entry['device']}:{entry['precision']}: {entry['reason']}")
    return report


def _drop_failing(
    opened: list[tuple[Candidate, Runner]], sample: np.ndarray
) -> tuple[list[tuple[Candidate, Runner]], list[dict[str, Any]]]:
    """Run each runner once on ``sample``: those that compute, and skip records (runner closed) for those that raise.

    An artifact that loads but cannot run this model's input (a graph swapped behind the manifest) is
    reported, never timed.
    """
    kept, failing = [], []
    try:
        for candidate, runner in opened:
            try:
                runner(sample)
            except Exception as exc:  # noqa: BLE001 - whatever stops a runner is the reason it is skipped
                runner.close()
                detail = one_line(exc)
                failing.append(
                    candidate.skip_record(f"cannot run a {'x'.join(map(str, sample.shape))} batch: {detail}")
                )
            else:
                kept.append((candidate, runner))
    except BaseException:
        for _, runner in opened:
            runner.close()
        raise
    return kept, failing


def bench_text(rows: Sequence[dict[str, Any]]) -> str:
    """The terminal table of bench rows, with the stability rule once; the CLI prints it as the command's result."""
    return render_table(*bench_table(rows), title="bench (milliseconds per batch)") + f"\nnote: {STABILITY_RULE}"


def bench_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of bench rows (the terminal, bench.md and the report share them)."""
    headers = [
        "backend",
        "precision",
        "device",
        "batch",
        "iterations",
        "median ms",
        "mean ms",
        "p90 ms",
        "p99 ms",
        "spread",
        "images/s",
        "speedup (p10-p90)",
        "device median ms",
    ]
    cells = [
        [
            r["backend"],
            r["precision"],
            r["device"],
            str(r["batch_size"]),
            str(r["iterations"]),
            f"{r['median_ms']:.3f}",
            f"{r['mean_ms']:.3f}",
            f"{r['p90_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            "-" if r.get("round_spread") is None else f"{r['round_spread']:.1%}",
            f"{r['throughput_ips']:.1f}",
            format_speedup(r),
            "-" if r["device_median_ms"] is None else f"{r['device_median_ms']:.3f}",
        ]
        for r in rows
    ]
    return headers, cells


def format_speedup(row: dict[str, Any]) -> str:
    """``2.10x (1.95-2.30)``, with ``?`` after an unreliable ratio; ``-`` without a reference."""
    speedup = row["speedup_vs_reference"]
    if speedup is None:
        return "-"
    text = f"{speedup:.2f}x"
    if row.get("speedup_low") is not None:
        text += f" ({row['speedup_low']:.2f}-{row['speedup_high']:.2f})"
    return text if row.get("speedup_reliable") else text + " ?"


def write_outputs(report: BenchReport, directory: Path, json_path: str | Path | None = None) -> None:
    """bench.json, bench.csv, bench.md and bench.png in DIR (and the JSON at ``json_path`` too)."""
    data = report.to_dict()
    write_json(directory / BENCH_JSON, data)
    if json_path is not None:
        write_json(json_path, data)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "options": json.dumps(r["options"]) if r["options"] else ""} for r in report.results)
    write_text(directory / BENCH_CSV, buffer.getvalue())
    text = "# bench\n\n" + markdown_table(*bench_table(report.results)) + f"\n\nNote: {STABILITY_RULE}.\n"
    if report.warnings:
        text += "\nWarnings:\n\n" + "".join(f"- {w}\n" for w in report.warnings)
    write_text(directory / BENCH_MD, text)
    plot(report.results, directory / BENCH_PNG)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Median latency against batch size, and throughput, one line per runner (Agg; no display needed)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    latency, throughput = figure.subplots(1, 2)
    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        series.setdefault(_label(row), []).append(row)
    for label, points in series.items():
        points = sorted(points, key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in points]
        latency.plot(sizes, [r["median_ms"] for r in points], marker="o", label=label)
        throughput.plot(sizes, [r["throughput_ips"] for r in points], marker="o", label=label)
    batch_sizes = sorted({r["batch_size"] for r in rows})
    for axes, title, unit in ((latency, "median latency", "ms per batch"), (throughput, "throughput", "images/s")):
        if len(batch_sizes) > 1:
            axes.set_xscale("log", base=2)
        axes.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        axes.set_xlabel("batch size")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
    throughput.legend(fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
