"""TensorRT engine step on a CPU: options, trtexec lines, refusals, and contract tests of the build's call sequence.

Nothing here runs TensorRT. The ``test_contract_*`` tests drive :func:`build_engine` against a recording
stand-in ``tensorrt`` module: they check which calls the code makes, never what TensorRT would do with them,
and are not TensorRT coverage (that is ``tests/backends/test_gpu.py``, marked ``gpu``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import STAND_IN_GPU, stand_in_engine_manifest

from resnext_deploy.artifacts import CalibrationRef, Manifest, sha256_file
from resnext_deploy.backends.base import run_in_chunks
from resnext_deploy.backends.tensorrt import manifest as engine_manifest
from resnext_deploy.backends.tensorrt import probe
from resnext_deploy.backends.tensorrt.build import build_engine
from resnext_deploy.backends.tensorrt.manifest import engine_manifest_path, read_engine_manifest
from resnext_deploy.backends.tensorrt.options import BuildOptions
from resnext_deploy.backends.tensorrt.runner import TensorRTRunner
from resnext_deploy.backends.tensorrt.trtexec import trtexec_command, trtexec_tensorrt_version
from resnext_deploy.errors import BackendUnavailableError, BadInputError, ExitCode
from resnext_deploy.serde import encode

QUIET = {"log": lambda _m: None}
REAL_TENSORRT_STATUS, REAL_GPU_INFO = probe.tensorrt_status, probe.gpu_info


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import tensorrt`` fail even where TensorRT happens to be installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --- BuildOptions ---------------------------------------------------------------------------------------------


def test_default_options_are_valid():
    assert encode(BuildOptions())["max_batch"] == 32


@pytest.mark.parametrize(
    "options",
    [
        {"min_batch": 0},
        {"min_batch": 4, "opt_batch": 2},
        {"opt_batch": 64, "max_batch": 32},
        {"opt_level": 6},
        {"opt_level": -1},
        {"workspace_mb": 0},
        {"hardware_compat": "turing+"},
    ],
)
def test_invalid_options_are_refused_when_made(options: dict):
    with pytest.raises(BadInputError):
        BuildOptions(**options)


def test_timing_cache_must_not_be_a_directory(tmp_path: Path):
    with pytest.raises(BadInputError, match="directory"):
        BuildOptions(timing_cache=tmp_path)


# --- trtexec_command --------------------------------------------------------------------------------------------


def test_trtexec_command_for_tensorrt_10_names_file_profile_and_options(tmp_path: Path):
    options = BuildOptions(
        min_batch=2,
        opt_batch=4,
        max_batch=16,
        workspace_mb=2048,
        opt_level=5,
        timing_cache=tmp_path / "cache dir" / "trt.cache",
        hardware_compat="ampere+",
        version_compatible=True,
    )
    onnx = tmp_path / "model.int8.onnx"
    line = trtexec_command(onnx, tmp_path / "model.int8.engine", options, 224, trt_major=10)
    args = shlex.split(line)
    assert args[0] == "trtexec"
    assert f"--onnx={onnx}" in args
    assert f"--saveEngine={tmp_path / 'model.int8.engine'}" in args
    assert "--stronglyTyped" in args
    assert "--minShapes=input:2x3x224x224" in args
    assert "--optShapes=input:4x3x224x224" in args
    assert "--maxShapes=input:16x3x224x224" in args
    assert "--memPoolSize=workspace:2048M" in args
    assert "--builderOptimizationLevel=5" in args
    assert f"--timingCacheFile={tmp_path / 'cache dir' / 'trt.cache'}" in args  # quoted, survives the space
    assert "--hardwareCompatibilityLevel=ampere+" in args
    assert "--versionCompatible" in args
    assert "--noTF32" in args
    assert not {"--fp16", "--int8", "--best"} & set(args)


def test_trtexec_command_for_tensorrt_11_drops_the_strongly_typed_flag():
    options = BuildOptions(hardware_compat="same-cc")
    line = trtexec_command("model.fp16.onnx", "model.fp16.engine", options, (16, 24), trt_major=11, relative_to=".")
    args = shlex.split(line)
    assert "--onnx=model.fp16.onnx" in args
    assert "--stronglyTyped" not in args
    assert "--minShapes=input:1x3x16x24" in args and "--maxShapes=input:32x3x16x24" in args
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in args
    assert line.endswith("# sameComputeCapability needs TensorRT 10.9 or later")  # a shell comment
    assert not any(a.startswith(("--memPoolSize", "--builderOptimizationLevel", "--timingCacheFile")) for a in args)


def test_trtexec_command_defaults_to_the_form_both_majors_accept(no_tensorrt):
    assert "--stronglyTyped" in trtexec_command("m.onnx", "m.engine", BuildOptions(), 32)


# --- build_engine without TensorRT --------------------------------------------------------------------------------


def test_build_without_tensorrt_prints_trtexec_and_writes_nothing(tiny_dir: Path, no_tensorrt):
    before = _files(tiny_dir)
    with pytest.raises(BackendUnavailableError) as info:
        build_engine(tiny_dir, "fp32", BuildOptions(timing_cache=tiny_dir / "trt.cache"), **QUIET)
    message, command = str(info.value), info.value.command
    assert info.value.exit_code == ExitCode.BACKEND_UNAVAILABLE
    assert "TensorRT is not installed" in message and "resnext-deploy[tensorrt-cu1" in message
    assert "trtexec line" in message and "--onnx-only" in message and "\n" not in message
    assert command.startswith("trtexec ") and f"--onnx={tiny_dir / 'model.onnx'}" in command
    assert "--minShapes=input:1x3x32x32" in command and "--maxShapes=input:32x3x32x32" in command
    assert _files(tiny_dir) == before


def test_build_needs_the_precision_onnx_in_the_manifest(tiny_dir: Path, no_tensorrt):
    with pytest.raises(BadInputError, match="model.int8.onnx is missing.*build-trt --int8"):
        build_engine(tiny_dir, "int8", BuildOptions(), **QUIET)


def test_build_refuses_an_unknown_precision(tiny_dir: Path):
    with pytest.raises(BadInputError, match="unknown precision"):
        build_engine(tiny_dir, "fp8", BuildOptions(), **QUIET)


# --- the recording stand-in -----------------------------------------------------------------------------------------


class StandIn:
    """A stand-in ``tensorrt`` module that records calls. It models no TensorRT behaviour."""

    def __init__(
        self,
        version: str,
        parse_ok: bool = True,
        plan: bytes | None = b"PLAN-BYTES",
        null_factories: bool = False,
        cache_readable: bool = True,
        same_cc: bool = True,
    ) -> None:
        self.calls: list[tuple] = []
        self.module = self._module(version, parse_ok, plan, null_factories, cache_readable, same_cc)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def _module(
        self,
        version: str,
        parse_ok: bool,
        plan: bytes | None,
        null_factories: bool,
        cache_readable: bool,
        same_cc: bool,
    ) -> types.ModuleType:
        calls = self.calls

        def factory(name: str, logger) -> None:
            """``null_factories``: log as TensorRT does, then fail as pybind11 does when TensorRT returns NULL."""
            calls.append((name,))
            if null_factories:
                logger.log(severity.ERROR, "CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")

        severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        class ILogger:
            Severity = severity

            def __init__(self) -> None:
                calls.append(("ILogger.__init__",))

        class Tensor:
            name = "input"
            shape = (-1, 3, 32, 32)

        class Network:
            num_inputs = 1

            def get_input(self, index):
                return Tensor()

        class ParserError:
            def node(self):
                return 7

            def node_name(self):
                return "/layer1/conv"

            def node_operator(self):
                return "Conv"

            def desc(self):
                return "unsupported grouping"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger) -> None:
                calls.append(("OnnxParser",))

            def parse_from_file(self, path):
                calls.append(("parse_from_file", path))
                return parse_ok

            def get_error(self, index):
                return ParserError()

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self):
                return memoryview(b"CACHE:" + self.data)

        class Profile:
            def set_shape(self, name, low, opt, high):
                calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

        class Config:
            def __setattr__(self, name, value):
                calls.append(("config." + name, value))
                object.__setattr__(self, name, value)

            def add_optimization_profile(self, profile):
                calls.append(("add_optimization_profile",))

            def clear_flag(self, flag):
                calls.append(("clear_flag", flag))

            def set_flag(self, flag):
                calls.append(("set_flag", flag))

            def set_memory_pool_limit(self, pool, size):
                calls.append(("set_memory_pool_limit", pool, size))

            def create_timing_cache(self, data):
                calls.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data)) if cache_readable or not data else None

            def set_timing_cache(self, cache, ignore_mismatch):
                calls.append(("set_timing_cache", ignore_mismatch))
                object.__setattr__(self, "_cache", cache)
                return True

            def get_timing_cache(self):
                return self._cache

        class Builder:
            def __init__(self, logger) -> None:
                factory("Builder", logger)

            def create_network(self, *flags):
                calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calls.append(("build_serialized_network",))
                return plan

        class Runtime:
            def __init__(self, logger) -> None:
                factory("Runtime", logger)

        module = types.ModuleType("tensorrt")
        module.__version__ = version
        module.ILogger = ILogger
        module.Builder = Builder
        module.Runtime = Runtime
        module.OnnxParser = OnnxParser
        module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        module.BuilderFlag = types.SimpleNamespace(TF32="TF32", VERSION_COMPATIBLE="VERSION_COMPATIBLE")
        module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        module.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
        levels = {"AMPERE_PLUS": "AMPERE_PLUS"}
        if same_cc:  # from TensorRT 10.9
            levels["SAME_COMPUTE_CAPABILITY"] = "SAME_COMPUTE_CAPABILITY"
        module.HardwareCompatibilityLevel = types.SimpleNamespace(**levels)
        return module


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch):
    """Install a recording stand-in for ``tensorrt`` and pretend a GPU is present."""

    def install(version: str = "10.13.3.9", **kwargs) -> StandIn:
        fake = StandIn(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        monkeypatch.setattr(probe, "tensorrt_status", lambda: None)
        monkeypatch.setattr(probe, "gpu_info", lambda: STAND_IN_GPU)
        return fake

    return install


def _add_typed_onnx(directory: Path, precision: str, **extra) -> None:
    """Stand in for the convert step: the FP32 file under the precision's name, recorded in the manifest."""
    name = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}[precision]
    shutil.copy(directory / "model.onnx", directory / name)
    Manifest(directory).record(name, precision, parent_sha256=sha256_file(directory / "model.onnx"), **extra)


def test_contract_tensorrt_10_build_sequence(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: the calls build_engine makes on TensorRT 10.x."""
    fake = stand_in("10.13.3.9")
    cache = tiny_dir / "caches" / "trt.cache"
    options = BuildOptions(min_batch=2, opt_batch=4, max_batch=16, workspace_mb=512, opt_level=4, timing_cache=cache)
    path = build_engine(tiny_dir, "fp32", options, **QUIET)

    assert ("create_network", (1 << 0,)) in fake.calls  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert ("parse_from_file", str(tiny_dir / "model.onnx")) in fake.calls
    assert ("set_shape", "input", (2, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32)) in fake.calls
    assert ("clear_flag", "TF32") in fake.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 512 << 20) in fake.calls
    assert ("config.builder_optimization_level", 4) in fake.calls
    assert ("create_timing_cache", b"") in fake.calls
    assert not [c for c in fake.calls if c[0] == "set_flag"]  # no precision flag, no compatibility flag asked for
    assert fake.names().index("add_optimization_profile") < fake.names().index("build_serialized_network")
    assert cache.read_bytes() == b"CACHE:"  # saved after the build

    assert path == tiny_dir / "model.fp32.engine"
    assert path.read_bytes() == b"PLAN-BYTES"  # plain plan bytes, no header
    meta = json.loads(engine_manifest_path(path).read_text())
    assert meta["precision"] == "fp32" and meta["tensorrt_version"] == "10.13.3.9"
    assert meta["source_onnx"] == "model.onnx"
    assert meta["source_onnx_sha256"] == sha256_file(tiny_dir / "model.onnx")
    assert meta["plan_sha256"] == sha256_file(path)
    assert meta["profile"] == {"input": "input", "min": [2, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}
    assert meta["gpu"] == "Stand-in GPU" and meta["compute_capability"] == "8.6"
    assert meta["driver_version"] == "550.0" and meta["cuda_runtime"] == "12.4"
    assert meta["build_options"]["timing_cache"] == str(cache)
    assert "built" in meta and "build_seconds" in meta
    entry = Manifest(tiny_dir).entry("model.fp32.engine")
    assert entry.sha256 == meta["plan_sha256"] and entry.parent_sha256 == meta["source_onnx_sha256"]
    assert encode(read_engine_manifest(path)) == meta  # the record reads back what was written


def test_contract_tensorrt_11_build_has_no_creation_flag(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: on 11.x the network is created without the (deprecated) flag."""
    fake = stand_in("11.4.0.106")
    calibration = CalibrationRef("sha256:calib", "calib (8 images)", 8, "entropy", 99.99)
    _add_typed_onnx(tiny_dir, "int8", calibration=calibration)
    path = build_engine(tiny_dir, "int8", BuildOptions(hardware_compat="ampere+", version_compatible=True), **QUIET)
    assert ("create_network", ()) in fake.calls
    assert ("parse_from_file", str(tiny_dir / "model.int8.onnx")) in fake.calls
    assert ("clear_flag", "TF32") in fake.calls  # FP32 parts of a typed graph stay true FP32
    assert ("config.hardware_compatibility_level", "AMPERE_PLUS") in fake.calls
    assert [c for c in fake.calls if c[0] == "set_flag"] == [("set_flag", "VERSION_COMPATIBLE")]
    meta = read_engine_manifest(path)
    assert meta.precision == "int8" and meta.calibration_fingerprint == "sha256:calib"
    assert meta.build_options.version_compatible is True


def test_contract_timing_cache_is_loaded_and_resaved(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: an existing cache file is handed to the builder, then rewritten."""
    fake = stand_in()
    cache = tiny_dir / "trt.cache"
    cache.write_bytes(b"OLD")
    build_engine(tiny_dir, "fp32", BuildOptions(timing_cache=cache), **QUIET)
    assert ("create_timing_cache", b"OLD") in fake.calls
    assert ("set_timing_cache", False) in fake.calls
    assert cache.read_bytes() == b"CACHE:OLD"


def test_contract_same_options_reuse_the_engine(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: a current engine is not rebuilt; changed options rebuild it."""
    fake = stand_in()
    build_engine(tiny_dir, "fp32", BuildOptions(), **QUIET)
    build_engine(tiny_dir, "fp32", BuildOptions(), **QUIET)
    assert fake.names().count("build_serialized_network") == 1
    build_engine(tiny_dir, "fp32", BuildOptions(max_batch=64), **QUIET)
    assert fake.names().count("build_serialized_network") == 2


def test_contract_parser_errors_name_their_nodes(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: each parser error is reported with its node; nothing is written."""
    stand_in(parse_ok=False)
    before = _files(tiny_dir)
    with pytest.raises(BadInputError, match=r"node 7 \(/layer1/conv: Conv\): unsupported grouping"):
        build_engine(tiny_dir, "fp32", BuildOptions(), **QUIET)
    assert _files(tiny_dir) == before


def test_contract_failed_build_writes_nothing(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: a None plan is an error, and no engine or manifest appears."""
    stand_in(plan=None)
    before = _files(tiny_dir)
    with pytest.raises(BadInputError, match="could not build"):
        build_engine(tiny_dir, "fp32", BuildOptions(), **QUIET)
    assert _files(tiny_dir) == before


# --- TensorRTRunner refusals (checked before TensorRT is touched) ------------------------------------------------


@pytest.fixture
def built(tiny_dir: Path, stand_in, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An engine file and manifest as build_engine writes them (stand-in plan bytes), TensorRT then removed."""
    stand_in()
    path = build_engine(tiny_dir, "fp32", BuildOptions(), **QUIET)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(probe, "tensorrt_status", REAL_TENSORRT_STATUS)
    monkeypatch.setattr(probe, "gpu_info", REAL_GPU_INFO)
    return path


def test_runner_refuses_an_engine_without_its_manifest(built: Path):
    engine_manifest_path(built).unlink()
    with pytest.raises(BadInputError, match=r"engine\.json is missing"):
        TensorRTRunner(built)


def test_runner_refuses_an_edited_manifest(built: Path):
    path = engine_manifest_path(built)
    meta = json.loads(path.read_text())
    meta["compute_capability"] = "9.0"
    path.write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match="edited"):
        TensorRTRunner(built)


def test_runner_refuses_a_manifest_that_is_not_json(built: Path):
    engine_manifest_path(built).write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        TensorRTRunner(built)


def test_runner_refuses_a_replaced_plan(built: Path):
    built.write_bytes(b"SOMEONE ELSE'S PLAN")
    with pytest.raises(BadInputError, match="sha256 differs"):
        TensorRTRunner(built)


def test_runner_without_tensorrt_is_unavailable_after_the_checks(built: Path):
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        TensorRTRunner(built)


def test_runner_refuses_an_engine_from_another_setup(built: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(probe, "tensorrt_status", lambda: None)
    monkeypatch.setattr(probe, "tensorrt_version", lambda: "10.14.1.48")
    monkeypatch.setattr(probe, "gpu_info", lambda: STAND_IN_GPU)
    with pytest.raises(BadInputError, match=r"TensorRT 10\.13\.3\.9, this is TensorRT 10\.14\.1\.48.*build-trt"):
        TensorRTRunner(built)


@pytest.mark.parametrize(
    ("built_with", "options", "installed", "capability", "allowed"),
    [
        ("10.13.3.9", {}, "10.13.3.9", "8.6", True),
        ("10.13.3.9", {}, "10.14.1.48", "8.6", False),
        ("10.13.3.9", {"version_compatible": True}, "11.4.0.106", "8.6", True),
        ("11.4.0.106", {"version_compatible": True}, "10.13.3.9", "8.6", False),  # never backwards
        ("10.13.3.9", {}, "10.13.3.9", "8.9", False),
        ("10.13.3.9", {"hardware_compat": "ampere+"}, "10.13.3.9", "9.0", True),
        ("10.13.3.9", {"hardware_compat": "ampere+"}, "10.13.3.9", "7.5", False),
        ("10.13.3.9", {"hardware_compat": "same-cc"}, "10.13.3.9", "8.9", False),
    ],
)
def test_compatibility_rules(tiny_dir: Path, built_with, options, installed, capability, allowed):
    engine = tiny_dir / "model.fp32.engine"
    engine.write_bytes(b"plan")
    body = stand_in_engine_manifest(engine, tensorrt_version=built_with, build_options=BuildOptions(**options))
    check = lambda: engine_manifest.check_compatible(body, Path("d/model.fp32.engine"), installed, capability)  # noqa: E731
    if allowed:
        check()
    else:
        with pytest.raises(BadInputError, match="rebuild it on this machine"):
            check()


# --- the defects of the line-by-line review (issue 12) -------------------------------------------------------------


@pytest.mark.parametrize(("cuda", "extra"), [("12.8", "tensorrt-cu12"), ("13.0", "tensorrt-cu13")])
def test_install_hint_names_the_extra_of_torchs_cuda_major(monkeypatch: pytest.MonkeyPatch, cuda: str, extra: str):
    import torch

    monkeypatch.setattr(torch.version, "cuda", cuda)
    assert f"'resnext-deploy[{extra}]'" in probe.install_hint()


def test_install_hint_without_a_cuda_torch_names_both_extras(monkeypatch: pytest.MonkeyPatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    hint = probe.install_hint()
    assert "[tensorrt-cu12]" in hint and "[tensorrt-cu13]" in hint


def test_tensorrt_extras_are_per_cuda_major_and_bounded_to_the_supported_range():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "tensorrt" not in extras  # the bare metapackage follows the newest CUDA build, not torch's
    for cuda in ("12", "13"):
        deps = extras[f"tensorrt-cu{cuda}"]
        assert f"tensorrt-cu{cuda}>=10.8,<12" in deps
        assert any(dep.startswith("polygraphy") for dep in deps)


def test_contract_null_builder_is_backend_unavailable_with_tensorrt_log(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: pybind11's TypeError for a NULL builder becomes exit 4, with the log."""
    stand_in(null_factories=True)
    before = _files(tiny_dir)
    with pytest.raises(BackendUnavailableError) as info:
        build_engine(tiny_dir, "fp32", BuildOptions(), **QUIET)
    message = str(info.value)
    assert info.value.exit_code == ExitCode.BACKEND_UNAVAILABLE
    assert "could not create a builder (CUDA initialization failure with error: 35)" in message
    assert "driver" in message and "resnext-deploy[tensorrt-cu1" in message
    assert _files(tiny_dir) == before


def test_contract_null_runtime_makes_tensorrt_unavailable(stand_in, monkeypatch: pytest.MonkeyPatch):
    """Contract test, not TensorRT coverage: the availability probe creates a Runtime and reports a NULL one."""
    stand_in(null_factories=True)
    monkeypatch.setattr(probe, "cuda_available", lambda: True)
    reason = REAL_TENSORRT_STATUS()
    assert reason is not None and "could not create a runtime (CUDA initialization failure" in reason


def test_contract_info_says_when_tensorrt_cannot_create_a_runtime(stand_in, monkeypatch: pytest.MonkeyPatch):
    """Contract test, not TensorRT coverage: `info` reports the version and whether a Runtime can be made."""
    stand_in("10.13.3.9", null_factories=True)
    monkeypatch.setattr(probe, "cuda_available", lambda: True)
    summary = probe.summary()
    assert summary.startswith("10.13.3.9 (cannot run here: TensorRT 10.13.3.9 could not create a runtime")
    stand_in("10.13.3.9")
    assert probe.summary() == "10.13.3.9 (creates a runtime)"


def test_contract_runner_with_a_null_runtime_is_backend_unavailable(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: the runner turns a NULL runtime into exit 4, not a TypeError."""
    stand_in()
    path = build_engine(tiny_dir, "fp32", BuildOptions(), **QUIET)
    stand_in(null_factories=True)
    with pytest.raises(BackendUnavailableError, match="could not create a runtime"):
        TensorRTRunner(path)


def test_contract_unreadable_timing_cache_falls_back_to_a_fresh_one(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: create_timing_cache returning None means a fresh cache and a warning."""
    fake = stand_in(cache_readable=False)
    cache = tiny_dir / "trt.cache"
    cache.write_bytes(b"FROM ANOTHER GPU")
    messages: list[str] = []
    build_engine(tiny_dir, "fp32", BuildOptions(timing_cache=cache), log=messages.append)
    creates = [c for c in fake.calls if c[0] == "create_timing_cache"]
    assert creates == [("create_timing_cache", b"FROM ANOTHER GPU"), ("create_timing_cache", b"")]
    assert [c for c in fake.calls if c[0] == "set_timing_cache"] == [("set_timing_cache", False)]
    assert any(m.startswith(f"warning: {cache} is not a timing cache") for m in messages)
    assert cache.read_bytes() == b"CACHE:"  # the fresh cache replaced it after the build


def test_contract_same_cc_on_tensorrt_10_8_says_it_needs_10_9(tiny_dir: Path, stand_in):
    """Contract test, not TensorRT coverage: 10.8 has no SAME_COMPUTE_CAPABILITY; the error names 10.9."""
    stand_in("10.8.0.43", same_cc=False)
    with pytest.raises(BackendUnavailableError, match=r"same-cc needs TensorRT 10\.9 or later, this is 10\.8\.0\.43"):
        build_engine(tiny_dir, "fp32", BuildOptions(hardware_compat="same-cc"), **QUIET)


def test_chunks_are_padded_up_to_the_profile_minimum():
    """Profile 4..8 and 9 images: chunks of 8 and 1, the 1 padded to 4 (set_input_shape would refuse 1)."""
    shapes: list[int] = []

    def run(chunk: np.ndarray) -> np.ndarray:
        shapes.append(len(chunk))
        return chunk.reshape(len(chunk), -1)[:, :2] * 2

    batch = np.arange(9 * 3 * 2 * 2, dtype=np.float32).reshape(9, 3, 2, 2)
    out = run_in_chunks(run, batch, 8, pad_to=4)
    assert shapes == [8, 4]
    np.testing.assert_array_equal(out, batch.reshape(9, -1)[:, :2] * 2)
    shapes.clear()
    assert run_in_chunks(run, batch[:2], 8, pad_to=4).shape == (2, 2) and shapes == [4]


@pytest.mark.parametrize(("count", "expected"), [(9, [8, 4]), (2, [4]), (5, [5]), (17, [8, 8, 4])])
def test_contract_runner_runs_only_batches_its_profile_accepts(count: int, expected: list[int]):
    """Contract test, not TensorRT coverage: the batch sizes TensorRTRunner hands to TensorRT, profile 4..8."""
    runner = TensorRTRunner.__new__(TensorRTRunner)  # no engine: only the chunking in front of it is exercised
    runner.path, runner.min_batch, runner.max_batch, runner.chw = Path("model.fp32.engine"), 4, 8, (3, 2, 2)
    seen: list[int] = []

    def run(chunk: np.ndarray) -> np.ndarray:
        seen.append(len(chunk))
        runner._device_ms += 1.0
        return np.zeros((len(chunk), 10), dtype=np.float32)

    runner._run = run
    assert runner(np.ones((count, 3, 2, 2), dtype=np.float32)).shape == (count, 10)
    assert seen == expected and runner.last_device_ms == len(expected)


def test_trtexec_version_is_read_from_its_banner(tmp_path: Path):
    trtexec = tmp_path / "trtexec"
    trtexec.write_text("#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v101303] [b9] # trtexec --help'\n")
    trtexec.chmod(0o755)
    assert trtexec_tensorrt_version(trtexec) == "10.13.3"
    trtexec.write_text("#!/bin/sh\necho 'no banner'\n")
    assert trtexec_tensorrt_version(trtexec) is None
    assert trtexec_tensorrt_version(tmp_path / "missing") is None
