"""How bench measures: open every runner in a worker of its own, warm it up, measure interleaved rounds, make rows.

- **As users run it.** Each runner lives in its own worker process (:mod:`..worker`), so thread pools of
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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ...backends.base import Candidate, OptionValue, SkipRecord
from ...backends.registry import BUILTIN, Discovery, backend_names, backends, discover_runners, get_backend
from ...errors import BadInputError
from ...ui import progress as ui_progress
from ..machine import QUIET_WINDOW_S, LoadMonitor, load_average, machine_record, quiet_after
from ..settings import BenchSettings
from ..timing import round_spread, spread_of
from ..worker import NOISE_PROBE, QUIET_ENV, SPINNING, Opened, RunnerProcess, WorkerError, WorkerSpec
from .judge import add_speedups, bench_warnings, load_record, measured_row
from .plan import Plan, Unit, plan_rounds
from .records import (
    LIBRARY_DEFAULTS,
    NOISE_PROBE_ROUNDS,
    PASSIVE,
    BenchReport,
    BenchRow,
    BenchRun,
    FailedRow,
    Isolation,
    NoiseFloor,
)
from .render import write_outputs

NOISE_PROBE_SLICE_S = 0.1
CLOSE_RESERVE_S = 3.0  # kept from the budget for closing workers, statistics and the output files
# The plan fills this share of the time left: calls measured later run a little slower than the warm-up's
# (a ResNeXt-50 matrix on a 2-core AVX2 EPYC took 9% longer than planned).
PLAN_SHARE = 0.85
# A reply is awaited for the work it was asked for (a slice, a warm-up) plus a margin: this share of --budget,
# at least REPLY_MARGIN_MIN_S, and at least the planned time again (a call twice as slow as planned is not a hang).
REPLY_MARGIN_SHARE = 0.1
REPLY_MARGIN_MIN_S = 2.0
# Opening compiles the model (OpenVINO's INT8 ResNeXt-50 takes seconds, several times that on a loaded machine) and
# is not timed: a runner still opening after this long is hung, not slow, whatever is left of --budget.
OPEN_TIMEOUT_MIN_S = 60.0
# Without --pause-ms, bench waits after each slice until the worker is quiet (machine.quiet_after), at most
# QUIET_LIMIT_S; the plan expects PAUSE_FACTOR x the wait measured after the worker's warm-up.
PAUSE_FACTOR = 2.0
QUIET_LIMIT_S = 1.0
NOISE_WORKLOAD = "4 conv3x3 32ch 28x28 in ONNX Runtime"
INPUT_NOTE = "seeded N(0,1) float32 NCHW, made once per batch size in each worker and not timed"
SPEEDUP_NOTE = "median of torch fp32 on the same device at the same batch size / this row's median"

OpenedRunner = tuple[Candidate, RunnerProcess, Opened]


def reply_margin(settings: BenchSettings) -> float:
    """How much longer than planned a worker's reply is awaited: 10% of ``--budget``, at least 2 s."""
    return max(REPLY_MARGIN_MIN_S, REPLY_MARGIN_SHARE * settings.budget_s)


def reply_timeout(planned_s: float, settings: BenchSettings) -> float:
    """The longest wait for a reply to work planned to take ``planned_s``: that plus the margin, or twice it."""
    return planned_s + max(reply_margin(settings), planned_s)


@dataclass
class _Run:
    """One bench run in progress: what it found, its workers, and the rows skipped or failed so far."""

    settings: BenchSettings
    found: Discovery
    started: float
    skipped: list[SkipRecord]
    workers: list[tuple[Candidate, RunnerProcess]] = field(default_factory=list)
    opened: list[OpenedRunner] = field(default_factory=list)
    failed: list[FailedRow] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return self.found.manifest.directory

    @property
    def image_size(self) -> int:
        return self.found.source.preprocessing.image_size

    def left_s(self) -> float:
        """What is left of the budget, or the reply margin where less is."""
        return max(reply_margin(self.settings), self.settings.budget_s - (time.monotonic() - self.started))

    def open_s(self) -> float:
        """How long a runner may take to open: what is left of the budget, at least :data:`OPEN_TIMEOUT_MIN_S`."""
        return max(OPEN_TIMEOUT_MIN_S, self.left_s())

    def nothing_to_bench(self) -> BadInputError:
        reasons = "; ".join(f"{s.label}: {s.reason}" for s in self.skipped)
        return BadInputError(
            f"nothing to benchmark in {self.directory} for backends {','.join(_backends_used(self.settings))} and "
            f"precisions {','.join(self.settings.precisions)}" + (f" ({reasons})" if reasons else "")
        )


@dataclass
class _Measured:
    """What the measuring phase leaves: the units that kept their workers, the noise control, plan and load."""

    units: list[Unit]
    control: Unit | None
    plan: Plan
    noise: NoiseFloor
    setup_s: float
    monitored: bool
    load_before: tuple[float, float, float] | None
    load_after: tuple[float, float, float] | None


def run_bench(
    directory: str | Path,
    settings: BenchSettings | None = None,
    json_path: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> BenchReport:
    """Measure every runner in DIR at every batch size; write bench.json, .csv, .md and .png there.

    Returns the report; the caller shows its table (:func:`.bench_text`), ``log`` gets the rest. The
    runners' workers are spawned processes, so a script that calls this must do so under
    ``if __name__ == "__main__":`` (multiprocessing re-imports the main module in each worker).
    """
    report = measure_bench(directory, settings, log, progress)
    write_outputs(report, Path(directory), json_path)
    for line in report.warnings:
        log(f"warning: {line}")
    for entry in report.skipped:
        log(f"skipped {entry.label}: {entry.reason}")
    for failed in report.failed:
        log(f"FAILED {failed.label} ({failed.stage}): {failed.reason}")
    return report


def measure_bench(
    directory: str | Path,
    settings: BenchSettings | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> BenchReport:
    """Measure every runner in DIR at every batch size, without writing anything (:func:`.run_bench` writes).

    The runners' workers are spawned processes, so a script that calls this must do so under
    ``if __name__ == "__main__":`` (multiprocessing re-imports the main module in each worker).
    """
    settings = settings or BenchSettings()
    run = _discover(directory, settings, time.monotonic())
    probe = _start_workers(run, log)
    peaks: dict[int, float | None] = {}
    try:
        _open_runners(run)
        measured = _measure_opened(run, probe, log, progress)
    finally:
        probe.kill()
        for _, worker, _ in run.opened:
            peaks[id(worker)] = worker.close(timeout_s=reply_margin(settings))
        for _, worker in run.workers:
            worker.kill()
    return _report(run, measured, peaks)


def _backends_used(settings: BenchSettings) -> tuple[str, ...]:
    return settings.backends or backend_names()


def _backend_options(settings: BenchSettings) -> dict[str, dict[str, OptionValue]]:
    """The backends' knobs as given; with ``--passive-pools``, no spinning for every backend with that knob."""
    options = {name: dict(values) for name, values in settings.backend_options.items()}
    if settings.passive_pools:
        for name in _backends_used(settings):
            if any(option.name == SPINNING for option in get_backend(name).options):
                options.setdefault(name, {})[SPINNING] = False
    return options


def _discover(directory: str | Path, settings: BenchSettings, started: float) -> _Run:
    """Every runner DIR offers here; none runnable is bad input saying why each was skipped."""
    found = discover_runners(
        directory,
        _backends_used(settings),
        settings.precisions,
        settings.threads,
        settings.backends or (),
        _backend_options(settings),
    )
    run = _Run(settings, found, started, [c.skip_record() for c in found.skipped])
    if not found.runnable:
        raise run.nothing_to_bench()
    return run


def _start_workers(run: _Run, log: Callable[[str], None]) -> RunnerProcess:
    """A worker per runnable candidate (``run.workers``), and the noise probe's, which is returned."""
    settings = run.settings
    extra = tuple(b for name, b in backends().items() if name not in BUILTIN)

    def spec(candidate: Candidate) -> WorkerSpec:
        return WorkerSpec(
            str(run.directory),
            candidate.backend,
            candidate.precision,
            candidate.device,
            candidate.artifact,
            settings.threads,
            run.image_size,
            candidate.options,
            extra,
            passive=settings.passive_pools,
        )

    probe_spec = WorkerSpec("", NOISE_PROBE, "fp32", "cpu", None, settings.threads, 1, passive=settings.passive_pools)
    log(f"starting {len(run.found.runnable)} runner process(es) and a noise probe")
    run.workers = [(c, RunnerProcess(spec(c))) for c in run.found.runnable]
    probe = RunnerProcess(probe_spec)
    for candidate, worker in run.workers:
        log(f"worker {worker.pid}: {candidate.label}")
    log(f"worker {probe.pid}: noise probe")
    return probe


def _open_runners(run: _Run) -> None:
    """Open each worker's runner, one at a time; one that cannot is skipped, a lost worker's rows fail."""
    with ui_progress(len(run.workers), "opening runners", unit="runners") as advance:
        for candidate, worker in run.workers:
            try:
                run.opened.append((candidate, worker, worker.open(timeout_s=run.open_s())))
            except WorkerError as exc:
                worker.kill()
                if exc.lost:
                    run.failed.append(failed_row(candidate, None, "open", exc))
                else:
                    reason = str(exc) if exc.kind == "unavailable" else f"cannot be loaded: {exc}"
                    run.skipped.append(candidate.skip_record(reason))
            advance(1, f"opened {candidate.label}")
    if not run.opened and not run.failed:
        raise run.nothing_to_bench()


def _measure_opened(run: _Run, probe: RunnerProcess, log: Callable[[str], None], progress: bool) -> _Measured:
    """The noise probe, the warm-up, the plan, then the interleaved rounds; units whose worker was lost are out."""
    settings = run.settings
    start_spread, control, workload, call_spread = measure_noise(probe, settings, open_s=run.open_s())
    monitor = LoadMonitor()
    before = load_average()
    units = _warm_up(run.opened, settings, run.skipped, run.failed, progress, run.image_size)
    if not units and not run.failed:
        raise run.nothing_to_bench()
    pause_s = (settings.pause_ms or 0.0) / 1e3  # a fixed pause (--pause-ms), else wait until quiet
    timed = [*units, *([control] if control else [])]
    for unit in timed:
        if settings.pause_ms is None:
            unit.pause_s = min(PAUSE_FACTOR * (unit.quiet_s or 0.0), QUIET_LIMIT_S) + QUIET_WINDOW_S
    setup_s = time.monotonic() - run.started
    control_s = NOISE_PROBE_SLICE_S + pause_s + control.pause_s if control is not None else 0.0
    available = (settings.budget_s - setup_s - CLOSE_RESERVE_S) * PLAN_SHARE
    plan = plan_rounds(units, settings, available, control_s, pause_s)
    if units:
        wait = f"a {pause_s * 1e3:.0f} ms pause" if settings.pause_ms is not None else "a wait until quiet"
        log(
            f"measuring {len(units)} row(s) in {plan.rounds} interleaved rounds of {plan.slice_s * 1e3:.0f} ms "
            f"slices (at least {units[0].min_calls} call(s) each), {wait} after each: about {plan.seconds:.0f} s"
        )
    lost = _measure(timed if units else [], plan, pause_s, monitor, progress, settings)
    run.failed += [f for unit, f in lost if unit is not control]
    gone = {id(unit) for unit, _ in lost}
    run_spread = round_spread(control.rounds_ms) if control and id(control) not in gone else None
    noise = NoiseFloor.measured(start_spread, run_spread, plan.rounds, workload, call_spread)
    kept = [u for u in units if id(u) not in gone]
    return _Measured(kept, control, plan, noise, setup_s, monitor.available, before, load_average())


def _report(run: _Run, measured: _Measured, peaks: dict[int, float | None]) -> BenchReport:
    """The rows of the units that kept their workers, judged; the run's record; the report of it all."""
    settings, units = run.settings, measured.units
    opened = {id(worker): info for _, worker, info in run.opened}
    rows = [_row(u, opened[id(u.worker)], peaks.get(id(u.worker)), run.directory, measured.noise) for u in units]
    mode = PASSIVE if settings.passive_pools else LIBRARY_DEFAULTS
    for row in rows:
        row.options["pools"] = mode
    add_speedups(rows, {id(row): unit.rounds_ms for row, unit in zip(rows, units, strict=True)})
    load = load_record(units, rows, measured.monitored, measured.load_before, measured.load_after)
    warnings = bench_warnings(rows, measured.noise, load)
    if not measured.plan.fits:
        warnings.insert(0, _budget_warning(settings, measured))
    short = [r for r in rows if r.iterations < settings.min_iterations]
    if short:
        warnings.append(
            f"{len(short)} row(s) have fewer than --min-iterations {settings.min_iterations} calls to fit --budget"
        )
    timed = [*units, *([measured.control] if measured.control else [])]
    return BenchReport(
        machine=machine_record(settings.threads),
        settings=_run_record(run, measured, _isolation(settings, timed, measured.control)),
        noise=measured.noise,
        load=load,
        results=rows,
        warnings=warnings,
        skipped=run.skipped,
        failed=run.failed,
        artifacts=run.found.hashes([c for c, *_ in run.opened]),
    )


def _budget_warning(settings: BenchSettings, measured: _Measured) -> str:
    return (
        f"--budget {settings.budget_s:g} s is too short: opening and warming up the runners took "
        f"{measured.setup_s:.0f} s, then {measured.plan.rounds} rounds of one call per row took about "
        f"{measured.plan.seconds:.0f} s more; give a larger --budget, or fewer backends, precisions or batch sizes"
    )


def _run_record(run: _Run, measured: _Measured, isolation: Isolation) -> BenchRun:
    """The settings as given (``rounds`` as measured), the plan made of them, and what the run took."""
    settings, plan = run.settings, measured.plan
    return BenchRun(
        backends=_backends_used(settings),
        precisions=settings.precisions,
        batch_sizes=settings.batch_sizes,
        warmup_ms=settings.warmup_ms,
        duration_s=settings.duration_s,
        min_iterations=settings.min_iterations,
        threads=settings.threads,
        backend_options={name: dict(values) for name, values in settings.backend_options.items()},
        budget_s=settings.budget_s,
        rounds=plan.rounds,
        min_rounds=settings.min_rounds,
        pause_ms=settings.pause_ms,
        passive_pools=settings.passive_pools,
        allow_spinning=not settings.passive_pools,
        slice_s=plan.slice_s,
        setup_s=measured.setup_s,
        planned_s=plan.seconds,
        plan_fits=plan.fits,
        wall_s=time.monotonic() - run.started,
        input=INPUT_NOTE,
        speedup=SPEEDUP_NOTE,
        isolation=isolation,
        stability=measured.noise.rule,
    )


def _isolation(settings: BenchSettings, units: Sequence[Unit], control: Unit | None) -> Isolation:
    """How the runners were kept apart and in which threading they ran, with the waits measured by runner."""
    from ...environment import usable_cpus

    def ms(values: Sequence[float]) -> float | None:
        return round(float(np.median(values)) * 1e3, 1) if values else None

    by_runner: dict[str, list[Unit]] = {}
    for unit in units:
        by_runner.setdefault(NOISE_PROBE if unit is control else unit.candidate.label, []).append(unit)
    waits = [w for unit in units for w in unit.waits_s]
    until_quiet = settings.pause_ms is None
    return Isolation(
        process_per_runner=True,
        mode=PASSIVE if settings.passive_pools else LIBRARY_DEFAULTS,
        environment=dict(QUIET_ENV) if settings.passive_pools else {},
        onnxruntime_allow_spinning=not settings.passive_pools,
        threads=f"--threads {settings.threads}"
        if settings.threads
        else f"each library's default, capped at the {usable_cpus()} usable CPUs",
        pause="until quiet" if until_quiet else "fixed (--pause-ms)",
        pause_ms=ms(waits) if until_quiet else settings.pause_ms,
        pause_max_ms=round(max(waits) * 1e3, 1) if until_quiet and waits else settings.pause_ms,
        quiet_rule=f"after each slice, bench waits until none of the worker's threads has been running or "
        f"runnable (state R in /proc/PID/task/*/stat) for {QUIET_WINDOW_S * 1e3:g} ms, at most {QUIET_LIMIT_S:g} s",
        quiet_after_warm_up_ms={
            label: max((round(u.quiet_s * 1e3, 1) for u in group if u.quiet_s is not None), default=None)
            for label, group in by_runner.items()
        },
        wait_after_slice_ms={label: ms([w for u in group for w in u.waits_s]) for label, group in by_runner.items()},
        reply_margin_s=reply_margin(settings),
    )


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


def measure_noise(
    probe: RunnerProcess, settings: BenchSettings | None = None, open_s: float | None = None
) -> tuple[float | None, Unit | None, str, float | None]:
    """Run the fixed workload in quick rounds: its round spread, and the unit that keeps it running as a control.

    The control takes one slice in every round of the measurement (see :class:`.NoiseFloor`); None,
    with no spread, where the probe cannot run (or is lost: ``open_s`` bounds its opening, each slice
    is bounded as the rows' are).
    """
    settings = settings or BenchSettings()
    workload = NOISE_WORKLOAD
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
