"""bench: real runners (torch, ONNX Runtime, OpenVINO) on the tiny ResNeXt, each in its own worker process."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import copy_dir

from resnext_deploy.backends.base import Candidate
from resnext_deploy.cli import main
from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate import bench as bench_module
from resnext_deploy.evaluate.bench import (
    CSV_FIELDS,
    ROW_FIELDS,
    BenchRow,
    Unit,
    add_speedups,
    plan_rounds,
    read_bench_report,
)
from resnext_deploy.evaluate.bench import measure as measure_module
from resnext_deploy.evaluate.settings import BenchSettings, parse_batch_sizes, parse_list
from resnext_deploy.evaluate.timing import median_interval, ratio_interval
from resnext_deploy.serde import decode, encode

SHORT = ["--duration", "0.3", "--warmup-ms", "10", "--min-iterations", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def art(low_precision_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_dir(low_precision_template, tmp_path_factory.mktemp("bench") / "tiny")


def _check_statistics(row: dict) -> None:
    """What every row must satisfy: its numbers agree with each other."""
    assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["throughput_ips"] == pytest.approx(row["batch_size"] * 1e3 / row["median_ms"])  # from the median
    assert row["cv"] == pytest.approx(row["std_ms"] / row["mean_ms"])
    assert row["median_low_ms"] <= row["median_ms"] <= row["median_high_ms"]
    if row["speedup_vs_reference"] is not None:
        assert row["speedup_low"] <= row["speedup_vs_reference"] <= row["speedup_high"]


@pytest.mark.slow  # bench's worker processes
def test_bench_measures_every_runner_in_its_own_process_and_writes_json_csv_md_png(
    art: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "copy.json"
    assert main(["bench", "--dir", str(art), "--batch-sizes", "1,2", "--json", str(extra), *SHORT]) == 0
    out = capsys.readouterr().out
    data = json.loads((art / "bench.json").read_text())
    assert json.loads(extra.read_text())["results"] == data["results"]
    rows = data["results"]
    runners = {(r["backend"], r["precision"], r["device"]) for r in rows}
    assert {("torch", "fp32", "cpu"), ("onnxruntime", "fp32", "cpu")} <= runners
    assert {("onnxruntime", "fp16", "cpu"), ("onnxruntime", "int8", "cpu"), ("openvino", "int8", "cpu")} <= runners
    assert len(rows) == len(runners) * 2
    torch_threads = set()
    for row in rows:
        assert list(row) == list(ROW_FIELDS)
        _check_statistics(row)
        assert row["iterations"] >= 3 and row["rounds"] == data["settings"]["rounds"] == 10
        assert len(row["round_medians_ms"]) == row["rounds"]
        assert row["device_median_ms"] is None  # CPU: no device timer
        torch = next(r for r in rows if r["backend"] == "torch" and r["batch_size"] == row["batch_size"])
        assert row["speedup_vs_reference"] == pytest.approx(torch["median_ms"] / row["median_ms"])
        assert row["load_s"] > 0 and row["first_call_ms"] > 0 and row["peak_rss_mb"] > 50
        if row["artifact"]:
            assert row["artifact_bytes"] == (art / row["artifact"]).stat().st_size
        if row["backend"] == "torch":
            torch_threads.add(row["options"]["threads"])
    assert torch_threads == {1}
    openvino_fp16 = next(r for r in rows if (r["backend"], r["precision"]) == ("openvino", "fp16"))
    assert openvino_fp16["compute_precision"] in ("f32", "f16")  # what OpenVINO reports, not the file's name
    settings = data["settings"]
    isolation = settings["isolation"]
    assert isolation["mode"] == "library defaults" and isolation["environment"] == {}  # what users run
    assert isolation["onnxruntime_allow_spinning"] and settings["allow_spinning"]
    assert isolation["pause"] == "until quiet" and 0 < isolation["pause_ms"] <= isolation["pause_max_ms"] <= 1000
    labels = {f"{r['backend']}-{r['device']}:{r['precision']}" for r in rows}
    assert {label.split(" (")[0] for label in isolation["wait_after_slice_ms"]} == labels | {"noise-probe"}
    assert settings["wall_s"] <= settings["budget_s"]
    ort = next(r for r in rows if r["backend"] == "onnxruntime")
    assert ort["options"]["allow_spinning"] is True and ort["options"]["pools"] == "library defaults"
    assert data["failed"] == []
    openvino_int8 = next(r for r in rows if (r["backend"], r["precision"]) == ("openvino", "int8"))
    # what OpenVINO ran, not "f32": i8 on VNNI/AMX CPUs, u8 on AVX2-only ones
    assert openvino_int8["compute_precision"].startswith(("i8 Convolution", "u8 Convolution"))
    assert data["noise"]["threshold"] >= bench_module.UNSTABLE_FLOOR and data["noise"]["rounds"] > 0
    assert data["load"]["slices"] == sum(r["rounds"] for r in rows)
    machine = data["machine"]
    assert machine["cpu"] and machine["cpu cores"] >= 1 and machine["threads requested"] == 1
    assert machine["onnxruntime"] and machine["openvino"] and machine["cpu flags"] != "unknown"
    with open(art / "bench.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(CSV_FIELDS) and len(table) == len(rows)
    assert float(table[0]["median_ms"]) == pytest.approx(rows[0]["median_ms"])
    markdown = (art / "bench.md").read_text()
    assert f"{rows[0]['median_ms']:.3f}" in markdown and "noise floor" in markdown
    assert (art / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bench (milliseconds per batch)" in out and "runners" in out and "noise floor" in out
    assert "measured in each library's default threading" in out and "default threading" in markdown


@pytest.mark.slow  # bench's worker processes
def test_passive_pools_are_recorded_in_every_row_and_said(art: Path, tmp_path: Path) -> None:
    directory = copy_dir(art, tmp_path / "d")
    args = ["bench", "--dir", str(directory), "--backends", "torch,onnxruntime", "--precisions", "fp32"]
    assert main([*args, "--batch-sizes", "1", "--passive-pools", "--pause-ms", "5", *SHORT]) == 0
    data = json.loads((directory / "bench.json").read_text())
    isolation = data["settings"]["isolation"]
    assert isolation["mode"] == "passive" and isolation["environment"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert (isolation["pause"], isolation["pause_ms"]) == ("fixed (--pause-ms)", 5.0)
    assert {r["options"]["pools"] for r in data["results"]} == {"passive"}
    ort = next(r for r in data["results"] if r["backend"] == "onnxruntime")
    assert ort["options"]["allow_spinning"] is False
    assert "--passive-pools" in (directory / "bench.md").read_text()


@pytest.mark.slow  # bench's worker processes
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
        (["--budget", "0"], 3, "error: --budget"),
        (["--budget", "nan"], 3, "error: --budget"),
        (["--pause-ms", "-1"], 3, "error: --pause-ms"),
        (["--rounds", "1"], 3, "error: --rounds"),
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


def _units(call_ms: list[float]) -> list[Unit]:
    return [Unit(Candidate("torch", "fp32", "cpu", None), None, 1, call_ms=c) for c in call_ms]  # type: ignore[arg-type]


def test_the_plan_fits_the_budget_by_shorter_slices_then_fewer_rounds() -> None:
    settings = BenchSettings(duration_s=3.0, rounds=10, min_rounds=5, min_iterations=10)
    fast = _units([1.0, 2.0])
    full = plan_rounds(fast, settings, available_s=100)
    assert (full.rounds, full.slice_s, full.fits) == (10, 0.3, True)
    shorter = plan_rounds(fast, settings, available_s=3.0)
    assert shorter.rounds == 10 and 0 < shorter.slice_s < 0.3 and shorter.seconds <= 3.0
    slow = _units([1000.0, 500.0])  # one call longer than any slice: 1.5 s a round
    calls = plan_rounds(slow, settings, available_s=16)  # 10 rounds of one call each: a call outlasts any slice
    assert (calls.rounds, calls.seconds, calls.fits) == (10, pytest.approx(15.0), True)
    fewer = plan_rounds(slow, settings, available_s=10)  # then fewer rounds, one call each
    assert fewer.rounds == 6 and fewer.slice_s == 0 and fewer.seconds == pytest.approx(9.0)
    assert all(u.min_calls == 1 for u in slow)
    short = plan_rounds(slow, settings, available_s=1)
    assert (short.rounds, short.fits) == (5, False) and short.seconds == pytest.approx(7.5)


def _row(backend: str, precision: str, device: str, median: float, rounds: list[float], batch: int = 8) -> BenchRow:
    return BenchRow(
        backend, precision, device, None, batch, len(rounds), len(rounds), median, median, median, median, median,
        median, median, 0.0, 0.0, median, median, 0.01, 0.05, False, 0.0, 0, False, batch * 1e3 / median,
        round_medians_ms=rounds,
    )  # fmt: skip


def test_speedups_compare_with_torch_fp32_on_the_same_device() -> None:
    rows = [
        _row("torch", "fp32", "cpu", 10.0, [10.0] * 4),
        _row("torch", "fp32", "cuda", 2.0, [2.0] * 4),
        _row("onnxruntime", "fp32", "cpu", 5.0, [5.0] * 4),
        _row("onnxruntime", "fp16", "tensorrt", 0.5, [0.5] * 4),
        _row("tensorrt", "int8", "cuda", 0.25, [0.25] * 4),
        _row("onnxruntime", "fp32", "cpu", 4.0, [4.0] * 4, batch=1),
    ]
    add_speedups(rows)
    assert [r.speedup_vs_reference for r in rows] == [1.0, 1.0, 2.0, 4.0, 8.0, None]


def test_speedup_intervals_contain_their_estimate_and_judge_reliability() -> None:
    reference = _row("torch", "fp32", "cpu", 10.0, [10.0] * 10)
    steady = _row("onnxruntime", "fp32", "cpu", 5.0, [5.0, 5.1, 4.9, 5.0] * 2 + [5.0, 5.0])
    jumpy = _row("onnxruntime", "int8", "cpu", 2.0, [1.0, 10.0] * 5)
    odd = _row("openvino", "int8", "cpu", 8.0, [1.0, 1.1, 0.9, 1.0] * 3)  # a median far from its rounds
    busy = _row("openvino", "fp32", "cpu", 5.0, [5.0] * 10)
    busy.disturbed = True
    add_speedups([reference, steady, jumpy, odd, busy])
    for row in (steady, jumpy, odd, busy):
        assert row.speedup_low <= row.speedup_vs_reference <= row.speedup_high
    assert steady.speedup_vs_reference == 2.0 and steady.speedup_reliable
    assert not jumpy.speedup_reliable and jumpy.speedup_high - jumpy.speedup_low > 1
    assert busy.speedup_reliable is False  # a narrow interval, but measured while others used the CPU


def test_bootstrap_intervals_contain_the_estimate_for_any_rounds() -> None:
    rounds = [[1.0, 1.1, 1.2], [2.0], [1.5, 1.4], [9.0, 9.5]]
    low, high = median_interval(rounds)
    assert low <= 1.45 <= high
    estimate, low, high = ratio_interval([[10.0]] * 4, rounds)
    assert low <= estimate <= high and estimate == pytest.approx(10 / 1.45)
    assert median_interval([[1.0]]) is None and ratio_interval([[1.0]], [[1.0]]) is None


@pytest.mark.slow  # bench's worker processes
def test_the_progress_bar_counts_planned_work_and_ends_with_it(
    monkeypatch: pytest.MonkeyPatch, art: Path, tmp_path: Path
) -> None:
    """The measuring bar's total is the plan; it is full only when the last slice has run."""
    bars: list[dict] = []

    import contextlib

    @contextlib.contextmanager
    def recording_progress(total: float, description: str, unit: str = "samples"):
        bar = {"total": total, "description": description, "done": []}
        bars.append(bar)
        yield lambda amount, text=None: bar["done"].append(amount)

    monkeypatch.setattr(measure_module, "ui_progress", recording_progress)
    settings = BenchSettings(
        backends=("torch", "onnxruntime"), precisions=("fp32",), batch_sizes=(1,), duration_s=0.2, warmup_ms=5
    )
    report = bench_module.run_bench(copy_dir(art, tmp_path / "d"), settings, log=lambda _m: None)
    measuring = next(b for b in bars if b["description"] == "measuring")
    assert len(measuring["done"]) == report.settings.rounds * (len(report.results) + 1)  # + the noise control
    assert sum(measuring["done"]) == pytest.approx(measuring["total"])
    assert sum(measuring["done"][:-1]) < measuring["total"]  # not full while a slice remains
    for bar in bars:
        assert sum(bar["done"]) == pytest.approx(bar["total"])


@pytest.mark.slow  # bench's worker processes
def test_bench_finishes_within_its_budget(art: Path, tmp_path: Path) -> None:
    """30 s per row asked for, 45 s for everything: slices shrink so that start-up plus the plan fit."""
    directory = copy_dir(art, tmp_path / "d")
    start = time.monotonic()
    assert main(["bench", "--dir", str(directory), "--budget", "45", "--duration", "30", "--threads", "1"]) == 0
    elapsed = time.monotonic() - start
    data = json.loads((directory / "bench.json").read_text())
    settings = data["settings"]
    assert settings["slice_s"] < 3.0  # the 30 s per row asked for was shortened
    if settings["plan_fits"]:  # start-up left room for at least the minimum plan (always, on an idle machine)
        assert settings["setup_s"] + settings["planned_s"] <= 45 - bench_module.CLOSE_RESERVE_S
        longest_call = max(r["max_ms"] for r in data["results"]) / 1e3
        overrun = settings["rounds"] * len(data["results"]) * longest_call  # a slice ends after its last call
        assert settings["wall_s"] <= 45 + overrun and elapsed < 45 + overrun + 15
    else:  # a machine so busy that starting the workers ate the budget: said, with the figures
        assert any(w.startswith("--budget 45 s is too short: opening and warming up") for w in data["warnings"])


@pytest.mark.slow  # bench's worker processes
def test_a_competing_cpu_load_is_reported_and_never_headlined(art: Path, tmp_path: Path) -> None:
    """Two busy loops (one per core here) run during bench: the machine is said busy, no ratio is headlined."""
    directory = copy_dir(art, tmp_path / "d")
    assert main(["verify", "--dir", str(directory), "--count", "8", "--backends", "torch,onnxruntime"]) == 0
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        args = ["--backends", "torch,onnxruntime", "--precisions", "fp32,int8", "--batch-sizes", "1"]
        assert main(["bench", "--dir", str(directory), *args, *SHORT]) == 0
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    data = json.loads((directory / "bench.json").read_text())
    assert data["load"]["busy"] and data["load"]["other_cpu"] > 0.1
    assert data["warnings"][0].startswith("the machine was busy")
    read = read_bench_report(directory / "bench.json")
    rows, load = read.results, read.load
    assert load.busy
    assert all(not r.speedup_reliable for r in rows if r.disturbed)
    from resnext_deploy.report import write_report

    write_report(directory, log=lambda _m: None)
    report = json.loads((directory / "report.json").read_text())
    cpu = next(item for item in report["summary"] if item["device"] == "CPU")
    disturbed = {(r.backend, r.precision, r.batch_size) for r in rows if r.disturbed}
    if cpu["best"]:
        assert (cpu["best"]["backend"], cpu["best"]["precision"], cpu["best"]["batch_size"]) not in disturbed
    markdown = (directory / "report.md").read_text()
    summary = markdown[markdown.index("## Summary") :]
    lines = summary.split("\n")
    assert lines[2].startswith("- Verdict:") and lines[3].startswith("- **the machine was busy")  # right after it


def test_rows_read_back_from_json_are_the_rows_written() -> None:
    row = _row("torch", "fp32", "cpu", 10.0, [10.0, 11.0])
    again = decode(BenchRow, json.loads(json.dumps(encode(row))))
    assert again == row and not math.isnan(again.median_ms)


def test_a_row_of_few_calls_per_round_is_allowed_its_single_calls_noise() -> None:
    noise = bench_module.NoiseFloor.measured(0.02, 0.03, 10, "test", call_spread=0.4)
    assert noise.threshold == pytest.approx(0.09)  # 3x the larger round spread
    assert noise.threshold_for(1) == pytest.approx(1.2)  # one call a round: 3x a single call's spread
    assert noise.threshold_for(100) == pytest.approx(0.12)  # 3x 0.4 / sqrt(100)
    assert noise.threshold_for(10_000) == pytest.approx(0.09)  # many calls: the round spread decides
