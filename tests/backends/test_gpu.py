"""TensorRT on a real GPU: FP32, FP16 and INT8 engines of the tiny and demo models, their runner, their parity.

Every test here is marked ``gpu`` and the module skips, with the reason, where TensorRT or a CUDA GPU is
missing. On a GPU machine: ``pip install -e '.[dev,tensorrt-cu12]'`` (or ``tensorrt-cu13``, matching
``torch.version.cuda``) then ``pytest -m gpu``; ``scripts/gpu_check.sh`` does that and more.

FP16 and INT8 engines are built through ``resnext-deploy build-trt --fp16/--int8``, the command that makes
the typed ONNX file and then the engine. Each engine is compared with ONNX Runtime running the very ONNX
file it was built from (the engine step makes no precision decision, so they must agree closely) and, for
the demo model on its real validation digits, with PyTorch under the project's per-precision tolerances.
Every engine is also run through NVIDIA's Polygraphy (``TrtRunner``), the oracle for our runner: on the same
engine and input, our outputs must equal Polygraphy's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from resnext_deploy.artifacts import ONNX_FILES, engine_file
from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner
from resnext_deploy.backends.tensorrt.build import build_engine
from resnext_deploy.backends.tensorrt.manifest import read_engine_manifest
from resnext_deploy.backends.tensorrt.options import BuildOptions
from resnext_deploy.backends.tensorrt.probe import tensorrt_status
from resnext_deploy.backends.tensorrt.runner import TensorRTRunner
from resnext_deploy.backends.tensorrt.trtexec import trtexec_tensorrt_version
from resnext_deploy.backends.torch import TorchRunner
from resnext_deploy.data import open_dataset, take
from resnext_deploy.demo import DEMO_VAL
from resnext_deploy.errors import ExitCode
from resnext_deploy.parity import DEFAULT_TOLERANCES, Tolerance, compare
from resnext_deploy.source import SourceOptions, resolve_source

pytestmark = pytest.mark.gpu

_UNAVAILABLE = tensorrt_status()
if _UNAVAILABLE is not None:
    pytest.skip(_UNAVAILABLE, allow_module_level=True)

QUIET = {"log": lambda _m: None}
SMALL = BuildOptions(min_batch=1, opt_batch=4, max_batch=8)
# The same typed graph in TensorRT and in ONNX Runtime: only kernel choice and accumulation order differ.
SAME_GRAPH = {
    "fp32": Tolerance(cosine_min=0.99999),
    "fp16": Tolerance(cosine_min=0.999),
    "int8": Tolerance(cosine_min=0.99),
}


def _inputs(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def _torch_logits(source, x: np.ndarray) -> np.ndarray:
    return TorchRunner(source.build())(x)


def _assert_matches_polygraphy(path: Path, x: np.ndarray, ours: np.ndarray) -> None:
    """NVIDIA's Polygraphy runs the same engine on the same input (within the profile); the outputs must agree.

    Same plan, same shapes, same kernels: only our buffers, streams and dtype handling differ, so anything
    beyond float rounding noise is a bug in our runner.
    """
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    meta = read_engine_manifest(path)
    with TrtRunner(EngineFromBytes(path.read_bytes())) as runner:
        outputs = runner.infer({meta.profile.input: x})
    assert len(outputs) == 1, list(outputs)
    theirs = np.asarray(next(iter(outputs.values())), dtype=np.float32)
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * max(1.0, float(np.abs(theirs).max())))


def test_fp32_engine_matches_pytorch(tiny_dir: Path):
    path = build_engine(tiny_dir, "fp32", SMALL, **QUIET)
    meta = read_engine_manifest(path)
    assert meta.tf32 is False and meta.profile.max == (8, 3, 32, 32)
    x = _inputs(5)
    with TensorRTRunner(path) as runner:
        out = runner(x)
        assert runner.precision == "fp32" and runner.name == "tensorrt-cuda:fp32"
        assert runner.last_device_ms is not None and runner.last_device_ms > 0
    _assert_matches_polygraphy(path, x, out)
    parity = compare(_torch_logits(resolve_source(SourceOptions("resnext_tiny")), x), out, DEFAULT_TOLERANCES["fp32"])
    assert parity, parity.failures


def test_batches_above_the_profile_max_run_in_chunks(tiny_dir: Path):
    path = build_engine(tiny_dir, "fp32", SMALL, **QUIET)
    x = _inputs(19, seed=1)
    with TensorRTRunner(path) as runner:
        out = runner(x)
        first = runner(x[:8])
    assert out.shape == (19, 10)
    np.testing.assert_allclose(out[:8], first, rtol=1e-5, atol=1e-5)
    parity = compare(_torch_logits(resolve_source(SourceOptions("resnext_tiny")), x), out, DEFAULT_TOLERANCES["fp32"])
    assert parity, parity.failures


def test_batches_below_the_profile_min_are_padded(tiny_dir: Path):
    path = build_engine(tiny_dir, "fp32", BuildOptions(min_batch=4, opt_batch=4, max_batch=8), **QUIET)
    x = _inputs(9, seed=4)  # 8 + a last chunk of 1, which must be padded up to the profile minimum of 4
    with TensorRTRunner(path) as runner:
        assert runner(x[:1]).shape == (1, 10)
        out = runner(x)
    parity = compare(_torch_logits(resolve_source(SourceOptions("resnext_tiny")), x), out, DEFAULT_TOLERANCES["fp32"])
    assert out.shape == (9, 10) and parity, parity.failures
    _assert_matches_polygraphy(path, x[:8], out[:8])


def test_plan_is_plain_bytes_for_trtexec(tiny_dir: Path):
    import tensorrt as trt

    path = build_engine(tiny_dir, "fp32", SMALL, **QUIET)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(path.read_bytes()) is not None
    trtexec = shutil.which("trtexec")
    if trtexec is None:
        pytest.skip("trtexec is not on PATH; the plan deserialized in the Python runtime above")
    installed = ".".join(trt.__version__.split(".")[:3])
    theirs = trtexec_tensorrt_version(trtexec)
    if theirs != installed:
        # A plain plan loads only in the TensorRT version that built it; another trtexec refusing it is no finding.
        pytest.skip(f"{trtexec} is TensorRT {theirs or 'of an unknown version'}, the Python package {installed}")
    done = subprocess.run(
        [trtexec, f"--loadEngine={path}", "--shapes=input:4x3x32x32", "--iterations=5", "--duration=0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_timing_cache_is_written_and_reused(tiny_dir: Path, tmp_path: Path):
    cache = tmp_path / "cache" / "tiny.timing"
    build_engine(tiny_dir, "fp32", BuildOptions(timing_cache=cache), **QUIET)
    assert cache.stat().st_size > 0
    path = build_engine(tiny_dir, "fp32", BuildOptions(opt_batch=16, timing_cache=cache), **QUIET)
    assert read_engine_manifest(path).profile.opt[0] == 16


def test_hardware_and_version_compatible_engine_loads(tiny_dir: Path):
    import torch

    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("ampere+ hardware compatibility needs an Ampere or newer GPU to build on")
    options = BuildOptions(min_batch=1, opt_batch=4, max_batch=8, hardware_compat="ampere+", version_compatible=True)
    path = build_engine(tiny_dir, "fp32", options, **QUIET)
    x = _inputs(3)
    with TensorRTRunner(path) as runner:  # needs engine_host_code_allowed for the embedded lean runtime
        out = runner(x)
    parity = compare(_torch_logits(resolve_source(SourceOptions("resnext_tiny")), x), out, DEFAULT_TOLERANCES["fp32"])
    assert parity, parity.failures


def _cli_build(directory: Path, precision: str, capsys: pytest.CaptureFixture, calib: Path | None = None) -> Path:
    from resnext_deploy.cli import main

    extra = ["--calib-dir", str(calib)] if calib is not None else []
    code = main(["build-trt", f"--{precision}", "--dir", str(directory), *extra])
    captured = capsys.readouterr()
    assert code == ExitCode.OK, captured.err[-2000:]
    return directory / engine_file(precision)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_typed_engine_of_the_tiny_model(tiny_dir: Path, tmp_path: Path, precision: str, capsys: pytest.CaptureFixture):
    calib = tmp_path / "calib.npy"
    np.save(calib, _inputs(64, seed=3))  # the tiny model has random weights and no bundled data
    path = _cli_build(tiny_dir, precision, capsys, calib)
    x = _inputs(16, seed=2)
    with TensorRTRunner(path) as runner:
        out = runner(x)
        assert runner.precision == precision
    _assert_matches_polygraphy(path, x, out)
    reference = OnnxRuntimeRunner(tiny_dir / ONNX_FILES[precision], precision=precision)(x)
    parity = compare(reference, out, SAME_GRAPH[precision])
    assert parity, parity.failures


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_demo_engines_on_real_digits(demo_dir: Path, precision: str, capsys: pytest.CaptureFixture):
    if not DEMO_VAL.exists():
        pytest.skip("the demo model's validation digits are not in this checkout")
    source = resolve_source()
    if precision == "fp32":
        path = build_engine(demo_dir, "fp32", BuildOptions(), **QUIET)
    else:
        path = _cli_build(demo_dir, precision, capsys)
    data = take(open_dataset(DEMO_VAL, source.preprocessing, count=256), 256)
    with TensorRTRunner(path) as runner:
        out = runner(data.images)
    _assert_matches_polygraphy(path, data.images[:32], out[:32])  # the runner's first chunk: the profile's maximum
    same_graph = compare(OnnxRuntimeRunner(demo_dir / ONNX_FILES[precision])(data.images), out, SAME_GRAPH[precision])
    assert same_graph, same_graph.failures
    parity = compare(_torch_logits(source, data.images), out, DEFAULT_TOLERANCES[precision], labels=data.labels)
    assert parity, parity.failures
