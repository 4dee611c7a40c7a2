"""How bench judges what it measured: a row's statistics, speedups with their intervals, load and warnings.

Statistics agree with themselves: a row's median, its images/s and its speedup come from the same
calls, and every interval contains its estimate (:mod:`..timing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from ...backends.base import Candidate
from ...backends.registry import backends
from ..machine import DISTURBED_CPU, disturbed
from ..timing import latency_stats, median_interval, ratio_interval, round_spread
from .plan import Unit
from .records import RELIABLE_RATIO_WIDTH, BenchRow, LoadRecord, NoiseFloor

# A row is disturbed when other processes took over DISTURBED_CPU of the machine in this share of its rounds.
DISTURBED_ROUNDS = 0.2


def measured_row(
    candidate: Candidate,
    batch_size: int,
    rounds_ms: Sequence[Sequence[float]],
    noise: NoiseFloor,
    ticks: Sequence[tuple[int, int]] = (),
    device_ms: Sequence[float] = (),
) -> BenchRow:
    """A row's statistics from its calls, round by round, and the CPU ticks others used during its slices."""
    times = [t for r in rounds_ms for t in r]
    stats = latency_stats(times)
    threshold = noise.threshold_for(float(np.median([len(r) for r in rounds_ms])))
    interval = median_interval(rounds_ms)
    spread = round_spread(rounds_ms)
    other, total = sum(o for o, _ in ticks), sum(t for _, t in ticks)
    disturbed_rounds = sum(disturbed(o, t) for o, t in ticks)
    device = latency_stats(device_ms) if device_ms else None
    return BenchRow(
        backend=candidate.backend,
        precision=str(candidate.precision),
        device=candidate.device,
        artifact=candidate.artifact,
        batch_size=batch_size,
        iterations=len(times),
        rounds=len(rounds_ms),
        **asdict(stats),
        cv=stats.cv,
        median_low_ms=interval[0] if interval else None,
        median_high_ms=interval[1] if interval else None,
        round_spread=spread,
        noise_threshold=threshold,
        unstable=spread is not None and spread > threshold,
        other_cpu=other / total if total else None,
        disturbed_rounds=disturbed_rounds,
        disturbed=disturbed_rounds >= max(1, math.ceil(DISTURBED_ROUNDS * len(rounds_ms)))
        or (total > 0 and other / total > DISTURBED_CPU),
        throughput_ips=batch_size * 1e3 / stats.median_ms,
        device_mean_ms=device.mean_ms if device else None,
        device_median_ms=device.median_ms if device else None,
        device_p99_ms=device.p99_ms if device else None,
        round_medians_ms=[float(np.median(r)) for r in rounds_ms],
    )


def _reference_device(device: str) -> str:
    """Torch runs on ``cpu`` or ``cuda``; ONNX Runtime's CUDA and TensorRT providers and engines are on the GPU."""
    return "cpu" if device == "cpu" else "cuda"


def add_speedups(rows: Sequence[BenchRow], rounds: dict[int, list[list[float]]] | None = None) -> None:
    """Each row's speedup over torch FP32 on the same device at the same batch size, with its interval.

    The estimate is the ratio of the two medians; the interval resamples the rounds the two rows
    shared (bootstrap, :func:`.timing.ratio_interval`), from the per-round times when given (``rounds``
    by ``id(row)``) and else from the per-round medians. Reliable: a narrow interval, and neither row
    unstable or disturbed.
    """
    reference = {(r.device, r.batch_size): r for r in rows if r.is_reference}
    for row in rows:
        base = reference.get((_reference_device(row.device), row.batch_size))
        row.speedup_vs_reference = row.speedup_low = row.speedup_high = row.speedup_reliable = None
        if base is None or row.median_ms <= 0:
            continue
        speedup = base.median_ms / row.median_ms
        row.speedup_vs_reference = speedup
        if row is base:
            row.speedup_low = row.speedup_high = 1.0
            row.speedup_reliable = not (row.unstable or row.disturbed)
            continue
        rounds = rounds or {}
        interval = ratio_interval(
            rounds.get(id(base), [[m] for m in base.round_medians_ms]),
            rounds.get(id(row), [[m] for m in row.round_medians_ms]),
        )
        if interval is None:
            row.speedup_reliable = False
            continue
        _, low, high = interval
        row.speedup_low, row.speedup_high = min(low, speedup), max(high, speedup)
        narrow = (row.speedup_high - row.speedup_low) <= RELIABLE_RATIO_WIDTH * speedup
        row.speedup_reliable = narrow and not (row.unstable or row.disturbed or base.unstable or base.disturbed)


def load_record(
    units: Sequence[Unit],
    rows: Sequence[BenchRow],
    monitored: bool,
    before: tuple[float, float, float] | None,
    after: tuple[float, float, float] | None,
) -> LoadRecord:
    ticks = [t for unit in units for t in unit.ticks]
    other, total = sum(o for o, _ in ticks), sum(t for _, t in ticks)
    share = other / total if total else None
    busy = monitored and (any(r.disturbed for r in rows) or (share is not None and share > DISTURBED_CPU))
    return LoadRecord(
        monitored and bool(ticks),
        share,
        sum(disturbed(o, t) for o, t in ticks),
        len(ticks),
        before,
        after,
        busy,
    )


def bench_warnings(rows: Sequence[BenchRow], noise: NoiseFloor, load: LoadRecord) -> list[str]:
    """A busy machine first, then unstable and disturbed rows, then INT8 not faster than FP16."""
    warnings = []
    if note := load.note():
        warnings.append(note)
    unstable = [
        f"{r.label} batch {r.batch_size}: unstable, round spread {r.round_spread:.1%} "
        f"(threshold {r.noise_threshold:.1%})"
        for r in rows
        if r.unstable and r.round_spread is not None
    ]
    if unstable:
        warnings.append(
            f"{len(unstable)} row(s) unstable: round spread over the measured noise threshold "
            "(rerun on an idle machine or with a longer --duration)"
        )
        warnings += unstable
    if busy := [f"{r.label} batch {r.batch_size} ({r.other_cpu or 0:.0%})" for r in rows if r.disturbed]:
        warnings.append(
            f"{len(busy)} row(s) disturbed by other processes (their share of the CPU while the row ran): "
            + ", ".join(busy)
        )
    fp16 = {(r.backend, r.device, r.batch_size): r for r in rows if r.precision == "fp16"}
    for row in rows:
        other = fp16.get((row.backend, row.device, row.batch_size))
        if row.precision == "int8" and other and row.median_ms >= other.median_ms:
            warnings.append(
                f"{row.backend}-{row.device} batch {row.batch_size}: INT8 ({row.median_ms:.3f} ms) is not "
                f"faster than FP16 ({other.median_ms:.3f} ms): " + int8_note(row.backend, row.device)
            )
    return warnings


def int8_note(backend: str, device: str) -> str:
    """Why INT8 may not beat FP16 on this runner, as its backend says (measured or documented, not guessed)."""
    known = backends().get(backend)
    return (known.int8_note if known else {}).get(device, "this runner has no faster int8 path here")
