"""TensorRT engines: one strongly typed build for TensorRT 10.x and 11.x, the engine manifest, and the runner.

The build makes no precision decision of its own: it parses ``model.onnx``, ``model.fp16.onnx`` or
``model.int8.onnx`` into a strongly typed network (the creation flag on 10.x, the only mode on 11.x), so
the types the graph carries are the types TensorRT runs. TF32 is switched off for every build: it would
round the graph's FP32 tensors to a 10-bit mantissa, which is a precision choice the graph did not make
(and what makes "FP32" engines drift from PyTorch).

Security: a TensorRT engine is executable code (its kernels, and in a version-compatible engine a whole
TensorRT runtime, run on your machine with your privileges). Load only engines you built yourself or
received from someone you trust, the same rule as for pickled checkpoints. :class:`TensorRTRunner`
refuses an engine whose bytes differ from the manifest written beside it, which catches corruption and
accidental swaps, but the manifest is not a signature and cannot vouch for an engine from a stranger.

``tensorrt`` is imported inside the functions that need it, so this module imports on any machine.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import (
    ONNX_FILES,
    Manifest,
    engine_file,
    load_onnx,
    now_iso,
    read_json,
    write_bytes,
    write_json,
)
from .environment import tensorrt_version
from .errors import BackendUnavailableError, BadInputError
from .runners import Runner, run_in_chunks

HARDWARE_COMPAT = {"ampere+": "ampere+", "same-cc": "sameComputeCapability"}  # ours -> trtexec's spelling
MAX_OPT_LEVEL = 5
ENGINE_MANIFEST_FORMAT = 1
INSTALL_HINT = "pip install 'resnext-deploy[tensorrt]' on a machine with an NVIDIA GPU"


@dataclass
class BuildOptions:
    """The optimization profile and builder settings; precision is not among them (it is in the ONNX graph)."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mb: int | None = None
    opt_level: int | None = None
    timing_cache: Path | None = None
    hardware_compat: str | None = None  # "ampere+" | "same-cc"
    version_compatible: bool = False

    def validate(self) -> None:
        """Reject settings TensorRT would only refuse after parsing the model."""
        if self.min_batch < 1:
            raise BadInputError(f"--min-batch must be at least 1, got {self.min_batch}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise BadInputError(
                f"the profile needs min <= opt <= max batch; got {self.min_batch} <= {self.opt_batch} <= "
                f"{self.max_batch}"
            )
        if self.opt_level is not None and not 0 <= self.opt_level <= MAX_OPT_LEVEL:
            raise BadInputError(f"--opt-level must be between 0 and {MAX_OPT_LEVEL}, got {self.opt_level}")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise BadInputError(f"--workspace-mb must be at least 1, got {self.workspace_mb}")
        if self.hardware_compat is not None and self.hardware_compat not in HARDWARE_COMPAT:
            raise BadInputError(
                f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT)}, got {self.hardware_compat!r}"
            )
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise BadInputError(f"--timing-cache {self.timing_cache} is a directory; pass a file path")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache is not None else None
        return data


def tensorrt_status() -> str | None:
    """None when TensorRT imports and a CUDA GPU is visible; otherwise why not, in one line."""
    try:
        import tensorrt  # noqa: F401 - the import is the question
    except Exception as exc:  # noqa: BLE001 - a broken install is as unusable as a missing one
        return f"TensorRT is not installed or does not import ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    import torch

    if not torch.cuda.is_available():
        return (
            "no CUDA GPU is visible to PyTorch (no device, no driver, or a CPU build of torch); "
            "TensorRT engines are built and run on an NVIDIA GPU"
        )
    return None


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    options: BuildOptions,
    image_size: int | tuple[int, int],
    input_name: str = "input",
    trt_major: int | None = None,
) -> str:
    """The trtexec line that builds the same engine on a GPU machine (TensorRT 10.x form unless told 11).

    The 10.x form passes ``--stronglyTyped``; 11.x no longer needs it (strong typing is the only mode there,
    though its trtexec still accepts the flag), so the default form works with both.
    """
    if trt_major is None:
        installed = tensorrt_version()
        trt_major = _major(installed) if installed else 10
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size

    def shape(batch: int) -> str:
        return f"{input_name}:{batch}x3x{height}x{width}"

    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if trt_major < 11:
        args.append("--stronglyTyped")
    args += [
        f"--minShapes={shape(options.min_batch)}",
        f"--optShapes={shape(options.opt_batch)}",
        f"--maxShapes={shape(options.max_batch)}",
        "--noTF32",
    ]
    if options.workspace_mb is not None:
        args.append(f"--memPoolSize=workspace:{options.workspace_mb}M")
    if options.opt_level is not None:
        args.append(f"--builderOptimizationLevel={options.opt_level}")
    if options.timing_cache is not None:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.hardware_compat is not None:
        args.append(f"--hardwareCompatibilityLevel={HARDWARE_COMPAT[options.hardware_compat]}")
    if options.version_compatible:
        args.append("--versionCompatible")
    return shlex.join(args)


def _onnx_input(path: Path) -> tuple[str, list[int | str]]:
    """The single image input's name and dims (dim_param names for dynamic axes), read without weights."""
    model = load_onnx(path, load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BadInputError(f"{path} must have one image input; found {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
        raise BadInputError(f"{path}: input {inputs[0].name!r} must be NCHW with fixed C, H and W; got {dims}")
    return inputs[0].name, dims


def _calibration_fingerprint(entry: dict[str, Any]) -> str | None:
    """The calibration set's fingerprint recorded with an INT8 ONNX file (top level or in its options)."""
    return entry.get("calibration_fingerprint") or entry.get("options", {}).get("calibration_fingerprint")


def _gpu_info() -> dict[str, Any]:
    """The current CUDA device as the engine manifest records it."""
    import torch

    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "driver_version": _driver_version(index),
        "cuda_runtime": torch.version.cuda,
    }


def _driver_version(index: int) -> str | None:
    """The NVIDIA driver version from nvidia-smi; None where it cannot be asked (it is informational)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _make_logger(trt, log: Callable[[str], None]):
    """A TensorRT logger that forwards warnings and keeps errors for the exception message."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log(f"TensorRT: {msg}")

    return _Logger()


def _parser_errors(parser) -> list[str]:
    """Every ONNX parser error with the node it names, so a user can find it in Netron."""
    errors = []
    for index in range(parser.num_errors):
        err = parser.get_error(index)
        where = f"node {err.node()}" if err.node() >= 0 else "graph"
        if err.node_name() or err.node_operator():
            where += f" ({err.node_name() or '?'}: {err.node_operator() or '?'})"
        errors.append(f"{where}: {err.desc()}")
    return errors


def engine_manifest_path(engine_path: str | Path) -> Path:
    """``model.<precision>.engine.json`` beside the engine."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in body.items() if k != "checksum"}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class TensorRTUnavailableError(BackendUnavailableError):
    """No TensorRT or no GPU here; ``command`` is the trtexec line that makes the same engine elsewhere."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command


def build_engine(
    directory: str | Path,
    precision: str,
    options: BuildOptions,
    log: Callable[[str], None] = print,
    trt_major: int | None = None,
) -> Path:
    """Build ``DIR/model.<precision>.engine`` and its manifest from the precision's typed ONNX file.

    Without TensorRT or a GPU nothing is written and :class:`TensorRTUnavailableError` carries the
    equivalent trtexec line (for ``trt_major``; default: the installed major, else 10). An engine
    already built from the same ONNX file with the same options, TensorRT version and GPU is reused.
    """
    if precision not in ONNX_FILES:
        raise BadInputError(f"unknown precision {precision!r}; use one of {', '.join(ONNX_FILES)}")
    options.validate()
    directory = Path(directory)
    manifest = Manifest(directory)
    onnx_name = ONNX_FILES[precision]
    make = "resnext-deploy export" if precision == "fp32" else f"resnext-deploy build-trt --{precision}"
    onnx_entry = manifest.require(onnx_name, f"`{make} --dir {directory}` makes it")
    onnx_path = directory / onnx_name
    engine_path = directory / engine_file(precision)
    input_name, dims = _onnx_input(onnx_path)
    size = ((manifest.entry(ONNX_FILES["fp32"]) or {}).get("options") or {}).get("source", {}).get("image_size")
    if size is not None and dims[1:] != [3, size, size]:
        raise BadInputError(
            f"{onnx_path} takes {'x'.join(map(str, dims[1:]))} images, but its model was exported for "
            f"3x{size}x{size}; the file does not fit its manifest entry: export again"
        )
    if isinstance(dims[0], int) and not options.min_batch == options.opt_batch == options.max_batch == dims[0]:
        raise BadInputError(
            f"{onnx_path} has a fixed batch of {dims[0]}; export with a dynamic batch, or build with "
            f"--min-batch/--opt-batch/--max-batch {dims[0]}"
        )
    reason = tensorrt_status()
    if reason is not None:
        command = trtexec_command(onnx_path, engine_path, options, (dims[2], dims[3]), input_name, trt_major)
        raise TensorRTUnavailableError(f"{reason}. The same build on a GPU machine: {command}", command)

    version = str(tensorrt_version())
    gpu = _gpu_info()
    recorded_options = {**options.to_dict(), "tensorrt": version, "compute_capability": gpu["compute_capability"]}
    if manifest.is_current(engine_path.name, onnx_entry["sha256"], recorded_options) and _has_manifest(engine_path):
        log(f"{engine_path} is up to date (same ONNX file, options, TensorRT and GPU); reusing it")
        return engine_path

    plan, build_seconds = _build_plan(onnx_path, precision, options, version, log)
    profile = {
        "input": input_name,
        "min": [options.min_batch, *dims[1:]],
        "opt": [options.opt_batch, *dims[1:]],
        "max": [options.max_batch, *dims[1:]],
    }
    body = {
        "format": ENGINE_MANIFEST_FORMAT,
        "engine": engine_path.name,
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "plan_bytes": len(plan),
        "precision": precision,
        "source_onnx": onnx_name,
        "source_onnx_sha256": onnx_entry["sha256"],
        "calibration_fingerprint": _calibration_fingerprint(onnx_entry),
        "tensorrt_version": version,
        **gpu,
        "profile": profile,
        "strongly_typed": True,
        "tf32": False,
        "build_options": options.to_dict(),
        "build_seconds": round(build_seconds, 3),
        "built": now_iso(),
    }
    body["checksum"] = _checksum(body)
    write_bytes(engine_path, plan)
    write_json(engine_manifest_path(engine_path), body)
    manifest.record(
        engine_path.name,
        precision,
        parent_sha256=onnx_entry["sha256"],
        options=recorded_options,
        engine_manifest=engine_manifest_path(engine_path).name,
        tensorrt_version=version,
        gpu=gpu["gpu"],
        profile=profile,
    )
    log(f"wrote {engine_path} ({len(plan) / 2**20:.1f} MiB, built in {build_seconds:.1f} s) and its manifest")
    return engine_path


def _has_manifest(engine_path: Path) -> bool:
    try:
        read_engine_manifest(engine_path)
    except BadInputError:
        return False
    return True


def _build_plan(
    onnx_path: Path, precision: str, options: BuildOptions, version: str, log: Callable[[str], None]
) -> tuple[bytes, float]:
    """Parse, configure and build; returns the serialized plan and the build time in seconds."""
    import tensorrt as trt

    logger = _make_logger(trt, log)
    builder = trt.Builder(logger)
    if _major(version) >= 11:
        network = builder.create_network()  # every network is strongly typed on 11.x
    else:
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))  # trt-api: 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or logger.errors or ["no detail given"]
        raise BadInputError(f"TensorRT {version}'s ONNX parser rejected {onnx_path}: {'; '.join(errors)}")
    if network.num_inputs != 1:
        raise BadInputError(f"{onnx_path} must have one image input; TensorRT sees {network.num_inputs}")
    image = network.get_input(0)
    chw = tuple(image.shape)[1:]

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(image.name, (options.min_batch, *chw), (options.opt_batch, *chw), (options.max_batch, *chw))
    config.add_optimization_profile(profile)
    config.clear_flag(trt.BuilderFlag.TF32)
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif options.hardware_compat == "same-cc":
        try:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
        except AttributeError:
            raise BackendUnavailableError(
                f"TensorRT {version} has no same-compute-capability level; upgrade TensorRT or use ampere+"
            ) from None
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache_path = Path(options.timing_cache) if options.timing_cache is not None else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        if not config.set_timing_cache(cache, False):
            log(f"{cache_path} was made for another GPU or TensorRT version; starting a fresh timing cache")
            config.set_timing_cache(config.create_timing_cache(b""), False)

    precision_note = "FP32" if precision == "fp32" else f"{precision.upper()} as typed in the graph"
    log(f"building {precision_note} engine from {onnx_path.name} with TensorRT {version} (this can take minutes)")
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        detail = "; ".join(logger.errors[-3:]) or "no detail given"
        raise BadInputError(f"TensorRT {version} could not build an engine from {onnx_path}: {detail}")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan), seconds


def build_trt_command(engine_path: Path) -> str:
    """The build-trt line that makes this engine again (its precision read from the file name; no flag is FP32)."""
    precision = next((p for p in ONNX_FILES if engine_path.name == engine_file(p)), "fp32")
    flag = "" if precision == "fp32" else f" --{precision}"
    return f"resnext-deploy build-trt --dir {engine_path.parent}{flag}"


def read_engine_manifest(engine_path: str | Path) -> dict[str, Any]:
    """The ``.engine.json`` beside an engine, checked against its own checksum; refuses a missing or edited one."""
    engine_path = Path(engine_path)
    path = engine_manifest_path(engine_path)
    rebuild = f"rebuild the engine with `{build_trt_command(engine_path)}`"
    if not engine_path.exists():
        raise BadInputError(f"{engine_path} does not exist; {rebuild}")
    if not path.exists():
        raise BadInputError(
            f"{path} is missing; an engine is loaded only with the manifest build-trt writes beside it "
            f"(TensorRT version, GPU, profile, plan sha256); {rebuild}"
        )
    body = read_json(path)
    if not isinstance(body, dict) or body.get("format") != ENGINE_MANIFEST_FORMAT or "checksum" not in body:
        raise BadInputError(f"{path} is not a resnext-deploy engine manifest; {rebuild}")
    if _checksum(body) != body["checksum"]:
        raise BadInputError(f"{path} was edited after the build (its checksum no longer matches); {rebuild}")
    return body


def _check_compatible(body: dict[str, Any], engine_path: Path, installed: str, capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU unless it was built to move."""
    options = body.get("build_options", {})
    built, cc = body.get("tensorrt_version", "unknown"), body.get("compute_capability", "unknown")
    rebuild = (
        f"rebuild it on this machine with `{build_trt_command(engine_path)}` (add --hardware-compat ampere+ "
        "and/or --version-compatible to build engines that move between GPUs or TensorRT versions)"
    )
    if built != installed:
        newer_ok = options.get("version_compatible") and _version_tuple(installed) >= _version_tuple(built)
        if not newer_ok:
            raise BadInputError(
                f"{engine_path} was built with TensorRT {built}, this is TensorRT {installed}; {rebuild}"
            )
    if cc != capability:
        ampere_ok = options.get("hardware_compat") == "ampere+" and int(capability.split(".")[0]) >= 8
        if not ampere_ok:
            raise BadInputError(
                f"{engine_path} was built for compute capability {cc} ({body.get('gpu', 'unknown GPU')}), "
                f"this GPU is {capability}; {rebuild}"
            )


class TensorRTRunner(Runner):
    """A TensorRT engine behind the runner interface, with torch CUDA tensors as its device buffers.

    Only open engines you built or trust: an engine is executable code (see the module docstring).
    """

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: str | Path) -> None:
        self.path = Path(engine_path)
        self.artifact = self.path.name
        meta = read_engine_manifest(self.path)
        plan = self.path.read_bytes()
        if hashlib.sha256(plan).hexdigest() != meta.get("plan_sha256"):
            raise BadInputError(
                f"{self.path} is not the engine its manifest describes (sha256 differs): it was replaced or "
                f"corrupted; rebuild it with `{build_trt_command(self.path)}`"
            )
        reason = tensorrt_status()
        if reason is not None:
            raise BackendUnavailableError(reason)
        installed = str(tensorrt_version())
        _check_compatible(meta, self.path, installed, _gpu_info()["compute_capability"])
        import tensorrt as trt
        import torch

        self._torch = torch
        self.meta = meta
        self.precision = meta["precision"]

        self._logger = _make_logger(trt, lambda _m: None)
        self._runtime = trt.Runtime(self._logger)
        if meta.get("build_options", {}).get("version_compatible"):
            # The plan carries its own lean runtime (host code); the sha256 check above is what lets us trust it.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            detail = "; ".join(self._logger.errors[-3:]) or "no detail given"
            raise BadInputError(f"TensorRT {installed} cannot load {self.path}: {detail}")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(f"{self.path} must have one input and one output; found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        try:
            self._input_dtype = dtypes[self._engine.get_tensor_dtype(self.input_name)]
            self._output_dtype = dtypes[self._engine.get_tensor_dtype(self.output_name)]
        except KeyError:
            raise BadInputError(f"{self.path} has I/O types other than float32/float16; rebuild it") from None
        low, _opt, high = (tuple(s) for s in self._engine.get_tensor_profile_shape(self.input_name, 0))
        self.min_batch, self.max_batch, self.chw = low[0], high[0], tuple(high[1:])
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailableError(
                f"TensorRT could not create an execution context for {self.path} (GPU memory?)"
            )
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(self._device)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.chw or len(batch) == 0:
            raise BadInputError(f"{self.path} takes N x {' x '.join(map(str, self.chw))} batches; got {batch.shape}")
        self._device_ms = 0.0
        if len(batch) > self.max_batch:
            out = run_in_chunks(self._run, batch, self.max_batch)
        elif len(batch) < self.min_batch:
            out = run_in_chunks(self._run, batch, self.min_batch, pad=True)
        else:
            out = self._run(batch)
        self.last_device_ms = self._device_ms
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(batch).to(self._device).to(self._input_dtype).contiguous()
            if not self._context.set_input_shape(self.input_name, tuple(x.shape)):
                raise BadInputError(f"batch shape {tuple(x.shape)} is outside {self.path}'s optimization profile")
            y = torch.empty(
                tuple(self._context.get_tensor_shape(self.output_name)), dtype=self._output_dtype, device=self._device
            )
            self._context.set_tensor_address(self.input_name, x.data_ptr())
            self._context.set_tensor_address(self.output_name, y.data_ptr())
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(self._stream)
            ok = self._context.execute_async_v3(self._stream.cuda_stream)
            end.record(self._stream)
            if not ok:
                raise BadInputError(f"TensorRT failed to run {self.path}: {'; '.join(self._logger.errors[-3:])}")
            out = y.float().cpu().numpy()  # waits for the stream
        end.synchronize()
        self._device_ms += start.elapsed_time(end)
        return out

    def close(self) -> None:
        self._context = self._engine = self._runtime = None
