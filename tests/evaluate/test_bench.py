"""bench: real ONNX Runtime and torch runners on the tiny ResNeXt, short durations; the scheduler on its own."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_artifacts import copy_dir

from resnext_deploy.backends.base import Candidate, Runner
from resnext_deploy.cli import main
from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate.bench import (
    CSV_FIELDS,
    ROW_FIELDS,
    Unit,
    add_speedups,
    bench_warnings,
    measure,
    parse_batch_sizes,
    parse_list,
)

SHORT = ["--duration", "0.2", "--warmup-ms", "10", "--min-iterations", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def art(low_precision_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_dir(low_precision_template, tmp_path_factory.mktemp("bench") / "tiny")


def test_bench_measures_every_runner_and_writes_json_csv_md_png(art: Path, tmp_path: Path) -> None:
    extra = tmp_path / "copy.json"
    assert main(["bench", "--dir", str(art), "--batch-sizes", "1,2", "--json", str(extra), *SHORT]) == 0
    data = json.loads((art / "bench.json").read_text())
    assert json.loads(extra.read_text())["results"] == data["results"]
    rows = data["results"]
    runners = {(r["backend"], r["precision"], r["device"]) for r in rows}
    assert {("torch", "fp32", "cpu"), ("onnxruntime", "fp32", "cpu")} <= runners
    assert {("onnxruntime", "fp16", "cpu"), ("onnxruntime", "int8", "cpu")} <= runners
    assert len(rows) == len(runners) * 2
    for row in rows:
        assert list(row) == list(ROW_FIELDS)
        assert row["iterations"] >= 3
        assert row["iterations"] * row["mean_ms"] >= 200 * 0.99
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["throughput_ips"] == pytest.approx(row["batch_size"] * 1e3 / row["mean_ms"])
        assert row["cv"] == pytest.approx(row["std_ms"] / row["mean_ms"])
        assert row["device_median_ms"] is None  # CPU: no device timer
        torch = next(r for r in rows if r["backend"] == "torch" and r["batch_size"] == row["batch_size"])
        assert row["speedup_vs_reference"] == pytest.approx(torch["median_ms"] / row["median_ms"])
    assert data["settings"]["rounds"] >= 1
    assert all(len(row["round_medians_ms"]) == data["settings"]["rounds"] for row in rows)
    machine = data["machine"]
    assert machine["cpu"] and machine["cpu cores"] >= 1 and machine["threads requested"] == 1
    assert machine["torch threads"] == 1 and machine["onnxruntime"]
    with open(art / "bench.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(CSV_FIELDS) and len(table) == len(rows)
    assert float(table[0]["median_ms"]) == pytest.approx(rows[0]["median_ms"])
    markdown = (art / "bench.md").read_text()
    assert markdown.count("\n| ") == len(rows) + 2 and f"{rows[0]['median_ms']:.3f}" in markdown
    assert (art / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backend_and_precision_filters(art: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    args = ["bench", "--dir", str(art), "--backends", "onnxruntime", "--precisions", "int8", "--batch-sizes", "1"]
    assert main([*args, "--json", str(out), *SHORT]) == 0
    [row] = json.loads(out.read_text())["results"]
    assert (row["backend"], row["precision"], row["artifact"]) == ("onnxruntime", "int8", "model.int8.onnx")
    assert row["speedup_vs_reference"] is None  # torch was not measured


@pytest.mark.parametrize(
    "flags,code,start",
    [
        (["--backends", "torch,tensorflow"], 2, "error: Invalid value for '--backends'"),
        (["--precisions", "fp8"], 2, "error: Invalid value for '--precisions'"),
        (["--batch-sizes", "0,8"], 3, "error: --batch-sizes"),
        (["--batch-sizes", "one"], 3, "error: --batch-sizes"),
        (["--duration", "0"], 3, "error: --duration"),
        (["--min-iterations", "0"], 3, "error: --min-iterations"),
    ],
)
def test_bad_values_are_one_line_errors(
    art: Path, flags: list[str], code: int, start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown choice is a usage error (2); a value out of range is bad input (3)."""
    assert main(["bench", "--dir", str(art), *flags]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith(start) and "\n" not in err


def test_parsers() -> None:
    assert parse_batch_sizes("32, 1,8,8") == (1, 8, 32)
    assert parse_list("ONNXRuntime,torch", ("torch", "onnxruntime"), "--backends") == ("onnxruntime", "torch")
    with pytest.raises(BadInputError):
        parse_list("", ("torch",), "--backends")


class SleepingRunner(Runner):
    """A stand-in runner that records the order of calls: the scheduler's contract, not a backend result."""

    backend = "torch"

    def __init__(self, name: str, seconds: float, calls: list[str]) -> None:
        self.artifact = name
        self.seconds = seconds
        self.calls = calls

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(self.artifact)
        time.sleep(self.seconds)
        return batch


def _units(specs: list[tuple[str, float]], calls: list[str]) -> list[Unit]:
    x = np.zeros((1, 1), dtype=np.float32)
    return [Unit(Candidate("torch", "fp32", "cpu", name), SleepingRunner(name, s, calls), 1, x) for name, s in specs]


def test_measure_interleaves_runners_in_rounds_contract() -> None:
    calls: list[str] = []
    units = _units([("a", 0.001), ("b", 0.001), ("c", 0.001)], calls)
    rounds = measure(units, warmup_s=0.0, duration_s=0.06, min_iterations=2)
    warmup, timed = calls[:3], calls[3:]
    assert warmup == ["a", "b", "c"]  # warm-up runs at least once each, before anything is timed
    slices = [name for i, name in enumerate(timed) if i == 0 or timed[i - 1] != name]
    assert len(slices) == rounds * 3 and rounds >= 2  # fewer than ROUNDS when calls overshoot a slice
    for start in range(0, len(slices), 3):  # every round holds one slice of every unit
        assert sorted(slices[start : start + 3]) == ["a", "b", "c"]
    assert slices[:3] != slices[3:6]  # rounds rotate who goes first
    for unit in units:
        assert sum(unit.times_ms) >= 60 and len(unit.times_ms) >= 2


def test_measure_meets_min_iterations_for_slow_runners_contract() -> None:
    calls: list[str] = []
    slow, fast = _units([("slow", 0.02), ("fast", 0.0005)], calls)
    measure([slow, fast], warmup_s=0.0, duration_s=0.01, min_iterations=5)
    assert len(slow.times_ms) >= 5 and all(t >= 20 for t in slow.times_ms)
    assert len(fast.times_ms) >= 5


def _row(backend: str, precision: str, device: str, median: float, spread: float = 0.01, batch: int = 8) -> dict:
    return {
        "backend": backend,
        "precision": precision,
        "device": device,
        "batch_size": batch,
        "median_ms": median,
        "round_spread": spread,
    }


def test_speedups_compare_with_torch_fp32_on_the_same_device() -> None:
    rows = [
        _row("torch", "fp32", "cpu", 10.0),
        _row("torch", "fp32", "cuda", 2.0),
        _row("onnxruntime", "fp32", "cpu", 5.0),
        _row("onnxruntime", "fp16", "tensorrt", 0.5),
        _row("tensorrt", "int8", "cuda", 0.25),
        _row("onnxruntime", "fp32", "cpu", 4.0, batch=1),
    ]
    add_speedups(rows)
    assert [r["speedup_vs_reference"] for r in rows] == [1.0, 1.0, 2.0, 4.0, 8.0, None]


def test_warnings_for_unstable_rows_and_int8_not_faster_than_fp16() -> None:
    rows = [
        _row("tensorrt", "fp16", "cuda", 1.0),
        _row("tensorrt", "int8", "cuda", 1.1),
        _row("onnxruntime", "fp16", "cpu", 5.0),
        _row("onnxruntime", "int8", "cpu", 3.0, spread=0.4),
    ]
    warnings = bench_warnings(rows)
    assert len(warnings) == 3
    assert warnings[0].startswith("1 row(s) unstable: round spread over 10%")
    assert "onnxruntime-cpu:int8 batch 8: unstable" in warnings[1] and "40.0%" in warnings[1]
    assert "tensorrt-cuda batch 8: INT8" in warnings[2] and "grouped convolutions" in warnings[2]


def test_speedup_interval_comes_from_the_per_round_ratios() -> None:
    reference = {**_row("torch", "fp32", "cpu", 10.0), "round_medians_ms": [10.0] * 10}
    steady = {**_row("onnxruntime", "fp32", "cpu", 5.0), "round_medians_ms": [5.0, 5.1, 4.9, 5.0] * 2 + [5.0, 5.0]}
    jumpy = {**_row("onnxruntime", "int8", "cpu", 2.0), "round_medians_ms": [1.0, 10.0] * 5}
    add_speedups([reference, steady, jumpy])
    assert steady["speedup_vs_reference"] == 2.0 and steady["speedup_reliable"]
    assert steady["speedup_low"] == pytest.approx(10 / 5.1) and steady["speedup_high"] == pytest.approx(10 / 4.9)
    assert jumpy["speedup_vs_reference"] == 5.0 and not jumpy["speedup_reliable"]
    assert jumpy["speedup_low"] == pytest.approx(1.0) and jumpy["speedup_high"] == pytest.approx(10.0)
