"""How much faster is each artifact? Latency and throughput of every runner, measured so the ratios can be trusted.

The package is cut along bench's jobs: :mod:`.records` (what ``bench.json`` holds, and its reader),
:mod:`.plan` (rounds and slices within the budget), :mod:`.measure` (open, warm up, measure, make rows),
:mod:`.judge` (statistics, speedups, load and warnings) and :mod:`.render` (tables, plot and the files).
This face exports what the rest of the tool uses.
"""

from __future__ import annotations

from .judge import add_speedups, bench_warnings, int8_note, measured_row
from .measure import CLOSE_RESERVE_S, measure_bench, reply_margin, reply_timeout, run_bench
from .plan import Plan, Unit, plan_rounds
from .records import (
    BENCH_CSV,
    BENCH_JSON,
    BENCH_MD,
    BENCH_PNG,
    UNSTABLE_FLOOR,
    BenchReport,
    BenchRow,
    BenchRun,
    FailedRow,
    Isolation,
    LoadRecord,
    MachineRecord,
    NoiseFloor,
    read_bench_report,
)
from .render import (
    CSV_FIELDS,
    ROW_FIELDS,
    bench_table,
    bench_text,
    format_ratio,
    format_speedup,
    runner_table,
    threading_note,
    write_outputs,
)

__all__ = [
    "BENCH_CSV",
    "BENCH_JSON",
    "BENCH_MD",
    "BENCH_PNG",
    "CLOSE_RESERVE_S",
    "CSV_FIELDS",
    "ROW_FIELDS",
    "UNSTABLE_FLOOR",
    "BenchReport",
    "BenchRow",
    "BenchRun",
    "FailedRow",
    "Isolation",
    "LoadRecord",
    "MachineRecord",
    "NoiseFloor",
    "Plan",
    "Unit",
    "add_speedups",
    "bench_table",
    "bench_text",
    "bench_warnings",
    "format_ratio",
    "format_speedup",
    "int8_note",
    "measure_bench",
    "measured_row",
    "plan_rounds",
    "read_bench_report",
    "reply_margin",
    "reply_timeout",
    "run_bench",
    "runner_table",
    "threading_note",
    "write_outputs",
]
