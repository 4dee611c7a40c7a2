"""Strongly typed engine builds for TensorRT 10.x and 11.x, from exactly one typed ONNX file.

The build makes no precision decision of its own: it parses ``model.onnx``, ``model.fp16.onnx`` or
``model.int8.onnx`` into a strongly typed network (the creation flag on 10.x, the only mode on 11.x), so
the types the graph carries are the types TensorRT runs. TF32 is switched off for every build: it would
round the graph's FP32 tensors to a 10-bit mantissa, which is a precision choice the graph did not make
(and what makes "FP32" engines drift from PyTorch).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...artifacts import (
    ONNX_FILES,
    ArtifactEntry,
    EngineProfile,
    Manifest,
    engine_file,
    load_onnx,
    now_iso,
    recorded_step,
    single_input,
    write_bytes,
    write_json,
)
from ...errors import BackendUnavailableError, BadInputError
from ...serde import encode
from ...source import recorded_source
from . import probe
from .manifest import EngineManifest, engine_manifest_path, read_engine_manifest
from .options import BuildOptions, EngineOptions
from .probe import GpuInfo, TensorRTUnavailableError, factory_failed, major_version, make_logger
from .trtexec import trtexec_command

if TYPE_CHECKING:  # for annotations only: tensorrt is imported where it is used
    import tensorrt as trt


def _onnx_input(path: Path) -> tuple[str, int | str, tuple[int, int, int]]:
    """The single image input's name, batch dim (a dim_param name when dynamic) and fixed C, H, W, without weights."""
    name, dims = single_input(load_onnx(path, load_external_data=False), path)
    if len(dims) == 4:
        batch, c, h, w = dims
        if isinstance(c, int) and isinstance(h, int) and isinstance(w, int):
            return name, batch, (c, h, w)
    raise BadInputError(f"{path}: input {name!r} must be NCHW with fixed C, H and W; got {dims}")


def _parser_errors(parser: trt.OnnxParser) -> list[str]:
    """Every ONNX parser error with the node it names, so a user can find it in Netron."""
    errors = []
    for index in range(parser.num_errors):
        err = parser.get_error(index)
        where = f"node {err.node()}" if err.node() >= 0 else "graph"
        if err.node_name() or err.node_operator():
            where += f" ({err.node_name() or '?'}: {err.node_operator() or '?'})"
        errors.append(f"{where}: {err.desc()}")
    return errors


def engine_manifest_body(
    onnx_entry: ArtifactEntry,
    engine_name: str,
    plan: bytes,
    precision: str,
    options: BuildOptions,
    version: str,
    gpu: GpuInfo,
    profile: EngineProfile,
    build_seconds: float,
) -> EngineManifest:
    """What ``model.<precision>.engine.json`` records about a built plan, its checksum included.

    Apart from the build, so that what an engine would record (the calibration fingerprint of its typed ONNX
    file among it) is made and tested without TensorRT.
    """
    return EngineManifest(
        engine=engine_name,
        plan_sha256=hashlib.sha256(plan).hexdigest(),
        plan_bytes=len(plan),
        precision=precision,
        source_onnx=onnx_entry.name,
        source_onnx_sha256=onnx_entry.sha256,
        calibration_fingerprint=onnx_entry.calibration_fingerprint,
        tensorrt_version=version,
        gpu_info=gpu,
        profile=profile,
        build_options=options,
        build_seconds=round(build_seconds, 3),
        built=now_iso(),
    ).sealed()


def build_engine(
    directory: str | Path,
    precision: str,
    options: BuildOptions,
    log: Callable[[str], None] = print,
    trt_major: int | None = None,
    relative_to: str | Path | None = None,
) -> Path:
    """Build ``DIR/model.<precision>.engine`` and its manifest from the precision's typed ONNX file.

    Without TensorRT or a GPU nothing is written and :class:`TensorRTUnavailableError` carries the
    equivalent trtexec line (for ``trt_major``; default: the installed major, else 10), its paths
    absolute, or relative to ``relative_to`` (a report's directory). An engine
    already built from the same ONNX file with the same options, TensorRT version and GPU is reused.
    """
    if precision not in ONNX_FILES:
        raise BadInputError(f"unknown precision {precision!r}; use one of {', '.join(ONNX_FILES)}")
    directory = Path(directory)
    manifest = Manifest(directory)
    onnx_name = ONNX_FILES[precision]
    make = "resnext-deploy export" if precision == "fp32" else f"resnext-deploy build-trt --{precision}"
    onnx_entry = manifest.require(onnx_name, f"`{make} --dir {directory}` makes it")
    onnx_path = directory / onnx_name
    engine_path = directory / engine_file(precision)
    input_name, batch, chw = _onnx_input(onnx_path)
    size = recorded_source(manifest).image_size
    if chw != (3, size, size):
        raise BadInputError(
            f"{onnx_path} takes {'x'.join(map(str, chw))} images, but its model was exported for "
            f"3x{size}x{size}; the file does not fit its manifest entry: export again"
        )
    if isinstance(batch, int) and not options.min_batch == options.opt_batch == options.max_batch == batch:
        raise BadInputError(
            f"{onnx_path} has a fixed batch of {batch}; export with a dynamic batch, or build with "
            f"--min-batch/--opt-batch/--max-batch {batch}"
        )
    reason = probe.tensorrt_status()
    if reason is not None:
        command = trtexec_command(onnx_path, engine_path, options, chw[1:], input_name, trt_major, relative_to)
        raise TensorRTUnavailableError(
            f"no engine built: {reason}; the trtexec line (printed by build-trt on stdout) makes it on a GPU "
            f"machine, and `build-trt --onnx-only` stops after the {onnx_path.name} file without this error",
            command,
        )

    version = str(probe.tensorrt_version())
    gpu = probe.gpu_info()
    recorded_options = EngineOptions(options, version, gpu.compute_capability)
    if manifest.is_current(engine_path.name, onnx_entry.sha256, recorded_options) and _has_manifest(engine_path):
        log(f"{engine_path} is up to date (same ONNX file, options, TensorRT and GPU); reusing it")
        return engine_path

    plan, build_seconds = _build_plan(onnx_path, precision, options, version, log)
    profile = EngineProfile(input_name, (options.min_batch, *chw), (options.opt_batch, *chw), (options.max_batch, *chw))
    body = engine_manifest_body(
        onnx_entry, engine_path.name, plan, precision, options, version, gpu, profile, build_seconds
    )
    record_engine(manifest, engine_path, plan, body, recorded_options)
    log(f"wrote {engine_path} ({len(plan) / 2**20:.1f} MiB, built in {build_seconds:.1f} s) and its manifest")
    return engine_path


def record_engine(
    manifest: Manifest, engine_path: Path, plan: bytes, body: EngineManifest, options: EngineOptions
) -> None:
    """Write the plan and its engine manifest beside it, and record the engine in ``manifest.json``.

    Apart from the build, so that what a built engine leaves in the directory is written and read back in
    tests without TensorRT.
    """
    write_bytes(engine_path, plan)
    write_json(engine_manifest_path(engine_path), encode(body))
    manifest.record(
        engine_path.name,
        body.precision,
        parent_sha256=body.source_onnx_sha256,
        options=options,
        engine_manifest=engine_manifest_path(engine_path).name,
        tensorrt_version=body.tensorrt_version,
        gpu=body.gpu_info.gpu,
        profile=body.profile,
    )


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

    errors: list[str] = []
    logger = make_logger(errors, log)
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:
        raise factory_failed("builder", errors, exc) from None
    if major_version(version) >= 11:
        network = builder.create_network()  # every network is strongly typed on 11.x
    else:
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        details = _parser_errors(parser) or errors or ["no detail given"]
        raise BadInputError(f"TensorRT {version}'s ONNX parser rejected {onnx_path}: {'; '.join(details)}")
    if network.num_inputs != 1:
        raise BadInputError(f"{onnx_path} must have one image input; TensorRT sees {network.num_inputs}")
    image = network.get_input(0)
    chw = tuple(image.shape)[1:]

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(image.name, (options.min_batch, *chw), (options.opt_batch, *chw), (options.max_batch, *chw))
    config.add_optimization_profile(profile)
    config.clear_flag(trt.BuilderFlag.TF32)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # inspect's per-layer view: tactics, types, ONNX names
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif options.hardware_compat == "same-cc":
        # SAME_COMPUTE_CAPABILITY exists from TensorRT 10.9; the project supports 10.8.
        same_cc: trt.HardwareCompatibilityLevel | None = getattr(
            trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY", None
        )
        if same_cc is None:
            raise BackendUnavailableError(
                f"--hardware-compat same-cc needs TensorRT 10.9 or later, this is {version}; upgrade TensorRT or "
                "use ampere+"
            )
        config.hardware_compatibility_level = same_cc
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache_path = Path(options.timing_cache) if options.timing_cache is not None else None
    if cache_path is not None:
        _use_timing_cache(config, cache_path, log)

    precision_note = "FP32" if precision == "fp32" else f"{precision.upper()} as typed in the graph"
    log(f"building {precision_note} engine from {onnx_path.name} with TensorRT {version} (this can take minutes)")
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        detail = "; ".join(errors[-3:]) or "no detail given"
        raise BadInputError(f"TensorRT {version} could not build an engine from {onnx_path}: {detail}")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan), seconds


def _use_timing_cache(config: trt.IBuilderConfig, path: Path, log: Callable[[str], None]) -> None:
    """Load the timing cache at ``path`` into ``config``, or a fresh one when it is missing or unusable.

    ``create_timing_cache`` returns None for a corrupt cache or one from another TensorRT version (TensorRT's
    own samples check for it), and ``set_timing_cache`` refuses one from another GPU; either way the build
    goes on with an empty cache, which is saved over the old file after a successful build.
    """
    cache = config.create_timing_cache(path.read_bytes()) if path.exists() else None
    if cache is not None and config.set_timing_cache(cache, False):
        return
    if path.exists():
        log(f"warning: {path} is not a timing cache this TensorRT and GPU can use; starting a fresh one")
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise BackendUnavailableError(f"TensorRT could not create an empty timing cache for {path}")


def build_engines(directory: Path, options: BuildOptions, log: Callable[[str], None]) -> dict[str, str]:
    """Build the engines of the typed files that exist, or say once why not and list the trtexec lines that would."""
    reason = probe.tensorrt_status()
    if reason is None:
        for precision in [p for p in ONNX_FILES if Manifest(directory).entry(ONNX_FILES[p])]:
            log(f"== TensorRT {precision.upper()} engine")
            with recorded_step(directory, f"{precision} engine"):
                build_engine(directory, precision, options, log=log)
    skipped = record_engines_skipped(directory, options, reason)
    if reason is not None:
        log(f"TensorRT engines skipped: {reason}")
    return skipped


def record_engines_skipped(directory: Path, options: BuildOptions, reason: str | None) -> dict[str, str]:
    """Record in the manifest why no engine was built here, with the trtexec lines that build them on a GPU.

    ``pipeline`` and ``build-trt`` both record it, so ``report`` lists it whichever made the directory; with
    ``reason`` None (engines were built) the record is cleared.
    """
    commands = []
    for precision in [p for p in ONNX_FILES if reason is not None and Manifest(directory).entry(ONNX_FILES[p])]:
        try:
            build_engine(directory, precision, options, relative_to=directory)
        except TensorRTUnavailableError as exc:
            commands.append(exc.command)
    where = "To build them on a GPU machine, from the directory that holds this report:"
    skipped = {} if reason is None else {"tensorrt": f"{reason}. {where}\n" + "\n".join(commands)}
    Manifest(directory).record_skipped("tensorrt", skipped.get("tensorrt"))
    return skipped
