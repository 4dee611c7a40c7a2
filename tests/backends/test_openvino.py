"""OpenVINO: the demo's real FP32, FP16 and INT8 files verified and benched, its cache, and its failures.

The demo's artifacts are made here by the CLI (export, then the FP16 and INT8 ONNX files), exactly as
a user makes them. Skips where OpenVINO is not installed (the ``openvino`` extra), except the tests
of what happens when it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from resnext_deploy.artifacts import Manifest
from resnext_deploy.backends.base import Candidate
from resnext_deploy.backends.onnxruntime import BACKEND as ONNXRUNTIME
from resnext_deploy.backends.openvino import BACKEND as OPENVINO
from resnext_deploy.backends.registry import discover_runners
from resnext_deploy.cli import main
from resnext_deploy.evaluate.bench import (
    BenchRow,
    LoadRecord,
    NoiseFloor,
    bench_warnings,
    measured_row,
    run_bench,
)
from resnext_deploy.evaluate.settings import BenchSettings
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.parity import DEFAULT_TOLERANCES
from resnext_deploy.precision.int8 import WEIGHT_MAX

EXTRA = "pip install 'resnext-deploy[openvino]'"
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason=f"needs OpenVINO: {EXTRA}")


def quiet(_message: str) -> None:
    pass


def _bf16_here() -> bool:
    from resnext_deploy.backends.openvino import cpu_capabilities

    return "BF16" in cpu_capabilities()


@pytest.fixture(scope="module")
def demo(demo_export_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo export (conftest's) with its FP16 and INT8 files."""
    directory = Path(shutil.copytree(demo_export_template, tmp_path_factory.mktemp("ov-demo") / "demo"))
    for precision in ("--fp16", "--int8"):
        assert main(["build-trt", precision, "--onnx-only", "--dir", str(directory)]) == 0
    return directory


@pytest.fixture
def demo_copy(demo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo, tmp_path / "demo"))


@pytest.mark.slow  # the demo's FP16 and INT8 files, built once per module
@needs_openvino
def test_verify_passes_the_demos_openvino_candidates_at_the_usual_tolerances(demo_copy: Path) -> None:
    precisions = ("fp32", "fp16", "int8", "bf16") if _bf16_here() else ("fp32", "fp16", "int8")
    report = run_verify(demo_copy, count=200, log=quiet, precisions=precisions)
    results = {r.candidate.precision: r for r in report.results if r.candidate.backend == "openvino"}
    assert set(results) == set(precisions)
    for precision, result in results.items():
        assert result.passed, (precision, result.failures)
        assert result.tolerance == DEFAULT_TOLERANCES[precision]  # FP32 held to FP32's
    assert results["fp32"].candidate.artifact == results.get("bf16", results["fp32"]).candidate.artifact
    assert report


def _with_8_bit_weights(source: Path, target: Path) -> None:
    """The same function with full-range weights: every weight's q doubled and its scale halved."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and any(a.name == "axis" for a in node.attribute):
            q, scale = (numpy_helper.to_array(initializers[name]) for name in node.input[:2])
            assert np.abs(q.astype(np.int32)).max() <= WEIGHT_MAX
            initializers[node.input[0]].CopyFrom(numpy_helper.from_array((q * 2).astype(np.int8), node.input[0]))
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(scale / scale.dtype.type(2), node.input[1]))
    onnx.save(model, str(target))


@pytest.mark.slow  # the demo's FP16 and INT8 files, built once per module
@needs_openvino
def test_8_bit_weights_saturate_in_openvino_on_cpus_without_vnni_only(demo: Path, tmp_path: Path) -> None:
    """CPU-dependent on purpose: why model.int8.onnx has 7-bit weights, checked on the CPU at hand.

    The 7-bit file agrees with ONNX Runtime everywhere. Its exact twin with 8-bit weights (same products,
    same logits in ONNX Runtime) agrees too on CPUs with VNNI/AMX, and breaks where OpenVINO's int8
    convolutions sum u8 x s8 pairs into a saturating int16 (AVX2). Where /proc/cpuinfo is missing it
    checks the 7-bit file only.
    """
    from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from resnext_deploy.backends.openvino import OpenVINORunner, cpu_has_vnni
    from resnext_deploy.data import open_dataset, take
    from resnext_deploy.demo import DEMO_VAL
    from resnext_deploy.parity import cosine_rows
    from resnext_deploy.source import recorded_source

    images = take(open_dataset(DEMO_VAL, recorded_source(Manifest(demo)).preprocessing, count=64), 64).images
    full = tmp_path / "model.int8-8bit.onnx"
    _with_8_bit_weights(demo / "model.int8.onnx", full)
    worst = {}
    for path in (demo / "model.int8.onnx", full):
        with OnnxRuntimeRunner(path) as ort_runner, OpenVINORunner(path, "int8") as ov_runner:
            worst[path.name] = cosine_rows(ort_runner(images), ov_runner(images)).min()
    assert worst["model.int8.onnx"] > 0.99, worst
    vnni = cpu_has_vnni()
    if vnni is not None:
        assert (worst[full.name] > 0.99) == vnni, (worst, f"VNNI: {vnni}")


@needs_openvino
@pytest.mark.parametrize("vnni", [False, True])
def test_an_int8_file_with_8_bit_weights_is_skipped_only_where_it_would_saturate(
    demo_copy: Path, monkeypatch, vnni: bool
) -> None:
    """Files made before weights had 7 bits give wrong logits on CPUs without VNNI: skipped there, with the fix.
    The CPU is stubbed, so both branches run on any machine."""
    import resnext_deploy.backends.openvino as openvino_backend

    monkeypatch.setattr(openvino_backend, "cpu_has_vnni", lambda: vnni)
    [ok] = discover_runners(demo_copy, ("openvino",), precisions=("int8",)).runnable  # today's file runs anywhere
    _with_8_bit_weights(demo_copy / "model.int8.onnx", demo_copy / "model.int8.onnx")
    Manifest(demo_copy).record("model.int8.onnx", "int8")
    found = discover_runners(demo_copy, ("openvino",), precisions=("int8",))
    if vnni:
        assert [c.artifact for c in found.runnable] == ["model.int8.onnx"] and not found.skipped
    else:
        [skipped] = found.skipped
        assert "8-bit weights (up to 126)" in skipped.skipped and "no VNNI" in skipped.skipped
        assert "build-trt --int8" in skipped.skipped and not found.runnable


@pytest.mark.slow  # the demo's FP16 and INT8 files, built once per module
@needs_openvino
def test_fp32_is_computed_in_f32_and_bf16_only_when_asked_for(demo_copy: Path) -> None:
    found = discover_runners(demo_copy, ("openvino",))
    assert {c.precision for c in found.runnable} == {"fp32", "fp16", "int8"}
    [fp32] = [c for c in found.runnable if c.precision == "fp32"]
    with fp32.open() as runner:
        assert runner.options["inference_precision"] == "f32"
    if _bf16_here():
        [bf16] = discover_runners(demo_copy, ("openvino",), precisions=("bf16",)).runnable
        with bf16.open() as runner:
            assert runner.options["inference_precision"] == "bf16"
            assert bf16.label.endswith(":bf16 (model.onnx)")


@pytest.mark.slow  # the demo's FP16 and INT8 files, built once per module
@needs_openvino
def test_compiled_models_are_cached_per_file_content(demo_copy: Path) -> None:
    [int8] = discover_runners(demo_copy, ("openvino",), precisions=("int8",)).runnable
    sha256 = Manifest(demo_copy).entry("model.int8.onnx").sha256
    int8.open().close()
    cache = demo_copy / "openvino_cache"
    assert [p.name for p in cache.iterdir()] == [f"model.int8.onnx-{sha256[:16]}"]
    assert any((cache / f"model.int8.onnx-{sha256[:16]}").iterdir())
    # A new file (here the FP16 one recorded as the INT8 one) gets a folder of its own: no stale cache.
    shutil.copyfile(demo_copy / "model.fp16.onnx", demo_copy / "model.int8.onnx")
    Manifest(demo_copy).record("model.int8.onnx", "int8")
    [changed] = discover_runners(demo_copy, ("openvino",), precisions=("int8",)).runnable
    changed.open().close()
    assert len(list(cache.iterdir())) == 2


@pytest.mark.slow  # the demo's FP16 and INT8 files, built once per module
@needs_openvino
def test_bench_records_the_hint_and_threads(demo_copy: Path) -> None:
    settings = BenchSettings(
        backends=("openvino",),
        precisions=("fp32", "int8"),
        batch_sizes=(1, 4),
        warmup_ms=0,
        duration_s=0.1,
        min_iterations=2,
        threads=1,
        backend_options={"openvino": {"performance_hint": "throughput"}},
    )
    report = run_bench(demo_copy, settings, log=quiet, progress=False)
    assert {(r.precision, r.batch_size) for r in report.results} == {(p, b) for p in ("fp32", "int8") for b in (1, 4)}
    for row in report.results:
        assert row.options["performance_hint"] == "throughput"
        assert row.options["threads"] == 1
    saved = json.loads((demo_copy / "bench.json").read_text())
    assert saved["settings"]["backend_options"]["openvino"] == {"performance_hint": "throughput"}


@pytest.mark.slow  # the demo's FP16 and INT8 files, built once per module
@needs_openvino
def test_a_file_openvino_cannot_compile_fails_its_candidate_only(demo_copy: Path) -> None:
    (demo_copy / "model.int8.onnx").write_bytes(b"not an onnx file")
    Manifest(demo_copy).record("model.int8.onnx", "int8")
    report = run_verify(demo_copy, count=16, log=quiet, precisions=("fp32", "int8"))
    [int8] = [r for r in report.results if r.candidate.key == ("openvino", "int8", "cpu")]
    assert not int8.passed and "OpenVINO cannot compile" in int8.failures[0]
    [fp32] = [r for r in report.results if r.candidate.key == ("openvino", "fp32", "cpu")]
    assert fp32.passed
    settings = BenchSettings(("openvino",), ("fp32", "int8"), (1,), 0, 0.05, 1)
    bench = run_bench(demo_copy, settings, log=quiet, progress=False)
    assert [r.precision for r in bench.results] == ["fp32"]
    [skipped] = bench.skipped
    assert skipped.precision == "int8" and "OpenVINO cannot compile" in skipped.reason


def test_missing_openvino_names_the_extra(tiny_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["bench", "--dir", str(tiny_dir), "--backends", "openvino", "--duration", "0.05"]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and EXTRA in err
    # Not asked for by name: its candidates are skipped, with the reason.
    [skipped] = discover_runners(tiny_dir).skipped
    assert skipped.backend == "openvino" and EXTRA in skipped.skipped


def test_the_int8_warning_gives_each_backends_own_reason() -> None:
    noise = NoiseFloor(0.01, 0.05, 15, "test")

    def row(backend: str, precision: str, median_ms: float) -> BenchRow:
        return measured_row(Candidate(backend, precision, "cpu", None), 1, [[median_ms]] * 4, noise)

    rows = [row(b, p, m) for b in ("onnxruntime", "openvino") for p, m in (("fp16", 1.0), ("int8", 2.0))]
    warnings = bench_warnings(rows, noise, LoadRecord(True, 0.0, 0, 16, None, None, False))
    assert len(warnings) == 2
    assert ONNXRUNTIME.int8_note["cpu"] in warnings[0] and "quantize/dequantize" in warnings[0]
    assert OPENVINO.int8_note["cpu"] in warnings[1] and "VNNI" in warnings[1]
    assert not any("grouped convolutions" in w for w in warnings)


def test_bad_hint_and_precision_are_usage_errors(tiny_dir: Path, capsys) -> None:
    assert main(["bench", "--dir", str(tiny_dir), "--ov-hint", "fastest"]) == 2
    assert "--ov-hint" in capsys.readouterr().err
    assert main(["verify", "--dir", str(tiny_dir), "--precisions", "fp8"]) == 2
    assert "--precisions" in capsys.readouterr().err


@pytest.mark.slow  # the demo's FP16 and INT8 files, built once per module
@needs_openvino
def test_a_wrong_input_shape_is_a_clear_error(demo_copy: Path) -> None:
    from resnext_deploy.backends.openvino import OpenVINORunner
    from resnext_deploy.errors import BadInputError

    with OpenVINORunner(demo_copy / "model.onnx") as runner, pytest.raises(BadInputError, match="takes"):
        runner(np.zeros((1, 3, 5, 5), dtype=np.float32))
