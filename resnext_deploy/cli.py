"""The ``resnext-deploy`` command line: each command is a thin function over one library call.

Known errors become one line on stderr and a documented exit code in :func:`main`; set
``RESNEXT_DEPLOY_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import DeployError, ExitCode, one_line

app = typer.Typer(
    name="resnext-deploy",
    help="ResNeXt from PyTorch to ONNX, FP16/INT8 and TensorRT, with measured parity and speed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DirOption = Annotated[Path, typer.Option("--dir", help="Artifact directory (created if missing).")]
ArchOption = Annotated[
    Optional[str], typer.Option("--arch", help="Registered architecture (see `archs`); default: the demo model.")
]
CheckpointOption = Annotated[
    Optional[Path], typer.Option("--checkpoint", help=".pth/.pt/.bin/.safetensors state dict.")
]
NumClassesOption = Annotated[Optional[int], typer.Option("--num-classes", help="Classifier outputs.")]
ImageSizeOption = Annotated[Optional[int], typer.Option("--image-size", help="Input height and width.")]


def log(message: str) -> None:
    """Progress messages go to stderr so that stdout stays clean for data."""
    typer.echo(message, err=True)


@app.command()
def archs() -> None:
    """List the registered architectures and their defaults."""
    from .models import ARCHS, count_parameters, create_model

    for spec in ARCHS.values():
        params = count_parameters(create_model(spec))
        pre = spec.preprocessing
        typer.echo(
            f"{spec.name:<18} {params / 1e6:7.2f}M params  {spec.num_classes:>4} classes  "
            f"{pre.image_size}px  {spec.description}"
        )


@app.command()
def info() -> None:
    """Versions of torch, onnx, onnxruntime and TensorRT; CUDA devices; ONNX Runtime providers."""
    from .environment import describe

    for key, value in describe().items():
        typer.echo(f"{key:<22} {value}")


@app.command()
def export(
    directory: DirOption,
    arch: ArchOption = None,
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    image_size: ImageSizeOption = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    static_batch: Annotated[
        Optional[int], typer.Option("--static-batch", help="Fixed batch size instead of a dynamic one.")
    ] = None,
) -> None:
    """Export DIR/model.onnx (FP32) and check it against PyTorch in ONNX Runtime."""
    from .artifacts import locked, prepare_dir
    from .export import export_onnx
    from .source import resolve_source

    source = resolve_source(arch, checkpoint, num_classes, image_size)
    directory = prepare_dir(directory)
    with locked(directory):
        export_onnx(source, directory, opset=opset, static_batch=static_batch, log=log)


ExportedDirOption = Annotated[Path, typer.Option("--dir", help="Artifact directory of an earlier export.")]
CalibDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--calib-dir",
        help="Calibration images (folder, recursive) or .npy/.npz of preprocessed arrays. "
        "Default: the bundled digits for the demo model; required for INT8 otherwise.",
    ),
]
CalibCountOption = Annotated[int, typer.Option("--calib-count", help="Calibration images, seeded, class-balanced.")]
CalibMethodOption = Annotated[str, typer.Option("--calib-method", help="entropy, minmax or percentile.")]
_PROFILE = "TensorRT build"


def _build_options(
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_mb: int | None,
    opt_level: int | None,
    timing_cache: Path | None,
    hardware_compat: str | None,
    version_compatible: bool,
):
    from .backends.tensorrt.options import BuildOptions

    options = BuildOptions(
        min_batch, opt_batch, max_batch, workspace_mb, opt_level, timing_cache, hardware_compat, version_compatible
    )
    options.validate()
    return options


MinBatch = Annotated[int, typer.Option("--min-batch", help="Profile minimum batch.", rich_help_panel=_PROFILE)]
OptBatch = Annotated[int, typer.Option("--opt-batch", help="Profile optimum batch.", rich_help_panel=_PROFILE)]
MaxBatch = Annotated[int, typer.Option("--max-batch", help="Profile maximum batch.", rich_help_panel=_PROFILE)]
WorkspaceMb = Annotated[
    Optional[int], typer.Option("--workspace-mb", help="Builder workspace limit (MiB).", rich_help_panel=_PROFILE)
]
OptLevel = Annotated[
    Optional[int], typer.Option("--opt-level", help="Builder optimization level 0-5.", rich_help_panel=_PROFILE)
]
TimingCache = Annotated[
    Optional[Path],
    typer.Option("--timing-cache", help="Loaded when present, saved after.", rich_help_panel=_PROFILE),
]
HardwareCompat = Annotated[
    Optional[str],
    typer.Option("--hardware-compat", help="ampere+ or same-cc.", rich_help_panel=_PROFILE),
]
VersionCompatible = Annotated[
    bool,
    typer.Option("--version-compatible", help="Engine runs on later TensorRT versions.", rich_help_panel=_PROFILE),
]


@app.command("build-trt")
def build_trt(
    directory: ExportedDirOption,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 typed ONNX and engine.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Calibrated INT8 (Q/DQ) ONNX and engine.")] = False,
    calib_dir: CalibDirOption = None,
    calib_count: CalibCountOption = 512,
    calib_method: CalibMethodOption = "entropy",
    percentile: Annotated[float, typer.Option("--percentile", help="For --calib-method percentile.")] = 99.99,
    exclude: Annotated[
        Optional[list[str]], typer.Option("--exclude", help="Node-name glob left unquantized (repeatable).")
    ] = None,
    high_precision: Annotated[
        str, typer.Option("--high-precision", help="What INT8 leaves unquantized runs in: fp16 or fp32.")
    ] = "fp16",
    onnx_only: Annotated[bool, typer.Option("--onnx-only", help="Stop after the typed ONNX file.")] = False,
    trt_major: Annotated[
        Optional[int], typer.Option("--trt-major", help="TensorRT major version for the printed trtexec line.")
    ] = None,
    min_batch: MinBatch = 1,
    opt_batch: OptBatch = 8,
    max_batch: MaxBatch = 32,
    workspace_mb: WorkspaceMb = None,
    opt_level: OptLevel = None,
    timing_cache: TimingCache = None,
    hardware_compat: HardwareCompat = None,
    version_compatible: VersionCompatible = False,
) -> None:
    """Write the typed ONNX file (FP32 without flags), check it in ONNX Runtime, then build the engine.

    Without TensorRT or a GPU, prints the equivalent trtexec line and exits 4.
    """
    from .artifacts import artifact_dir, locked
    from .backends.tensorrt.build import build_engine
    from .backends.tensorrt.probe import TensorRTUnavailableError
    from .errors import BadInputError
    from .precision.typed import make_typed_onnx

    if fp16 and int8:
        raise BadInputError("choose one of --fp16 and --int8 (neither means FP32)")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    options = _build_options(
        min_batch, opt_batch, max_batch, workspace_mb, opt_level, timing_cache, hardware_compat, version_compatible
    )
    directory = artifact_dir(directory)
    with locked(directory):
        make_typed_onnx(
            directory,
            precision,
            calib_source=calib_dir,
            calib_count=calib_count,
            calib_method=calib_method,
            percentile=percentile,
            exclude=tuple(exclude or ()),
            high_precision=high_precision,
            log=log,
        )
        if onnx_only:
            return
        try:
            build_engine(directory, precision, options, log=log, trt_major=trt_major)
        except TensorRTUnavailableError as exc:
            typer.echo(exc.command)
            raise


@app.command()
def pipeline(
    directory: DirOption = Path("artifacts/demo"),
    arch: ArchOption = None,
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    image_size: ImageSizeOption = None,
    calib_dir: CalibDirOption = None,
    calib_count: CalibCountOption = 512,
    calib_method: CalibMethodOption = "entropy",
    data: Annotated[
        Optional[Path], typer.Option("--data", help="verify's images (default: demo validation split or synthetic).")
    ] = None,
    count: Annotated[Optional[int], typer.Option("--count", help="verify uses at most N images.")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="bench batch sizes.")] = "1,8,32",
    duration: Annotated[float, typer.Option("--duration", help="bench seconds per runner and batch size.")] = 3.0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch and ORT.")] = None,
    min_batch: MinBatch = 1,
    opt_batch: OptBatch = 8,
    max_batch: MaxBatch = 32,
    workspace_mb: WorkspaceMb = None,
    opt_level: OptLevel = None,
    timing_cache: TimingCache = None,
    hardware_compat: HardwareCompat = None,
    version_compatible: VersionCompatible = False,
) -> None:
    """The whole chain: export, FP16, INT8, TensorRT engines where possible, verify, bench, DIR/report.md.

    With no arguments it runs on the bundled demo model and digits, offline.
    """
    from .artifacts import locked, prepare_dir
    from .errors import VerificationError
    from .evaluate.bench import BenchSettings, parse_batch_sizes
    from .pipeline import PipelineOptions, run_pipeline
    from .source import resolve_source

    options = PipelineOptions(
        calib_dir=calib_dir,
        calib_count=calib_count,
        calib_method=calib_method,
        data=data,
        count=count,
        bench=BenchSettings(batch_sizes=parse_batch_sizes(batch_sizes), duration_s=duration, threads=threads),
        build=_build_options(
            min_batch, opt_batch, max_batch, workspace_mb, opt_level, timing_cache, hardware_compat, version_compatible
        ),
    )
    source = resolve_source(arch, checkpoint, num_classes, image_size)
    directory = prepare_dir(directory)
    with locked(directory):
        result = run_pipeline(source, directory, options, log=log)
    typer.echo(f"report: {result.report}")
    if not result.verified:
        raise VerificationError(f"verify: {result.failure_summary} (see {result.report})")


def _tolerance_option(flag: str, text: str) -> typer.models.OptionInfo:
    return typer.Option(flag, help=text, rich_help_panel="Tolerances")


@app.command()
def verify(
    directory: ExportedDirOption,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="Image folder (class subfolders give labels) or .npy/.npz of preprocessed images. Default: the "
            "demo's labeled validation split for the demo model, else seeded synthetic input.",
        ),
    ] = None,
    count: Annotated[Optional[int], typer.Option("--count", help="Use at most N images (synthetic: 64).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per runner call.")] = 32,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write verify.json's content here.")] = None,
    fp16_cosine: Annotated[
        Optional[float], _tolerance_option("--fp16-cosine", "Min per-image cosine for FP16 (default 0.9995).")
    ] = None,
    fp16_top1: Annotated[
        Optional[float], _tolerance_option("--fp16-top1", "Min top-1 agreement for FP16, a fraction (default 0.99).")
    ] = None,
    int8_cosine: Annotated[
        Optional[float], _tolerance_option("--int8-cosine", "Min per-image cosine for INT8 (default 0.99).")
    ] = None,
    int8_top1: Annotated[
        Optional[float], _tolerance_option("--int8-top1", "Min top-1 agreement for INT8, a fraction (default 0.97).")
    ] = None,
    int8_max_accuracy_drop: Annotated[
        Optional[float],
        _tolerance_option("--int8-max-accuracy-drop", "Max accuracy loss of INT8 in points, with labels (default 1)."),
    ] = None,
    precisions: Annotated[
        str, typer.Option("--precisions", help="Comma list: fp32, fp16, int8, bf16 (OpenVINO).")
    ] = "fp32,fp16,int8",
) -> None:
    """Run every artifact in DIR on every runner here against PyTorch FP32; exit 1 naming each failure."""
    from .artifacts import artifact_dir, locked
    from .errors import VerificationError
    from .evaluate.bench import parse_list
    from .evaluate.metrics import SELECTABLE_PRECISIONS
    from .evaluate.verify import run_verify, tolerance_overrides

    chosen = parse_list(precisions, SELECTABLE_PRECISIONS, "--precisions")
    tolerances = tolerance_overrides(
        {
            "fp16_cosine": fp16_cosine,
            "fp16_top1": fp16_top1,
            "int8_cosine": int8_cosine,
            "int8_top1": int8_top1,
            "int8_max_accuracy_drop": int8_max_accuracy_drop,
        }
    )
    directory = artifact_dir(directory)
    with locked(directory):
        report = run_verify(directory, data, count, batch_size, tolerances, json_path, log=log, precisions=chosen)
    if not report:
        raise VerificationError(f"verify: {report.failure_summary()}")


@app.command()
def bench(
    directory: ExportedDirOption,
    backends: Annotated[
        str, typer.Option("--backends", help="Comma list of backends (see `info`); default: every one available.")
    ] = "",
    precisions: Annotated[
        str, typer.Option("--precisions", help="Comma list: fp32, fp16, int8, bf16 (OpenVINO).")
    ] = "fp32,fp16,int8",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma list of batch sizes.")] = "1,8,32",
    warmup_ms: Annotated[float, typer.Option("--warmup-ms", help="Warm-up time per runner and batch size.")] = 200.0,
    duration: Annotated[float, typer.Option("--duration", help="Seconds measured per runner and batch size.")] = 3.0,
    min_iterations: Annotated[int, typer.Option("--min-iterations", help="Fewest timed calls per row.")] = 10,
    threads: Annotated[
        Optional[int], typer.Option("--threads", help="CPU threads for torch, ONNX Runtime, OpenVINO.")
    ] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write bench.json's content here.")] = None,
    ov_hint: Annotated[
        str, typer.Option("--ov-hint", help="OpenVINO performance hint: latency or throughput.")
    ] = "latency",
) -> None:
    """Latency and throughput of every runner at every batch size: DIR/bench.json, .csv, .md and .png."""
    from .artifacts import artifact_dir, locked
    from .backends.registry import backend_names
    from .evaluate.bench import BenchSettings, parse_batch_sizes, parse_list, run_bench
    from .evaluate.metrics import SELECTABLE_PRECISIONS

    settings = BenchSettings(
        backends=parse_list(backends, backend_names(), "--backends") if backends else None,
        precisions=parse_list(precisions, SELECTABLE_PRECISIONS, "--precisions"),
        batch_sizes=parse_batch_sizes(batch_sizes),
        warmup_ms=warmup_ms,
        duration_s=duration,
        min_iterations=min_iterations,
        threads=threads,
        ov_hint=ov_hint,
    )
    directory = artifact_dir(directory)
    with locked(directory):
        run_bench(directory, settings, json_path=json_path, log=log)


@app.command("bench-triton")
def bench_triton(
    directory: ExportedDirOption,
    url: Annotated[
        str, typer.Option("--url", help="The Triton server: http://host:port or grpc://host:port.")
    ] = "http://127.0.0.1:8000",
    model: Annotated[
        Optional[str], typer.Option("--model", help="Triton model name (default: the one `serve` names).")
    ] = None,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Comma list of concurrent clients.")] = "1,4,16",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per request.")] = 1,
    duration: Annotated[float, typer.Option("--duration", help="Seconds measured per concurrency level.")] = 3.0,
) -> None:
    """Load-test a running Triton server with DIR's model: DIR/bench_triton.json and .md."""
    from .artifacts import artifact_dir, locked
    from .evaluate.bench import MAX_BATCH, parse_int_list
    from .serving.load_test import LoadTestSettings, triton_load_test, write_triton_bench
    from .serving.triton_repo import default_model_name

    settings = LoadTestSettings(
        levels=parse_int_list(concurrency, "--concurrency", 1024),
        batch_size=parse_int_list(str(batch_size), "--batch-size", MAX_BATCH)[0],
        duration_s=duration,
    )
    directory = artifact_dir(directory)
    with locked(directory):
        rows = triton_load_test(url, model or default_model_name(directory), settings, log=log)
        json_file, md_file = write_triton_bench(rows, directory)
    log(f"wrote {json_file} and {md_file}")


@app.command("triton-repo")
def triton_repo(
    directory: Annotated[Path, typer.Option("--dir", help="Artifact directory to read.")],
    out: Annotated[Path, typer.Option("--out", help="Triton model repository to write (created if missing).")],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name prefix; default: the architecture.")] = None,
    max_batch_size: Annotated[
        Optional[int],
        typer.Option("--max-batch-size", help="Largest batch; default: the engine profile's maximum, or 32 for ONNX."),
    ] = None,
    max_queue_delay_us: Annotated[
        int, typer.Option("--max-queue-delay-us", help="How long Triton may hold a request to fill a batch.")
    ] = 100,
    instances: Annotated[int, typer.Option("--instances", help="Model instances per device.")] = 1,
    onnx_kind: Annotated[
        str, typer.Option("--onnx-kind", help="Where ONNX models run: auto (GPU if the host has one), gpu or cpu.")
    ] = "auto",
    trt_accelerator: Annotated[
        bool,
        typer.Option("--trt-accelerator", help="Run ONNX models on GPUs through ONNX Runtime's TensorRT provider."),
    ] = False,
) -> None:
    """Write a Triton model repository: one model per ONNX file and engine in DIR."""
    from .serving.triton_repo import make_triton_repo

    make_triton_repo(
        directory,
        out,
        name=name,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        onnx_kind=onnx_kind,
        trt_accelerator=trt_accelerator,
        log=log,
    )


@app.command()
def serve(
    directory: Annotated[Path, typer.Option("--dir", help="Artifact directory to read.")],
    precision: Annotated[str, typer.Option("--precision", help="Which ONNX file: fp32, fp16 or int8.")] = "fp32",
    host: Annotated[str, typer.Option("--host", help="Address to bind; loopback unless you mean otherwise.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    grpc_port: Annotated[Optional[int], typer.Option("--grpc-port", help="gRPC port; default: --port + 1.")] = None,
    metrics_port: Annotated[
        Optional[int], typer.Option("--metrics-port", help="Prometheus metrics port; default: --port + 2.")
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", help="Largest batch Triton forms; 1 switches batching off.")
    ] = 32,
    max_queue_delay_us: Annotated[
        int, typer.Option("--max-queue-delay-us", help="How long Triton may hold a request to fill a batch.")
    ] = 100,
    instances: Annotated[int, typer.Option("--instances", help="Model instances (ONNX Runtime sessions).")] = 1,
    threads: Annotated[
        Optional[int], typer.Option("--threads", help="Threads per instance (ONNX Runtime, OpenVINO).")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Model name; default: <arch>_onnx_<precision>.")] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="CPU runner: onnxruntime or openvino (model <arch>_openvino_<precision>).")
    ] = "onnxruntime",
) -> None:
    """Serve DIR's ONNX model with a real Triton server (PyTriton) on the CPU until Ctrl-C."""
    from .serving.pytriton import serve as serve_model

    serve_model(
        directory,
        precision,
        host=host,
        port=port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        threads=threads,
        name=name,
        log=log,
        backend=backend,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every known failure to one line and its exit code.

    Typer itself answers usage errors (exit 2) and Ctrl-C (exit 130, said here in one line); everything
    a command raises is turned into one line here.
    """
    debug = bool(os.environ.get("RESNEXT_DEPLOY_DEBUG"))
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="resnext-deploy", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ExitCode.USAGE)
        if code == ExitCode.INTERRUPTED:  # typer turns KeyboardInterrupt into a silent exit 130
            typer.echo("interrupted; finished artifacts are kept and the next run resumes from them", err=True)
        return code
    except DeployError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place that turns the unexpected into a clean line
        if debug:
            raise
        detail = one_line(exc)
        typer.echo(
            f"internal error: {type(exc).__name__}: {detail} (set RESNEXT_DEPLOY_DEBUG=1 for a traceback, "
            "and please report it)",
            err=True,
        )
        return ExitCode.INTERNAL
    return ExitCode.OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
