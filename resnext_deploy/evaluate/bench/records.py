"""What bench records: the typed rows, noise floor, load and settings of ``bench.json``, and its reader.

``bench.json`` is one :class:`BenchReport`, written by :func:`resnext_deploy.serde.encode` and read back by
:func:`read_bench_report` (``serde.decode``): the report, ``inspect`` and the tests read the same record
bench wrote, checked field by field. The field order of each record is the key order of the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...artifacts import now_iso, read_json
from ...backends.base import OptionValue, RunnerOptions, SkipRecord
from ...errors import BadInputError
from ...schemas import SCHEMA_VERSION
from ...serde import RecordError, decode
from ..machine import DISTURBED_CPU, MachineRecord
from ..timing import CONFIDENCE

__all__ = [
    "BENCH_CSV",
    "BENCH_JSON",
    "BENCH_MD",
    "BENCH_PNG",
    "BenchReport",
    "BenchRow",
    "BenchRun",
    "FailedRow",
    "Isolation",
    "LoadRecord",
    "MachineRecord",
    "NoiseFloor",
    "read_bench_report",
]

BENCH_JSON, BENCH_CSV, BENCH_MD, BENCH_PNG = "bench.json", "bench.csv", "bench.md", "bench.png"
# A row is unstable when its round spread exceeds max(UNSTABLE_FLOOR, NOISE_FACTOR x the noise probe's spread).
UNSTABLE_FLOOR = 0.05
NOISE_FACTOR = 3.0
# A speedup is reliable when its interval is no wider than this fraction of it, and neither row is unstable or
# disturbed.
RELIABLE_RATIO_WIDTH = 0.25
NOISE_PROBE_ROUNDS = 15
REFERENCE_KEY = ("torch", "fp32")
LIBRARY_DEFAULTS, PASSIVE = "library defaults", "passive"  # the thread-pool modes (Isolation.mode, options["pools"])


@dataclass
class BenchRow:
    """One runner at one batch size: what ``bench.json`` holds per row, and what the tables and report read.

    ``options`` are the backend's knobs asked for, then what the runner says it runs with (backend-specific,
    recorded as the runtime reports them; ``pools`` says the threading mode).
    """

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
    options: RunnerOptions = field(default_factory=dict)
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


@dataclass(frozen=True)
class Isolation:
    """How the runners were kept apart and in which threading they ran (each row's ``options["pools"]`` too).

    The waits are in milliseconds; ``quiet_after_warm_up_ms`` and ``wait_after_slice_ms`` are by runner label.
    """

    process_per_runner: bool
    mode: str  # "library defaults" or "passive"
    environment: dict[str, str]  # what the workers' environment was given (the passive mode's wait policy)
    onnxruntime_allow_spinning: bool
    threads: str
    pause: str  # "until quiet" or "fixed (--pause-ms)"
    pause_ms: float | None
    pause_max_ms: float | None
    quiet_rule: str
    quiet_after_warm_up_ms: dict[str, float | None]
    wait_after_slice_ms: dict[str, float | None]
    reply_margin_s: float


@dataclass(frozen=True)
class BenchRun:
    """How bench measured: the settings it was given, then the plan it made of them and what the run took.

    The first fields are :class:`~resnext_deploy.evaluate.settings.BenchSettings` as given (``backends``
    filled in, ``rounds`` the rounds measured); ``allow_spinning`` is the key files had before ``--passive-pools``.
    """

    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    warmup_ms: float
    duration_s: float
    min_iterations: int
    threads: int | None
    backend_options: dict[str, dict[str, OptionValue]]
    budget_s: float
    rounds: int
    min_rounds: int
    pause_ms: float | None
    passive_pools: bool
    allow_spinning: bool
    slice_s: float
    setup_s: float
    planned_s: float
    plan_fits: bool
    wall_s: float
    input: str
    speedup: str
    isolation: Isolation
    stability: str


@dataclass(kw_only=True)
class BenchReport:
    """What ``bench`` measured: ``bench.json`` as one record (``serde.encode`` writes it, :func:`read_bench_report`
    reads it)."""

    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=now_iso)
    machine: MachineRecord
    settings: BenchRun
    noise: NoiseFloor
    load: LoadRecord
    results: list[BenchRow]
    warnings: list[str]
    skipped: list[SkipRecord]
    failed: list[FailedRow] = field(default_factory=list)
    artifacts: dict[str, str]  # sha256 of each file measured

    def failure(self, directory: Path) -> str | None:
        """The one line that says which rows failed (the exit status's reason), or None when none did."""
        if not self.failed:
            return None
        rows = "; ".join(f"{f.label} ({f.stage}): {f.reason}" for f in self.failed)
        return (
            f"bench: {len(self.failed)} row(s) failed: {rows}; the {len(self.results)} measured row(s) are in "
            f"{Path(directory) / BENCH_JSON}"
        )


def read_bench_report(path: str | Path) -> BenchReport:
    """``bench.json`` as bench wrote it; a malformed or older file is one ``BadInputError`` naming the field."""
    path = Path(path)
    data: Any = read_json(path)
    again = f"run bench again with this version (or restore {path.name})"
    if not isinstance(data, dict):
        raise BadInputError(f"{path.name} is a JSON {type(data).__name__}, not an object; {again}")
    if data.get("schema_version") != SCHEMA_VERSION:
        version = str(data.get("schema_version"))[:40]
        raise BadInputError(f"{path.name}: schema_version {version} is not one this resnext-deploy reads ({again})")
    try:
        return decode(BenchReport, data)
    except RecordError as exc:
        raise BadInputError(f"{path.name}: {exc}; {again}") from None
