"""Helpers shared by the test files: artifacts for the tiny model, running the CLI, checking what it left.

Fixtures live in conftest.py; this module holds plain functions and constants, imported as ``helpers``
(no test file imports another test file).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from resnext_deploy.artifacts import LOCK_NAME, MANIFEST_NAME, ONNX_FILES, EngineProfile, Manifest, sha256_file
from resnext_deploy.backends.base import Candidate, SkipRecord
from resnext_deploy.backends.openvino import CACHE_DIR
from resnext_deploy.backends.tensorrt.manifest import EngineManifest
from resnext_deploy.backends.tensorrt.options import BuildOptions
from resnext_deploy.backends.tensorrt.probe import GpuInfo
from resnext_deploy.cli import main
from resnext_deploy.errors import ExitCode
from resnext_deploy.evaluate.bench import (
    BenchReport,
    BenchRun,
    FailedRow,
    Isolation,
    LoadRecord,
    NoiseFloor,
    add_speedups,
    bench_warnings,
    measured_row,
)
from resnext_deploy.evaluate.machine import machine_record
from resnext_deploy.export import export_onnx

# CLI options: the tiny model, and the shortest bench, pipeline and INT8 build that still do every step.
TINY = ["--arch", "resnext_tiny"]
QUICK_BENCH = ["--duration", "0.02", "--warmup-ms", "0", "--min-iterations", "1", "--batch-sizes", "1"]
QUICK_PIPELINE = ["--calib-count", "64", "--count", "100", "--batch-sizes", "1", "--duration", "0.02"]
INT8_ONLY = ["--int8", "--onnx-only", "--calib-count", "64"]
# Run outputs, not artifacts (OpenVINO's compiled-model cache among them).
REPORTS = {"verify.json", "bench.json", "bench.csv", "bench.md", "bench.png", "report.md", LOCK_NAME, CACHE_DIR}
TIMEOUT_S = 120  # a case that could hang (a FIFO, a bomb) fails after this
MEMORY_BOUND = 1536 << 20  # bytes; each bomb the fault tests plant would need far more than this if it were expanded


# ----------------------------------------------------------------------------------------------
# Artifacts


def load_script(name: str):
    """A script of ``scripts/`` imported as a module (scripts are not a package), for tests that reuse its code."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quiet_export(source, directory: Path) -> Path:
    """``directory`` holding ``source`` exported to model.onnx with its manifest, without progress lines."""
    directory.mkdir(parents=True, exist_ok=True)
    export_onnx(source, directory, log=lambda _m: None)
    return directory


def with_low_precision(template: Path, directory: Path) -> Path:
    """A copy of an exported tiny-model directory plus model.fp16.onnx and model.int8.onnx, all in the manifest.

    They come from ONNX Runtime's float16 converter and static QDQ quantizer, not from the precision module
    (whose own files are tested beside it), for the verify, bench and report tests. Tests use conftest's
    session-scoped ``low_precision_template`` (one conversion per run) rather than this.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.transformers.float16 import convert_float_to_float16

    shutil.copytree(template, directory)
    manifest = Manifest(directory)
    parent = manifest.entry("model.onnx").sha256
    fp16 = convert_float_to_float16(onnx.load(str(directory / "model.onnx")), keep_io_types=True)
    onnx.save(fp16, str(directory / "model.fp16.onnx"))
    manifest.record("model.fp16.onnx", "fp16", parent_sha256=parent, options={"fixture": "convert_float_to_float16"})

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches = iter([{"input": rng.standard_normal((8, 3, 32, 32), dtype=np.float32)} for _ in range(4)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns about un-preprocessed models
    quantize_static(
        str(directory / "model.onnx"),
        str(directory / "model.int8.onnx"),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        reduce_range=True,  # 7-bit weights, as OpenVINO on CPUs without VNNI needs (the openvino backend checks)
    )
    manifest.record("model.int8.onnx", "int8", parent_sha256=parent, options={"fixture": "quantize_static QDQ"})
    return directory


def copy_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_initializers(path: Path, select: Callable[[str], bool], change: Callable[[np.ndarray], np.ndarray]) -> int:
    """Rewrite the initializers whose names ``select`` picks; return how many changed."""
    model = onnx.load(str(path))
    changed = 0
    for init in model.graph.initializer:
        if select(init.name):
            array = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(change(array).astype(array.dtype), init.name))
            changed += 1
    onnx.save(model, str(path))
    return changed


def is_weight_scale(name: str) -> bool:
    """The QDQ quantizer names a per-channel weight scale ``<weight>_scale``; activations end ``_output_0_scale``."""
    return name.endswith("_scale") and "Conv" in name and "output" not in name


def strip_activation_qdq(path: Path, select: Callable[[str], bool] = lambda _tensor: True) -> list[str]:
    """Remove the Q/DQ pair of each activation tensor ``select`` picks (consumers read the float); return them."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    consumers = {name: node for node in graph.node for name in node.input}
    outputs = {value.name for value in graph.output}
    removed, rename, drop = [], {}, []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers and select(node.input[0]):
            dequantize = consumers[node.output[0]]
            tensor, result = node.input[0], dequantize.output[0]
            rename.update({tensor: result} if result in outputs else {result: tensor})  # graph outputs keep their name
            drop += [node, dequantize]
            removed.append(tensor)
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    onnx.save(model, str(path))
    return removed


def rerecord(directory: Path, name: str = "model.onnx") -> None:
    """Record the file's current bytes in the manifest, as if resnext-deploy had made it."""
    manifest = Manifest(directory)
    entry = manifest.entry(name)
    manifest.record(name, entry.precision, parent_sha256=entry.parent_sha256, options=entry.options)


def noise_images(folder: Path, count: int, classes: int = 2, size: int = 32, seed: int = 0) -> Path:
    """``count`` random RGB PNGs spread over ``classes`` class subfolders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        target = folder / f"class{i % classes}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(target / f"{i:03d}.png")
    return folder


def digit_jpeg(folder: Path, digit: int = 7) -> Path:
    """A real JPEG, ``folder/<digit>/digit.jpg``: a bundled demo digit, upscaled to 40x52 (not square, so the
    resize and the center crop both act), in a class folder so verify's data loading reads its label."""
    from resnext_deploy.demo import DEMO_DATA

    source = sorted((DEMO_DATA / "val" / str(digit)).glob("*.png"))[0]
    target = folder / str(digit) / "digit.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.convert("RGB").resize((40, 52), Image.Resampling.NEAREST).save(target, quality=92)
    return target


# ----------------------------------------------------------------------------------------------
# Running the CLI and checking what it left


def one_error(err: str, *fragments: str) -> str:
    """The one ``error:`` line of ``err``, checked to be the only one, the last line, free of tracebacks and
    holding each fragment."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        return self.error_line()

    def error_line(self, *fragments: str) -> str:
        """The one ``error:`` line holding each fragment (see :func:`one_error`), no traceback on stdout either."""
        assert "Traceback" not in self.out
        return one_error(self.err, *fragments)


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> Outcome:
    """Run the CLI in this process, as the user would call it, and capture what it printed."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def fails(outcome: Outcome, code: ExitCode, *fragments: str) -> str:
    """Check that the run exited with ``code`` and one error line holding each fragment; return that line."""
    assert outcome.code == code, outcome.err
    return outcome.error_line(*fragments)


# Runs the CLI in a child and prints that child's peak RSS (kB on Linux) as the last line of stdout.
_MEASURED = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "resnext_deploy", *sys.argv[1:]], capture_output=True, text=True)
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


def measured(tmp_path: Path, *args: object) -> tuple[int, str, int]:
    """Exit code, stderr and peak memory in bytes of one CLI run in a fresh process, under a timeout."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
        env={**os.environ, "RESNEXT_DEPLOY_DEBUG": ""},
    )
    return done.returncode, done.stderr, int(done.stdout.strip().splitlines()[-1]) * 1024


def snapshot(directory: Path) -> dict[str, str]:
    """Each entry of ``directory`` by name: a file's sha256 (the manifest's text), or ``<dir>``."""
    if not directory.exists():
        return {}

    def seen(path: Path) -> str:
        if not path.is_file():
            return "<dir>"
        return path.read_text(errors="replace") if path.name == MANIFEST_NAME else sha256_file(path)

    return {p.name: seen(p) for p in directory.iterdir()}


def unchanged(directory: Path, before: dict[str, str], allowed_new: frozenset[str] = frozenset()) -> None:
    """No partial file, no new artifact, every finished artifact byte for byte as before, and the manifest too but
    for the failure the step recorded (every command records its failure there before it exits)."""
    after = snapshot(directory)
    assert not [name for name in after if name.endswith(".partial")], after
    assert set(after) - set(before) - REPORTS - allowed_new == set()
    files = {name for name in before if name not in REPORTS and name != MANIFEST_NAME}
    assert {name: before[name] for name in files} == {name: after.get(name) for name in files}
    if MANIFEST_NAME in after:
        manifest = json.loads(after[MANIFEST_NAME])
        if MANIFEST_NAME in before:
            assert without_failures(manifest) == without_failures(json.loads(before[MANIFEST_NAME]))


def without_failures(manifest: dict) -> dict:
    """A manifest less the failed steps it records (every command records its failure before it exits)."""
    skipped = {k: v for k, v in (manifest.get("skipped") or {}).items() if not v.startswith("failed")}
    return {**{k: v for k, v in manifest.items() if k != "skipped"}, **({"skipped": skipped} if skipped else {})}


# ----------------------------------------------------------------------------------------------
# Small ONNX graphs for the precision passes' rules


def residual_block(downsample: bool = False, trans_b: int = 1, opset: int = 19) -> onnx.ModelProto:
    """A stem (Conv ``conv0``, ReLU ``relu0`` giving ``h``), one ResNeXt-style block (grouped Conv ``conv1``,
    ReLU ``relu1`` giving ``r1``, Conv ``conv2`` giving ``c``; ``add`` of ``c`` and the shortcut: ``h``, or with
    ``downsample`` the Conv ``conv_sc``'s output ``s``; ReLU ``relu2``) and a Gemm head ``fc`` giving ``y``.

    Random weights, input ``x`` of shape (N, 3, 8, 8): small enough to check a rule node by node.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    same = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["a0"], name="conv0", **same),
        helper.make_node("Relu", ["a0"], ["h"], name="relu0"),
        helper.make_node("Conv", ["h", "w1", "b1"], ["a1"], name="conv1", group=2, **same),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c"], name="conv2"),
    ]
    initializers = [weight("w0", 4, 3, 3, 3), weight("b0", 4), weight("w1", 4, 2, 3, 3), weight("b1", 4)]
    initializers += [weight("w2", 4, 4, 1, 1), weight("b2", 4)]
    shortcut = "h"
    if downsample:
        nodes.append(helper.make_node("Conv", ["h", "wsc"], ["s"], name="conv_sc"))
        initializers.append(weight("wsc", 4, 4, 1, 1))
        shortcut = "s"
    nodes += [
        helper.make_node("Add", ["c", shortcut], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wfc", "bfc"], ["y"], name="fc", transB=trans_b),
    ]
    initializers += [weight("wfc", *((3, 4) if trans_b else (4, 3))), weight("bfc", 3)]
    graph = helper.make_graph(
        nodes,
        "residual_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` on ``x`` (its one input), run by ONNX Runtime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


def calibration_of(model: onnx.ModelProto, x: np.ndarray, **overrides: tuple[float, float]):
    """A Calibration holding each float tensor's range on ``x``, as calibration would record it; ``overrides``
    replace a tensor's (min, max), to plant an overflow or a NaN."""
    from resnext_deploy.precision.calibration import Calibration, TensorRange
    from resnext_deploy.precision.methods import CalibrationMethod

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    probe.graph.output.extend(
        onnx.ValueInfoProto(name=name) for node in probe.graph.node for name in node.output if name not in known
    )
    values = {probe.graph.input[0].name: x, **run_onnx(probe, x)}
    ranges = {name: (float(value.min()), float(value.max())) for name, value in values.items()}
    ranges.update(overrides)
    tensors = {name: TensorRange(lo, hi, amax=max(abs(lo), abs(hi))) for name, (lo, hi) in ranges.items()}
    return Calibration("", "", "random inputs", len(x), len(x), CalibrationMethod.MINMAX, 99.99, tensors)


STAND_IN_GPU = GpuInfo("Stand-in GPU", "8.6", "550.0", "12.4")


def stand_in_engine_manifest(engine: Path, precision: str = "fp32", **changes) -> EngineManifest:
    """The engine manifest build-trt would write for ``engine`` (plan bytes already on disk), with ``changes``.

    For tests of what reads an engine's manifest (runners, Triton, compatibility) on machines without TensorRT.
    """
    batches = {"min": 1, "opt": 4, "max": 16}
    profile = EngineProfile("input", *((batches[k], 3, 32, 32) for k in ("min", "opt", "max")))
    plan = engine.read_bytes()
    record = EngineManifest(
        engine=engine.name,
        plan_sha256=sha256_file(engine),
        plan_bytes=len(plan),
        precision=precision,
        source_onnx=ONNX_FILES[precision],
        source_onnx_sha256=sha256_file(engine.parent / ONNX_FILES[precision]),
        calibration_fingerprint=None,
        tensorrt_version="10.13.3.9",
        gpu_info=STAND_IN_GPU,
        profile=profile,
        build_options=BuildOptions(),
        build_seconds=1.0,
        built="2026-01-01T00:00:00+00:00",
    )
    return replace(record, **changes).sealed()


# ----------------------------------------------------------------------------------------------
# Records


def bench_report() -> BenchReport:
    """A bench record as bench writes it (torch and an INT8 file on the CPU, one skipped and one failed row)."""
    noise = NoiseFloor.measured(0.01, 0.02, 4, "4 conv3x3 32ch 28x28 in ONNX Runtime", call_spread=0.1)
    rounds = {"torch": [[10.0, 10.5]] * 4, "onnxruntime": [[5.0, 5.2], [5.1, 5.0], [4.9, 5.3], [5.0, 5.0]]}
    rows = [
        measured_row(Candidate("torch", "fp32", "cpu", None), 1, rounds["torch"], noise, [(0, 100)] * 4),
        measured_row(Candidate("onnxruntime", "int8", "cpu", "model.int8.onnx"), 1, rounds["onnxruntime"], noise),
    ]
    add_speedups(rows, {id(rows[0]): rounds["torch"], id(rows[1]): rounds["onnxruntime"]})
    rows[1].options.update({"allow_spinning": True, "intra_op_threads": "default", "pools": "library defaults"})
    load = LoadRecord(True, 0.01, 0, 8, (0.5, 0.4, 0.3), (0.6, 0.4, 0.3), False)
    isolation = Isolation(
        process_per_runner=True,
        mode="library defaults",
        environment={},
        onnxruntime_allow_spinning=True,
        threads="--threads 1",
        pause="until quiet",
        pause_ms=12.0,
        pause_max_ms=30.5,
        quiet_rule="after each slice, bench waits until quiet",
        quiet_after_warm_up_ms={"torch-cpu:fp32": 3.0, "noise-probe": None},
        wait_after_slice_ms={"torch-cpu:fp32": 11.0, "noise-probe": None},
        reply_margin_s=2.0,
    )
    run = BenchRun(
        backends=("torch", "onnxruntime"),
        precisions=("fp32", "int8"),
        batch_sizes=(1,),
        warmup_ms=10.0,
        duration_s=0.3,
        min_iterations=3,
        threads=1,
        backend_options={"openvino": {"performance_hint": "latency"}, "onnxruntime": {"allow_spinning": True}},
        budget_s=180.0,
        rounds=4,
        min_rounds=5,
        pause_ms=None,
        passive_pools=False,
        allow_spinning=True,
        slice_s=0.03,
        setup_s=4.5,
        planned_s=2.0,
        plan_fits=True,
        wall_s=8.25,
        input="seeded N(0,1) float32 NCHW",
        speedup="median of torch fp32 / this row's median",
        isolation=isolation,
        stability=noise.rule,
    )
    return BenchReport(
        machine=machine_record(1),
        settings=run,
        noise=noise,
        load=load,
        results=rows,
        warnings=bench_warnings(rows, noise, load),
        skipped=[SkipRecord("openvino", "fp16", "cpu", "model.fp16.onnx", "openvino is not installed")],
        failed=[FailedRow("onnxruntime", "fp16", "cpu", "model.fp16.onnx", 1, "measure", "died", "SIGKILL", False, 2)],
        artifacts={"model.int8.onnx": "0" * 64},
    )
