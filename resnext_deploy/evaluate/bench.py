"""How much faster is each artifact? Latency and throughput of every runner, measured so the ratios can be trusted.

- **As users run it.** Each runner lives in its own worker process (:mod:`.worker`), so thread pools of
  different runtimes never meet, and runs in its library's default threading (pools that spin between
  calls as they do by default; ``--passive-pools`` puts them to sleep instead, and says so). After each
  slice bench waits until the last runner's pool has gone quiet (none of its threads running or runnable,
  read from ``/proc``) before the next slice starts, so no runner meets a neighbour's spinning pool.
- **Interleaved.** Every round gives every (runner, batch size) one time slice, one worker running
  at a time, so drift of the machine hits all rows alike; a speedup pairs rounds measured side by side.
- **Against the machine's own noise.** A fixed small workload measures how much this machine's
  speed moves from round to round; a row is unstable only beyond that. During every slice the CPU
  time used by other processes is read from ``/proc``: a disturbed row is marked, and a busy machine said.
- **Within a budget.** ``budget_s`` bounds the whole run; slices, then rounds, shrink to fit, down to
  a minimum number of rounds, and the progress bar counts the planned work.
- **Surviving its workers.** Each reply is awaited for its planned time plus a margin (:func:`reply_margin`);
  a worker that dies or stops answering is ended and its rows recorded as failed, with the reason, while
  the other rows are kept and written.

Statistics agree with themselves: a row's median, its images/s and its speedup come from the same
calls, and every interval contains its estimate (:mod:`.timing`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_path, now_iso, write_json, write_text
from ..backends.base import Candidate, SkipRecord
from ..backends.registry import BUILTIN, backend_names, backends, discover_runners, get_backend
from ..errors import BadInputError
from ..schemas import SCHEMA_VERSION
from ..ui import markdown_table, render_table
from ..ui import progress as ui_progress
from .machine import (
    DISTURBED_CPU,
    QUIET_WINDOW_S,
    LoadMonitor,
    disturbed,
    load_average,
    machine_record,
    quiet_after,
)
from .settings import BenchSettings
from .timing import CONFIDENCE, latency_stats, median_interval, ratio_interval, round_spread, spread_of
from .worker import NOISE_PROBE, QUIET_ENV, SPINNING, Opened, RunnerProcess, WorkerError, WorkerSpec

BENCH_JSON, BENCH_CSV, BENCH_MD, BENCH_PNG = "bench.json", "bench.csv", "bench.md", "bench.png"
# A row is unstable when its round spread exceeds max(UNSTABLE_FLOOR, NOISE_FACTOR x the noise probe's spread).
UNSTABLE_FLOOR = 0.05
NOISE_FACTOR = 3.0
# A speedup is reliable when its interval is no wider than this fraction of it, and neither row is unstable or
# disturbed.
RELIABLE_RATIO_WIDTH = 0.25
# A row is disturbed when other processes took over DISTURBED_CPU of the machine in this share of its rounds.
DISTURBED_ROUNDS = 0.2
NOISE_PROBE_ROUNDS = 15
NOISE_PROBE_SLICE_S = 0.1
CLOSE_RESERVE_S = 3.0  # kept from the budget for closing workers, statistics and the output files
# The plan fills this share of the time left: calls measured later run a little slower than the warm-up's
# (a ResNeXt-50 matrix on a 2-core AVX2 EPYC took 9% longer than planned).
PLAN_SHARE = 0.85
REFERENCE_KEY = ("torch", "fp32")
# A reply is awaited for the work it was asked for (a slice, a warm-up) plus a margin: this share of --budget,
# at least REPLY_MARGIN_MIN_S, and at least the planned time again (a call twice as slow as planned is not a hang).
REPLY_MARGIN_SHARE = 0.1
REPLY_MARGIN_MIN_S = 2.0
# Without --pause-ms, bench waits after each slice until the worker is quiet (machine.quiet_after), at most
# QUIET_LIMIT_S; the plan expects PAUSE_FACTOR x the wait measured after the worker's warm-up.
PAUSE_FACTOR = 2.0
QUIET_LIMIT_S = 1.0
LIBRARY_DEFAULTS, PASSIVE = "library defaults", "passive"  # the thread-pool mode recorded in each row's options


@dataclass
class BenchRow:
    """One runner at one batch size: what ``bench.json`` holds per row, and what the tables and report read."""

    backend: str
    precision: str
    device: str
    artifact: str | None
    batch_size: int
    iterations: int
    rounds: int
    mean_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    std_ms: float
    cv: float
    median_low_ms: float | None
    median_high_ms: float | None
    round_spread: float | None
    noise_threshold: float
    unstable: bool
    other_cpu: float | None
    disturbed_rounds: int
    disturbed: bool
    throughput_ips: float
    speedup_vs_reference: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    speedup_reliable: bool | None = None
    compute_precision: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    load_s: float | None = None
    first_call_ms: float | None = None
    peak_rss_mb: float | None = None
    runner_rss_mb: float | None = None
    artifact_bytes: int | None = None
    device_mean_ms: float | None = None
    device_median_ms: float | None = None
    device_p99_ms: float | None = None
    round_medians_ms: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.device}:{self.precision}"

    @property
    def is_reference(self) -> bool:
        return (self.backend, self.precision) == REFERENCE_KEY

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRow:
        """A row read back from ``bench.json`` (fields a newer writer added are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


ROW_FIELDS = tuple(f.name for f in fields(BenchRow))
CSV_FIELDS = tuple(f for f in ROW_FIELDS if f != "round_medians_ms")


@dataclass(frozen=True)
class NoiseFloor:
    """The machine's own noise, measured with a fixed workload, and the thresholds it gives.

    The workload runs in 15 quick rounds before the rows are measured (``start_spread``), then as a
    control with one slice in every round of the measurement (``run_spread``), so that slow drift over the
    whole run counts too; ``spread`` is the larger of the two. ``call_spread`` is how much its single
    calls vary: a row with few calls per round has per-round medians that vary that much more, so its
    threshold (:meth:`threshold_for`) allows for it.
    """

    spread: float | None
    threshold: float
    rounds: int
    workload: str
    start_spread: float | None = None
    run_spread: float | None = None
    call_spread: float | None = None

    @staticmethod
    def measured(
        start: float | None, run: float | None, rounds: int, workload: str, call_spread: float | None = None
    ) -> NoiseFloor:
        known = [s for s in (start, run) if s is not None]
        spread = max(known) if known else None
        threshold = max(UNSTABLE_FLOOR, NOISE_FACTOR * spread) if spread is not None else UNSTABLE_FLOOR
        return NoiseFloor(spread, threshold, rounds, workload, start, run, call_spread)

    def threshold_for(self, calls_per_round: float) -> float:
        """The round spread beyond which a row with this many calls per round is unstable."""
        single = (self.call_spread or 0.0) / math.sqrt(max(calls_per_round, 1.0))
        return max(self.threshold, NOISE_FACTOR * single)

    @property
    def rule(self) -> str:
        measured = (
            f"a fixed small workload ({self.workload}) moved {self.spread:.1%} from round to round here "
            f"({_percent(self.start_spread)} in {NOISE_PROBE_ROUNDS} rounds before the rows, "
            f"{_percent(self.run_spread)} as a control slice in each of {self.rounds} rounds among them), and "
            f"its single calls by {_percent(self.call_spread)}"
            if self.spread is not None
            else "the noise probe could not run here"
        )
        return (
            f"noise floor: {measured}; a row is unstable when its per-round medians spread ((p90 - p10) / median) "
            f"by more than {NOISE_FACTOR:g}x that noise for its number of calls per round (the round spread, or "
            f"the single calls' spread / sqrt(calls per round), whichever is larger; at least {UNSTABLE_FLOOR:.0%}, "
            f"{self.threshold:.1%} for rows of many calls); a slice is disturbed when other processes used over "
            f"{DISTURBED_CPU:.0%} of the CPU during it; a speedup is the ratio of medians with a {CONFIDENCE:.0%} "
            f"bootstrap interval over rounds measured side by side, and is reliable when the interval is within "
            f"{RELIABLE_RATIO_WIDTH:.0%} of it and neither row is unstable or disturbed"
        )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


@dataclass(frozen=True)
class LoadRecord:
    """How busy other processes kept the machine while bench measured."""

    monitored: bool
    other_cpu: float | None  # share of the machine's CPU time other processes used over all slices
    disturbed_slices: int
    slices: int
    load_average_before: tuple[float, float, float] | None
    load_average_after: tuple[float, float, float] | None
    busy: bool

    def note(self) -> str | None:
        """The sentence a reader must see first when the machine was busy, else None."""
        if not self.monitored:
            return "the load monitor could not read /proc here: other load was not measured"
        if not self.busy:
            return None
        return (
            f"the machine was busy: other processes used {self.other_cpu:.0%} of the CPU while bench measured, "
            f"and disturbed {self.disturbed_slices} of {self.slices} slices (over {DISTURBED_CPU:.0%} each); "
            "ratios of disturbed rows are not headlined. Rerun on an idle machine"
        )


@dataclass(frozen=True)
class FailedRow:
    """A row whose worker died or stopped answering (or whose runner failed mid-measure): not measured, and why.

    ``batch_size`` None: the worker was lost before any batch size was warmed up. ``signal`` names the
    signal that ended the worker (``SIGKILL``), ``timed_out`` says it stopped answering and was ended.
    """

    backend: str
    precision: str
    device: str
    artifact: str | None
    batch_size: int | None
    stage: str  # open, warm-up or measure
    reason: str
    signal: str | None = None
    timed_out: bool = False
    rounds_measured: int = 0

    @property
    def label(self) -> str:
        where = f"{self.backend}-{self.device}:{self.precision}"
        return where + (f" batch {self.batch_size}" if self.batch_size is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed_row(
    candidate: Candidate, batch_size: int | None, stage: str, error: WorkerError, rounds: int = 0
) -> FailedRow:
    return FailedRow(
        candidate.backend,
        candidate.precision,
        candidate.device,
        candidate.artifact,
        batch_size,
        stage,
        str(error),
        error.signal,
        error.kind == "timeout",
        rounds,
    )


@dataclass
class BenchReport:
    """What ``bench`` measured; ``to_dict`` is the shape of ``bench.json``."""

    machine: dict[str, Any]
    results: list[BenchRow]
    warnings: list[str]
    skipped: list[SkipRecord]
    settings: dict[str, Any]
    artifacts: dict[str, str]
    noise: NoiseFloor
    load: LoadRecord
    directory: Path
    failed: list[FailedRow] = field(default_factory=list)

    def failure(self) -> str | None:
        """The one line that says which rows failed (the exit status's reason), or None when none did."""
        if not self.failed:
            return None
        rows = "; ".join(f"{f.label} ({f.stage}): {f.reason}" for f in self.failed)
        return (
            f"bench: {len(self.failed)} row(s) failed: {rows}; the {len(self.results)} measured row(s) are in "
            f"{self.directory / BENCH_JSON}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created": now_iso(),
            "machine": self.machine,
            "settings": self.settings,
            "noise": asdict(self.noise),
            "load": asdict(self.load),
            "results": [row.to_dict() for row in self.results],
            "warnings": self.warnings,
            "skipped": [s.to_dict() for s in self.skipped],
            "failed": [f.to_dict() for f in self.failed],
            "artifacts": self.artifacts,
        }


@dataclass
class Unit:
    """One worker at one batch size: what the plan gives it per round, and what it measured, round by round."""

    candidate: Candidate
    worker: RunnerProcess
    batch_size: int
    first_call_ms: float = 0.0
    call_ms: float = 0.0  # a warm call's time, from the warm-up; the plan is built on it
    min_calls: int = 1
    fixed_slice_s: float | None = None  # the noise control's own slice, whatever the plan's
    rounds_ms: list[list[float]] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    ticks: list[tuple[int, int]] = field(default_factory=list)  # (other processes', machine's) per slice
    quiet_s: float | None = None  # how long the worker's pool kept using CPU after its warm-up
    pause_s: float = 0.0  # the wait after each slice the plan expects (until the worker is quiet)
    waits_s: list[float] = field(default_factory=list)  # the waits after its slices, as measured


@dataclass(frozen=True)
class Plan:
    """Rounds, the time slice every unit gets per round, and how long that should take."""

    rounds: int
    slice_s: float
    seconds: float
    fits: bool


def plan_rounds(
    units: Sequence[Unit],
    settings: BenchSettings,
    available_s: float,
    control_s: float = 0.0,
    pause_s: float | None = None,
) -> Plan:
    """The most measurement that fits ``available_s``, giving up in this order: slice length, then
    ``min_iterations`` (one call per round), then rounds (down to ``min_rounds``).

    Every unit gets at least ``min_calls`` calls per round (its share of ``min_iterations``), so a slow
    row (one call longer than its slice) costs its calls, not its slice. Sets each unit's ``min_calls``.
    ``control_s`` is what each round spends besides the units (the noise control's slice); ``pause_s`` the
    pause after each slice (``--pause-ms`` when None, else 0).
    """
    if pause_s is None:
        pause_s = (settings.pause_ms or 0.0) / 1e3

    def seconds(rounds: int, slice_s: float, calls: int | None = None) -> float:
        for unit in units:
            unit.min_calls = calls or max(1, math.ceil(settings.min_iterations / rounds))
        return rounds * (
            control_s + sum(max(slice_s, u.min_calls * u.call_ms / 1e3) + pause_s + u.pause_s for u in units)
        )

    def plan(rounds: int, slice_s: float, calls: int | None = None, fits: bool = True) -> Plan:
        return Plan(rounds, slice_s, seconds(rounds, slice_s, calls), fits)

    full, rounds = settings.duration_s / settings.rounds, settings.rounds
    if seconds(rounds, full) <= available_s:
        return plan(rounds, full)
    if seconds(rounds, 0.0) <= available_s:
        low, high = 0.0, full
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (middle, high) if seconds(rounds, middle) <= available_s else (low, middle)
        return plan(rounds, low)
    for fewer in range(rounds, settings.min_rounds - 1, -1):
        if seconds(fewer, 0.0, calls=1) <= available_s:
            return plan(fewer, 0.0, calls=1)
    return plan(settings.min_rounds, 0.0, calls=1, fits=False)


def run_bench(
    directory: str | Path,
    settings: BenchSettings | None = None,
    json_path: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> BenchReport:
    """Measure every runner in DIR at every batch size; write bench.json, .csv, .md and .png there.

    Returns the report; the caller shows its table (:func:`bench_text`), ``log`` gets the rest. The
    runners' workers are spawned processes, so a script that calls this must do so under
    ``if __name__ == "__main__":`` (multiprocessing re-imports the main module in each worker).
    """
    report = measure_bench(directory, settings, log, progress)
    write_outputs(report, report.directory, json_path)
    for line in report.warnings:
        log(f"warning: {line}")
    for entry in report.skipped:
        log(f"skipped {entry.label}: {entry.reason}")
    for failed in report.failed:
        log(f"FAILED {failed.label} ({failed.stage}): {failed.reason}")
    return report


def reply_margin(settings: BenchSettings) -> float:
    """How much longer than planned a worker's reply is awaited: 10% of ``--budget``, at least 2 s."""
    return max(REPLY_MARGIN_MIN_S, REPLY_MARGIN_SHARE * settings.budget_s)


def reply_timeout(planned_s: float, settings: BenchSettings) -> float:
    """The longest wait for a reply to work planned to take ``planned_s``: that plus the margin, or twice it."""
    return planned_s + max(reply_margin(settings), planned_s)


def measure_bench(
    directory: str | Path,
    settings: BenchSettings | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> BenchReport:
    """What :func:`run_bench` measures, without writing anything (scripts that compare with other files)."""
    started = time.monotonic()
    settings = settings or BenchSettings()
    backends_used = settings.backends or backend_names()
    options = {name: dict(values) for name, values in settings.backend_options.items()}
    if settings.passive_pools:  # every backend with this knob: idle pools sleep between slices
        for name in backends_used:
            if any(option.name == SPINNING for option in get_backend(name).options):
                options.setdefault(name, {})[SPINNING] = False
    found = discover_runners(
        directory, backends_used, settings.precisions, settings.threads, settings.backends or (), options
    )
    skipped = [c.skip_record() for c in found.skipped]
    runnable = found.runnable
    if not runnable:
        _nothing_to_bench(found.manifest.directory, backends_used, settings, skipped)
    extra = tuple(b for name, b in backends().items() if name not in BUILTIN)
    size = found.source.preprocessing.image_size

    def spec(candidate: Candidate) -> WorkerSpec:
        return WorkerSpec(
            str(found.manifest.directory),
            candidate.backend,
            candidate.precision,
            candidate.device,
            candidate.artifact,
            settings.threads,
            size,
            candidate.options,
            extra,
            passive=settings.passive_pools,
        )

    probe_spec = WorkerSpec("", NOISE_PROBE, "fp32", "cpu", None, settings.threads, 1, passive=settings.passive_pools)
    log(f"starting {len(runnable)} runner process(es) and a noise probe")
    workers = [(c, RunnerProcess(spec(c))) for c in runnable]
    probe = RunnerProcess(probe_spec)
    for candidate, worker in workers:
        log(f"worker {worker.pid}: {candidate.label}")
    log(f"worker {probe.pid}: noise probe")
    opened: list[tuple[Candidate, RunnerProcess, Opened]] = []
    failed: list[FailedRow] = []
    peaks: dict[int, float | None] = {}
    try:
        with ui_progress(len(workers), "opening runners", unit="runners") as advance:
            for candidate, worker in workers:
                wait_s = max(reply_margin(settings), settings.budget_s - (time.monotonic() - started))
                try:
                    opened.append((candidate, worker, worker.open(timeout_s=wait_s)))
                except WorkerError as exc:
                    worker.kill()
                    if exc.lost:
                        failed.append(failed_row(candidate, None, "open", exc))
                    else:
                        reason = str(exc) if exc.kind == "unavailable" else f"cannot be loaded: {exc}"
                        skipped.append(candidate.skip_record(reason))
                advance(1, f"opened {candidate.label}")
        if not opened and not failed:
            _nothing_to_bench(found.manifest.directory, backends_used, settings, skipped)
        left_s = max(reply_margin(settings), settings.budget_s - (time.monotonic() - started))
        start_spread, control, workload, call_spread = measure_noise(probe, settings, open_s=left_s)
        monitor = LoadMonitor()
        before = load_average()
        units = _warm_up(opened, settings, skipped, failed, progress, size)
        if not units and not failed:
            _nothing_to_bench(found.manifest.directory, backends_used, settings, skipped)
        pause_s = (settings.pause_ms or 0.0) / 1e3  # a fixed pause (--pause-ms), else wait until quiet
        for unit in [*units, *([control] if control else [])]:
            if settings.pause_ms is None:
                unit.pause_s = min(PAUSE_FACTOR * (unit.quiet_s or 0.0), QUIET_LIMIT_S) + QUIET_WINDOW_S
        setup_s = time.monotonic() - started
        control_s = NOISE_PROBE_SLICE_S + pause_s + control.pause_s if control is not None else 0.0
        available = (settings.budget_s - setup_s - CLOSE_RESERVE_S) * PLAN_SHARE
        plan = plan_rounds(units, settings, available, control_s, pause_s)
        if units:
            wait = f"a {pause_s * 1e3:.0f} ms pause" if settings.pause_ms is not None else "a wait until quiet"
            log(
                f"measuring {len(units)} row(s) in {plan.rounds} interleaved rounds of {plan.slice_s * 1e3:.0f} ms "
                f"slices (at least {units[0].min_calls} call(s) each), {wait} after each: about {plan.seconds:.0f} s"
            )
        measured = [*units, *([control] if control else [])] if units else []
        lost = _measure(measured, plan, pause_s, monitor, progress, settings)
        failed += [f for unit, f in lost if unit is not control]
        after = load_average()
        run_spread = (
            round_spread(control.rounds_ms) if control and all(unit is not control for unit, _ in lost) else None
        )
        noise = NoiseFloor.measured(start_spread, run_spread, plan.rounds, workload, call_spread)
    finally:
        probe.kill()
        for _, worker, *_ in opened:
            peaks[id(worker)] = worker.close(timeout_s=reply_margin(settings))
        for _, worker in workers:
            worker.kill()
    info = {id(worker): (candidate, opened_info) for candidate, worker, opened_info in opened}
    gone = {id(unit) for unit, _ in lost}
    units = [u for u in units if id(u) not in gone]
    rows = [_row(u, info[id(u.worker)][1], peaks.get(id(u.worker)), found.manifest.directory, noise) for u in units]
    mode = PASSIVE if settings.passive_pools else LIBRARY_DEFAULTS
    for row in rows:
        row.options["pools"] = mode
    add_speedups(rows, {id(row): unit.rounds_ms for row, unit in zip(rows, units, strict=True)})
    load = _load_record(units, rows, monitor.available, before, after)
    warnings = bench_warnings(rows, noise, load)
    if not plan.fits:
        warnings.insert(
            0,
            f"--budget {settings.budget_s:g} s is too short: opening and warming up the runners took {setup_s:.0f} s, "
            f"then {plan.rounds} rounds of one call per row took about {plan.seconds:.0f} s more; give a larger "
            "--budget, or fewer backends, precisions or batch sizes",
        )
    short = [r for r in rows if r.iterations < settings.min_iterations]
    if short:
        warnings.append(
            f"{len(short)} row(s) have fewer than --min-iterations {settings.min_iterations} calls to fit --budget"
        )
    record = {
        **settings.to_dict(),
        "rounds": plan.rounds,
        "slice_s": plan.slice_s,
        "setup_s": setup_s,
        "planned_s": plan.seconds,
        "plan_fits": plan.fits,
        "wall_s": time.monotonic() - started,
        "input": "seeded N(0,1) float32 NCHW, made once per batch size in each worker and not timed",
        "speedup": "median of torch fp32 on the same device at the same batch size / this row's median",
        "isolation": _isolation(settings, [*units, *([control] if control else [])], control),
        "stability": noise.rule,
    }
    report = BenchReport(
        machine_record(settings.threads),
        rows,
        warnings,
        skipped,
        record,
        found.hashes([c for c, *_ in opened]),
        noise,
        load,
        found.manifest.directory,
        failed,
    )
    return report


def _nothing_to_bench(
    directory: Path, backends_used: Sequence[str], settings: BenchSettings, skipped: Sequence[SkipRecord]
) -> None:
    reasons = "; ".join(f"{s.label}: {s.reason}" for s in skipped)
    raise BadInputError(
        f"nothing to benchmark in {directory} for backends {','.join(backends_used)} and precisions "
        f"{','.join(settings.precisions)}" + (f" ({reasons})" if reasons else "")
    )


def _isolation(settings: BenchSettings, units: Sequence[Unit], control: Unit | None) -> dict[str, Any]:
    """How the runners were kept apart and in which threading they ran, recorded in the settings
    (each row's ``options["pools"]`` says the mode too). The waits are in milliseconds, by runner."""
    from ..environment import usable_cpus

    def ms(values: Sequence[float]) -> float | None:
        return round(float(np.median(values)) * 1e3, 1) if values else None

    by_runner: dict[str, list[Unit]] = {}
    for unit in units:
        by_runner.setdefault(NOISE_PROBE if unit is control else unit.candidate.label, []).append(unit)
    waits = [w for unit in units for w in unit.waits_s]
    until_quiet = settings.pause_ms is None
    return {
        "process_per_runner": True,
        "mode": PASSIVE if settings.passive_pools else LIBRARY_DEFAULTS,
        "environment": dict(QUIET_ENV) if settings.passive_pools else {},
        "onnxruntime_allow_spinning": not settings.passive_pools,
        "threads": f"--threads {settings.threads}"
        if settings.threads
        else f"each library's default, capped at the {usable_cpus()} usable CPUs",
        "pause": "until quiet" if until_quiet else "fixed (--pause-ms)",
        "pause_ms": ms(waits) if until_quiet else settings.pause_ms,
        "pause_max_ms": round(max(waits) * 1e3, 1) if until_quiet and waits else settings.pause_ms,
        "quiet_rule": f"after each slice, bench waits until none of the worker's threads has been running or "
        f"runnable (state R in /proc/PID/task/*/stat) for {QUIET_WINDOW_S * 1e3:g} ms, at most {QUIET_LIMIT_S:g} s",
        "quiet_after_warm_up_ms": {
            label: max((round(u.quiet_s * 1e3, 1) for u in group if u.quiet_s is not None), default=None)
            for label, group in by_runner.items()
        },
        "wait_after_slice_ms": {label: ms([w for u in group for w in u.waits_s]) for label, group in by_runner.items()},
        "reply_margin_s": reply_margin(settings),
    }


def measure_noise(
    probe: RunnerProcess, settings: BenchSettings | None = None, open_s: float | None = None
) -> tuple[float | None, Unit | None, str, float | None]:
    """Run the fixed workload in quick rounds: its round spread, and the unit that keeps it running as a control.

    The control takes one slice in every round of the measurement (see :class:`NoiseFloor`); None,
    with no spread, where the probe cannot run (or is lost: ``open_s`` bounds its opening, each slice
    is bounded as the rows' are).
    """
    settings = settings or BenchSettings()
    workload = "4 conv3x3 32ch 28x28 in ONNX Runtime"
    wait_s = reply_timeout(NOISE_PROBE_SLICE_S, settings)
    try:
        opened = probe.open(timeout_s=open_s)
        workload = str(opened.options.get("workload", workload))
        warm = probe.run(1, NOISE_PROBE_SLICE_S, 2, timeout_s=wait_s).times_ms
        quiet = quiet_after(probe.pid, QUIET_LIMIT_S)
        rounds = [probe.run(1, NOISE_PROBE_SLICE_S, 1, timeout_s=wait_s).times_ms for _ in range(NOISE_PROBE_ROUNDS)]
    except WorkerError:
        probe.kill()
        return None, None, workload, None
    candidate = Candidate(NOISE_PROBE, "fp32", "cpu", None)
    control = Unit(candidate, probe, 1, warm[0], float(np.median(warm[1:])), fixed_slice_s=NOISE_PROBE_SLICE_S)
    control.quiet_s = quiet
    return round_spread(rounds), control, workload, spread_of([t for r in rounds for t in r])


def _warm_up(
    opened: Sequence[tuple[Candidate, RunnerProcess, Opened]],
    settings: BenchSettings,
    skipped: list[SkipRecord],
    failed: list[FailedRow],
    progress: bool,
    image_size: int,
) -> list[Unit]:
    """Warm every (runner, batch size) up by time, at least one call; its first call is reported on its own.

    The warm calls' median is what the plan expects a call to cost; where the first call already used up
    the warm-up time, the first call is the (pessimistic) estimate. A runner that cannot run a batch is
    reported and not timed; a worker lost on the way fails its remaining batch sizes. After each warm-up
    the time the worker's pool takes to go quiet is measured (the pause is made from it).
    """
    units = []
    with ui_progress(len(opened) * len(settings.batch_sizes), "warming up", unit="rows") as advance:
        for candidate, worker, _ in opened:
            lost: WorkerError | None = None
            for batch_size in sorted(settings.batch_sizes):
                if lost is not None:
                    failed.append(failed_row(candidate, batch_size, "warm-up", lost))
                    advance(1, f"warming up {candidate.label} batch {batch_size}")
                    continue
                try:
                    calls = worker.run(
                        batch_size, warm_s := settings.warmup_ms / 1e3, 1, timeout_s=reply_timeout(warm_s, settings)
                    )
                except WorkerError as exc:
                    if exc.lost:
                        lost = exc
                        failed.append(failed_row(candidate, batch_size, "warm-up", exc))
                    else:
                        shape = f"{batch_size}x3x{image_size}x{image_size}"
                        skipped.append(candidate.skip_record(f"cannot run a {shape} batch: {exc}"))
                else:
                    first, *warm = calls.times_ms
                    unit = Unit(candidate, worker, batch_size, first, float(np.median(warm or [first])))
                    unit.quiet_s = quiet_after(worker.pid, QUIET_LIMIT_S)
                    units.append(unit)
                advance(1, f"warming up {candidate.label} batch {batch_size}")
    return units


def _measure(
    units: Sequence[Unit],
    plan: Plan,
    pause_s: float,
    monitor: LoadMonitor,
    progress: bool,
    settings: BenchSettings | None = None,
) -> list[tuple[Unit, FailedRow]]:
    """Rounds of one slice per unit, each round starting one unit later; the bar counts planned seconds.

    Each reply is awaited for the slice's planned time plus :func:`reply_margin`. A unit whose worker dies or
    stops answering fails with every other unit of that worker; one whose runner raises fails alone; the
    rest go on. Returns the failed units, each with its record.
    """
    settings = settings or BenchSettings()
    lost: dict[int, tuple[Unit, FailedRow]] = {}
    with ui_progress(plan.seconds, "measuring", unit="s") as advance:
        for round_index in range(plan.rounds):
            shift = round_index % len(units) if units else 0
            for unit in [*units[shift:], *units[:shift]]:
                slice_s = _slice(unit, plan)
                work_s = max(slice_s, unit.min_calls * unit.call_ms / 1e3)
                planned = work_s + pause_s + unit.pause_s
                if id(unit) in lost:
                    advance(planned, f"round {round_index + 1}/{plan.rounds}: {unit.candidate.label} failed")
                    continue
                before = monitor.sample(unit.worker.pid)
                try:
                    calls = unit.worker.run(
                        unit.batch_size,
                        slice_s,
                        unit.min_calls,
                        timeout_s=reply_timeout(work_s, settings),
                    )
                except WorkerError as exc:
                    for other in units if exc.lost else [unit]:
                        if other.worker is unit.worker and id(other) not in lost:
                            rounds = len(other.rounds_ms)
                            lost[id(other)] = (
                                other,
                                failed_row(other.candidate, other.batch_size, "measure", exc, rounds),
                            )
                    advance(planned, f"round {round_index + 1}/{plan.rounds}: {unit.candidate.label} failed")
                    continue
                after = monitor.sample(unit.worker.pid)
                unit.rounds_ms.append(calls.times_ms)
                unit.device_ms += calls.device_ms
                ticks = LoadMonitor.others(before, after)
                if ticks is not None:
                    unit.ticks.append(ticks)
                if settings.pause_ms is not None:
                    time.sleep(pause_s)
                else:  # until the worker's pool has gone quiet, so the next slice meets no spinning neighbour
                    waited = time.perf_counter()
                    quiet_after(unit.worker.pid, QUIET_LIMIT_S)
                    unit.waits_s.append(time.perf_counter() - waited)
                advance(
                    planned, f"round {round_index + 1}/{plan.rounds}: {unit.candidate.label} batch {unit.batch_size}"
                )
    return list(lost.values())


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


def _slice(unit: Unit, plan: Plan) -> float:
    return plan.slice_s if unit.fixed_slice_s is None else unit.fixed_slice_s


def _row(unit: Unit, opened: Opened, peak_rss_mb: float | None, directory: Path, noise: NoiseFloor) -> BenchRow:
    """The measured row, with what the worker said about its runner: load time, memory, compute precision."""
    row = measured_row(unit.candidate, unit.batch_size, unit.rounds_ms, noise, unit.ticks, unit.device_ms)
    artifact = directory / unit.candidate.artifact if unit.candidate.artifact else None
    return replace(
        row,
        compute_precision=opened.compute_precision,
        options={**unit.candidate.options, **opened.options},  # the knobs asked for, then what the runner says
        load_s=opened.load_s,
        first_call_ms=unit.first_call_ms,
        peak_rss_mb=peak_rss_mb,
        runner_rss_mb=None if peak_rss_mb is None else max(peak_rss_mb - opened.rss_before_open_mb, 0.0),
        artifact_bytes=artifact.stat().st_size if artifact is not None and artifact.exists() else None,
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


def _load_record(
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


def bench_text(report: BenchReport) -> str:
    """The terminal tables (rows, then one line per runner), a busy machine, failed rows, the threading mode and
    the stability rule said once."""
    text = render_table(*bench_table(report.results), title="bench (milliseconds per batch)")
    text += "\n" + render_table(*runner_table(report.results), title="runners")
    note = report.load.note()
    text += f"\nWARNING: {note}" if note else ""
    text += "".join(f"\nFAILED: {f.label} ({f.stage}): {f.reason}" for f in report.failed)
    return text + f"\nnote: {threading_note(report.settings)}\nnote: {report.noise.rule}"


def threading_note(settings: dict[str, Any]) -> str:
    """Which threading the rows were measured in (``settings.isolation`` of a bench.json), in one sentence."""
    isolation = settings.get("isolation") or {}
    pause = isolation.get("pause_ms")
    if isolation.get("pause") == "until quiet" and isinstance(pause, (int, float)):
        pause_text = (
            f"; after each slice bench waited until the runner's pool went quiet (median {pause:.0f} ms, longest "
            f"{isolation.get('pause_max_ms') or 0:.0f} ms) before the next slice"
        )
    elif isinstance(pause, (int, float)) and pause > 0:
        pause_text = f"; a {pause:.0f} ms pause after each slice (--pause-ms)"
    else:
        pause_text = ""
    if isolation.get("mode") == PASSIVE:
        return (
            "measured with idle thread pools put to sleep (--passive-pools: OMP_WAIT_POLICY=PASSIVE, ONNX Runtime "
            "allow_spinning=0), not each library's default threading; users who keep the defaults may see other "
            "figures" + pause_text
        )
    return f"measured in each library's default threading ({isolation.get('threads', 'library defaults')})" + pause_text


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
    data = report.to_dict()
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


def read_bench(data: dict[str, Any]) -> tuple[list[BenchRow], NoiseFloor | None, LoadRecord | None]:
    """Typed rows, noise floor and load record of a ``bench.json`` as read (for the report)."""
    rows = [BenchRow.from_dict(r) for r in data.get("results", [])]
    noise = NoiseFloor(**data["noise"]) if isinstance(data.get("noise"), dict) else None
    load = None
    if isinstance(data.get("load"), dict):
        raw = data["load"]
        load = LoadRecord(
            **{
                **raw,
                "load_average_before": _triple(raw.get("load_average_before")),
                "load_average_after": _triple(raw.get("load_average_after")),
            }
        )
    return rows, noise, load


def _triple(value: Any) -> tuple[float, float, float] | None:
    return tuple(value) if isinstance(value, list) and len(value) == 3 else None  # type: ignore[return-value]
