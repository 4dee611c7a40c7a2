"""The main job: export, FP16, calibrated INT8, TensorRT engines where possible, verify, bench, report.

Each step reuses what an earlier (possibly interrupted) run finished, by sha256 in the manifest, so a
second run after Ctrl-C redoes only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import PRECISIONS, Manifest
from .engine import BuildOptions, TensorRTUnavailableError, build_engine, tensorrt_status
from .export import export_onnx
from .precision import DEFAULT_CALIB_COUNT, DEFAULT_METHOD, make_typed_onnx
from .source import ModelSource


@dataclass
class PipelineOptions:
    calib_dir: Path | None = None
    calib_count: int = DEFAULT_CALIB_COUNT
    calib_method: str = DEFAULT_METHOD
    data: Path | None = None
    count: int | None = None
    batch_sizes: Sequence[int] = (1, 8, 32)
    warmup_ms: float = 200.0
    duration_s: float = 3.0
    threads: int | None = None
    build: BuildOptions = field(default_factory=BuildOptions)


@dataclass
class PipelineResult:
    report: Path
    verified: bool
    failure_summary: str
    skipped: dict[str, str]


def run_pipeline(
    source: ModelSource, directory: Path, options: PipelineOptions, log: Callable[[str], None] = print
) -> PipelineResult:
    """Run every step in order; the caller holds the directory lock."""
    from .bench import run_bench
    from .report import write_report
    from .verify import BACKENDS, run_verify

    options.build.validate()
    log("== export (FP32 ONNX)")
    export_onnx(source, directory, log=log)
    for precision in ("fp16", "int8"):
        log(f"== {precision.upper()} ONNX")
        make_typed_onnx(
            directory,
            precision,
            calib_source=options.calib_dir,
            calib_count=options.calib_count,
            calib_method=options.calib_method,
            log=log,
        )
    skipped = build_engines(directory, options.build, log)
    log("== verify")
    verified = run_verify(directory, data=options.data, count=options.count, log=log)
    log("== bench")
    run_bench(
        directory,
        BACKENDS,
        PRECISIONS,
        options.batch_sizes,
        warmup_ms=options.warmup_ms,
        duration_s=options.duration_s,
        threads=options.threads,
        log=log,
    )
    report = write_report(directory, log=log, skipped=skipped)
    return PipelineResult(report, bool(verified), "" if verified else verified.failure_summary(), skipped)


def build_engines(directory: Path, options: BuildOptions, log: Callable[[str], None]) -> dict[str, str]:
    """Build the three engines, or say once why not and list the trtexec lines that would."""
    reason = tensorrt_status()
    manifest = Manifest(directory)
    if reason is None:
        for precision in PRECISIONS:
            log(f"== TensorRT {precision.upper()} engine")
            build_engine(directory, precision, options, log=log)
        manifest.data.pop("skipped", None)
        manifest.save()
        return {}
    commands = []
    for precision in PRECISIONS:
        try:
            build_engine(directory, precision, options, log=log)
        except TensorRTUnavailableError as exc:
            commands.append(exc.command)
    log(f"TensorRT engines skipped: {reason}")
    skipped = {"tensorrt": f"{reason}. To build them on a GPU machine:\n" + "\n".join(commands)}
    manifest.data["skipped"] = skipped
    manifest.save()
    return skipped
