"""The report's old reader of ``bench.json``, kept only until ``report/`` reads :func:`.read_bench_report`.

Lenient on purpose, as it always was: the report checks the fields afterwards (``report.records.check_record``).
Delete this module when ``report.BenchSection`` goes.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .records import BenchRow, LoadRecord, NoiseFloor


def read_bench(data: dict[str, Any]) -> tuple[list[BenchRow], NoiseFloor | None, LoadRecord | None]:
    """Typed rows, noise floor and load record of a ``bench.json`` as read, unchecked (for the report)."""
    known = {f.name for f in fields(BenchRow)}
    rows = [BenchRow(**{k: v for k, v in row.items() if k in known}) for row in data.get("results", [])]
    noise = NoiseFloor(**data["noise"]) if isinstance(data.get("noise"), dict) else None
    load = None
    if isinstance(data.get("load"), dict):
        raw = data["load"]
        averages = {key: _triple(raw.get(key)) for key in ("load_average_before", "load_average_after")}
        load = LoadRecord(**{**raw, **averages})
    return rows, noise, load


def _triple(value: Any) -> tuple[float, float, float] | None:
    return tuple(value) if isinstance(value, list) and len(value) == 3 else None  # type: ignore[return-value]
