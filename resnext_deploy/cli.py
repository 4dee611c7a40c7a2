"""The ``resnext-deploy`` command line: each command is a thin function over one library call.

Known errors become one line on stderr and a documented exit code in :func:`main`; set
``RESNEXT_DEPLOY_DEBUG=1`` to see tracebacks. Results (tables, the trtexec line, ``--json -``) go to
stdout; progress, logs and warnings to stderr (library logs only with ``--verbose``).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from typer.core import TyperOption

from . import __version__
from .artifacts.precisions import PRECISIONS, Precision
from .errors import BadInputError, DeployError, ExitCode, one_line
from .evaluate.settings import BenchSettings
from .logs import log
from .logs import setup as setup_logging

app = typer.Typer(
    name="resnext-deploy",
    help="ResNeXt from PyTorch to ONNX, FP16/INT8 and TensorRT, with measured parity and speed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
_PRE = "Preprocessing (recorded in model.onnx; every later step uses it)"
PresetOption = Annotated[
    Optional[str],
    typer.Option(
        "--preset",
        help="torchvision-v1 (resize 256, bilinear), torchvision-v2 (resize 232, bilinear) or timm "
        "(crop-pct 0.95, bicubic); default: the architecture's.",
        rich_help_panel=_PRE,
    ),
]
ResizeSizeOption = Annotated[
    Optional[int], typer.Option("--resize-size", help="Short side before the center crop.", rich_help_panel=_PRE)
]
CropPctOption = Annotated[
    Optional[float],
    typer.Option("--crop-pct", help="Image size / resize size (timm's crop_pct).", rich_help_panel=_PRE),
]
InterpolationOption = Annotated[
    Optional[str], typer.Option("--interpolation", help="bilinear or bicubic.", rich_help_panel=_PRE)
]
MeanOption = Annotated[Optional[str], typer.Option("--mean", help="R,G,B mean (0-1 scale).", rich_help_panel=_PRE)]
StdOption = Annotated[Optional[str], typer.Option("--std", help="R,G,B std (0-1 scale).", rich_help_panel=_PRE)]
ClassNamesOption = Annotated[
    Optional[Path],
    typer.Option(
        "--class-names",
        help="Class names: a file with one per line, or a folder of class subfolders (recorded in model.onnx, the "
        "manifest and Triton's labels.txt).",
    ),
]


_BENCH = "Benchmark (bench, and pipeline's bench step)"
_PRECISION_CHOICES = ", ".join(Precision.names())
BackendsOption = Annotated[
    str,
    typer.Option("--backends", help="Comma list of backends (see `info`); default: every one available here."),
]
PrecisionsOption = Annotated[
    str, typer.Option("--precisions", help=f"Comma list: {_PRECISION_CHOICES} (bf16: OpenVINO, only when named).")
]
BatchSizesOption = Annotated[
    str, typer.Option("--batch-sizes", help="Comma list of batch sizes.", rich_help_panel=_BENCH)
]
BudgetOption = Annotated[
    float,
    typer.Option(
        "--budget",
        help="Seconds for the whole bench run; slices, then rounds, shrink to fit (never below --min-rounds).",
        rich_help_panel=_BENCH,
    ),
]
DurationOption = Annotated[
    float,
    typer.Option(
        "--duration", help="Seconds measured per runner and batch size, within --budget.", rich_help_panel=_BENCH
    ),
]
ThreadsOption = Annotated[
    Optional[int], typer.Option("--threads", help="CPU threads for torch, ONNX Runtime and OpenVINO.")
]
_PRECISION_DEFAULT = ",".join(PRECISIONS)
_BATCH_DEFAULT = ",".join(map(str, BenchSettings.batch_sizes))


STDOUT = "-"
JsonOption = Annotated[
    Optional[Path],
    typer.Option("--json", help="Also write the JSON here; - writes it to stdout (the table then goes to stderr)."),
]


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """No type beside a flag in the help: it takes no value (Typer 0.29's Rich help shows ``<bool>``)."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]  # Typer offers no hook for this


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"resnext-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show library warnings and log lines (torch, ONNX Runtime, Triton) on stderr."
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_show_version)
    ] = False,
) -> None:
    """ResNeXt from PyTorch to ONNX, FP16/INT8 and TensorRT, with measured parity and speed."""
    setup_logging(verbose)


def _json_target(path: Path | None, directory: Path) -> Path | None:
    """The file ``--json`` writes, checked before any work: None for stdout (``-``) or no ``--json``.

    An existing target that is not a regular file (a FIFO, a device, a socket, a directory) is refused:
    the atomic write would replace it, or block on it. So is a file the tool owns in ``--dir``.
    """
    from .artifacts import check_writable, refuse_owned

    if path is None or str(path) == STDOUT:
        return None
    refuse_owned(path, directory)
    check_writable(path)
    return path


def _print_result(table: str, json_file: Path, json_option: Path | None) -> None:
    """The table on stdout; with ``--json -`` the JSON on stdout instead, and the table on stderr."""
    if json_option is not None and str(json_option) == STDOUT:
        typer.echo(table, err=True)
        typer.echo(json_file.read_text(encoding="utf-8"), nl=False)
    else:
        typer.echo(table)


def _comma_list(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """A comma list of choices; an unknown one is a usage error (exit 2), as Typer's own choices are."""
    from .evaluate.settings import parse_list

    try:
        return parse_list(text, allowed, option)
    except BadInputError as exc:
        raise typer.BadParameter(str(exc).removeprefix(f"{option} "), param_hint=f"'{option}'") from None


def _backend_list(text: str) -> tuple[str, ...] | None:
    from .backends.registry import backend_names

    return _comma_list(text, backend_names(), "--backends") if text else None


@app.command()
def archs() -> None:
    """List the registered architectures and their defaults (from the registry alone: no model is built)."""
    from .archs import ARCHS

    for spec in ARCHS.values():
        params = spec.parameter_count()
        pre = spec.preprocessing
        typer.echo(
            f"{spec.name:<18} {params / 1e6:7.2f}M params  {spec.num_classes:>4} classes  "
            f"{pre.image_size}px  {spec.description}"
        )


@app.command()
def info() -> None:
    """Versions of torch, torchvision, timm, onnx, onnxruntime, OpenVINO and TensorRT; CUDA devices; providers."""
    from .backends.tensorrt.probe import summary
    from .environment import TORCHVISION_FIX, describe, optional_libraries, torchvision_mismatch

    for key, value in {**describe(), **optional_libraries(), "tensorrt": summary()}.items():
        typer.echo(f"{key:<22} {value}")
    if mismatch := torchvision_mismatch():
        log(f"warning: {mismatch}: `import torchvision` and `import timm` fail; {TORCHVISION_FIX}")


@app.command()
def export(
    directory: DirOption,
    arch: ArchOption = None,
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    image_size: ImageSizeOption = None,
    preset: PresetOption = None,
    resize_size: ResizeSizeOption = None,
    crop_pct: CropPctOption = None,
    interpolation: InterpolationOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    class_names: ClassNamesOption = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    static_batch: Annotated[
        Optional[int], typer.Option("--static-batch", help="Fixed batch size instead of a dynamic one.")
    ] = None,
) -> None:
    """Export DIR/model.onnx (FP32) and check it against PyTorch in ONNX Runtime."""
    from .artifacts import locked, prepare_dir
    from .export import check_export_options, export_onnx
    from .source import resolve_source

    check_export_options(opset, static_batch)
    source = resolve_source(
        arch, checkpoint, num_classes, image_size, preset, resize_size, crop_pct, interpolation, mean, std, class_names
    )
    directory = prepare_dir(directory)
    with locked(directory):
        export_onnx(source, directory, opset=opset, static_batch=static_batch, log=log)
    if warning := source.weights_warning():
        typer.echo(f"WARNING: {warning}")


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
CalibMethodOption = Annotated[
    Literal["entropy", "minmax", "percentile"], typer.Option("--calib-method", help="Calibration method.")
]
PercentileOption = Annotated[float, typer.Option("--percentile", help="For --calib-method percentile.")]
ExcludeOption = Annotated[
    Optional[list[str]], typer.Option("--exclude", help="Node-name glob left unquantized (repeatable).")
]
HighPrecisionOption = Annotated[
    Literal["fp16", "fp32"], typer.Option("--high-precision", help="What INT8 leaves unquantized runs in.")
]
CheckDataOption = Annotated[
    Optional[Path],
    typer.Option(
        "--check-data",
        help="Held-out images the typed files are checked on. Default: 10% (at least 32) of --calib-dir.",
    ),
]
_SEARCH = "INT8 search"
NoSearchOption = Annotated[
    bool, typer.Option("--no-search", help="Fail instead of searching when INT8 fails.", rich_help_panel=_SEARCH)
]
SearchFractionOption = Annotated[
    float,
    typer.Option("--search-max-fraction", help="Max share of layers kept out of INT8.", rich_help_panel=_SEARCH),
]
SearchMinutesOption = Annotated[
    float, typer.Option("--search-minutes", help="Time limit of the INT8 search.", rich_help_panel=_SEARCH)
]


def _tolerance_option(flag: str, text: str) -> typer.models.OptionInfo:
    return typer.Option(flag, help=text, rich_help_panel="Tolerances")


Fp16Cosine = Annotated[
    Optional[float], _tolerance_option("--fp16-cosine", "Min per-image cosine for FP16 (default 0.9995).")
]
Fp16Top1 = Annotated[
    Optional[float],
    _tolerance_option("--fp16-top1", "Min decisive top-1 agreement for FP16, a fraction (default 0.99)."),
]
Int8Cosine = Annotated[
    Optional[float], _tolerance_option("--int8-cosine", "Min per-image cosine for INT8 (default 0.99).")
]
Int8Top1 = Annotated[
    Optional[float],
    _tolerance_option("--int8-top1", "Min decisive top-1 agreement for INT8, a fraction (default 0.97)."),
]
Int8MaxAccuracyDrop = Annotated[
    Optional[float],
    _tolerance_option("--int8-max-accuracy-drop", "Max accuracy loss of INT8 in points, with labels (default 1)."),
]


def _precision_options(
    calib_dir: Path | None,
    calib_count: int,
    calib_method: str,
    percentile: float,
    exclude: list[str] | None,
    high_precision: str,
    check_data: Path | None,
    no_search: bool,
    search_max_fraction: float,
    search_minutes: float,
    tolerances: dict[str, float | None],
):
    """The typed bundle, validated here once (bad values exit 3 before any work)."""
    from .evaluate.verify import tolerance_overrides
    from .precision.options import PrecisionOptions

    return PrecisionOptions(
        calib_source=calib_dir,
        calib_count=calib_count,
        calib_method=calib_method,
        percentile=percentile,
        exclude=tuple(exclude or ()),
        high_precision=high_precision,
        check_source=check_data,
        search=not no_search,
        search_max_fraction=search_max_fraction,
        search_minutes=search_minutes,
        tolerances=tolerance_overrides(tolerances),
    )


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
    Optional[Literal["ampere+", "same-cc"]],
    typer.Option("--hardware-compat", help="Engine runs on other GPUs of these generations.", rich_help_panel=_PROFILE),
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
    percentile: PercentileOption = 99.99,
    exclude: ExcludeOption = None,
    high_precision: HighPrecisionOption = "fp16",
    check_data: CheckDataOption = None,
    no_search: NoSearchOption = False,
    search_max_fraction: SearchFractionOption = 0.25,
    search_minutes: SearchMinutesOption = 10.0,
    fp16_cosine: Fp16Cosine = None,
    fp16_top1: Fp16Top1 = None,
    int8_cosine: Int8Cosine = None,
    int8_top1: Int8Top1 = None,
    int8_max_accuracy_drop: Int8MaxAccuracyDrop = None,
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
    from .artifacts import locked, recorded_step
    from .backends.tensorrt.build import build_engine
    from .backends.tensorrt.options import check_trt_major
    from .backends.tensorrt.probe import TensorRTUnavailableError, tensorrt_status
    from .pipeline import record_engines_skipped
    from .precision.typed import make_typed_onnx
    from .source import artifact_dir

    if fp16 and int8:
        raise typer.BadParameter("choose one of them (neither means FP32)", param_hint="'--fp16' / '--int8'")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    check_trt_major(trt_major)
    options = _build_options(
        min_batch, opt_batch, max_batch, workspace_mb, opt_level, timing_cache, hardware_compat, version_compatible
    )
    precision_options = _precision_options(
        calib_dir,
        calib_count,
        calib_method,
        percentile,
        exclude,
        high_precision,
        check_data,
        no_search,
        search_max_fraction,
        search_minutes,
        dict(
            fp16_cosine=fp16_cosine,
            fp16_top1=fp16_top1,
            int8_cosine=int8_cosine,
            int8_top1=int8_top1,
            int8_max_accuracy_drop=int8_max_accuracy_drop,
        ),
    )
    directory = artifact_dir(directory)
    with locked(directory):
        with recorded_step(directory, f"{precision} ONNX", record_failure=False):
            make_typed_onnx(directory, precision, precision_options, log=log)
        reason = tensorrt_status()
        if reason is not None:  # for `report`, as pipeline records it: why, and every file's trtexec line
            record_engines_skipped(directory, options, reason)
        if onnx_only:
            return
        try:
            build_engine(directory, precision, options, log=log, trt_major=trt_major)
        except TensorRTUnavailableError as exc:
            typer.echo(exc.command)
            raise
        record_engines_skipped(directory, options, None)


@app.command()
def pipeline(
    directory: DirOption = Path("artifacts/demo"),
    arch: ArchOption = None,
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    image_size: ImageSizeOption = None,
    preset: PresetOption = None,
    resize_size: ResizeSizeOption = None,
    crop_pct: CropPctOption = None,
    interpolation: InterpolationOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    class_names: Annotated[
        Optional[Path],
        typer.Option(
            "--class-names",
            help="Class names: a file with one per line, or a folder of class subfolders. Default: the class "
            "subfolders of --calib-dir or --data when they are as many as the model's classes.",
        ),
    ] = None,
    calib_dir: CalibDirOption = None,
    calib_count: CalibCountOption = 512,
    calib_method: CalibMethodOption = "entropy",
    percentile: PercentileOption = 99.99,
    exclude: ExcludeOption = None,
    high_precision: HighPrecisionOption = "fp16",
    check_data: CheckDataOption = None,
    no_search: NoSearchOption = False,
    search_max_fraction: SearchFractionOption = 0.25,
    search_minutes: SearchMinutesOption = 10.0,
    fp16_cosine: Fp16Cosine = None,
    fp16_top1: Fp16Top1 = None,
    int8_cosine: Int8Cosine = None,
    int8_top1: Int8Top1 = None,
    int8_max_accuracy_drop: Int8MaxAccuracyDrop = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="verify's images (default: demo validation split or synthetic).")
    ] = None,
    count: Annotated[Optional[int], typer.Option("--count", help="verify uses at most N images.")] = None,
    backends: BackendsOption = "",
    precisions: PrecisionsOption = _PRECISION_DEFAULT,
    batch_sizes: BatchSizesOption = _BATCH_DEFAULT,
    budget: BudgetOption = BenchSettings.budget_s,
    duration: DurationOption = BenchSettings.duration_s,
    threads: ThreadsOption = None,
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
    from .environment import cap_threads
    from .evaluate.settings import parse_batch_sizes
    from .pipeline import PipelineOptions, run_pipeline
    from .source import resolve_source

    tolerances = dict(
        fp16_cosine=fp16_cosine,
        fp16_top1=fp16_top1,
        int8_cosine=int8_cosine,
        int8_top1=int8_top1,
        int8_max_accuracy_drop=int8_max_accuracy_drop,
    )
    options = PipelineOptions(
        precision=_precision_options(
            calib_dir,
            calib_count,
            calib_method,
            percentile,
            exclude,
            high_precision,
            check_data,
            no_search,
            search_max_fraction,
            search_minutes,
            tolerances,
        ),
        data=data,
        count=count,
        bench=BenchSettings(
            backends=_backend_list(backends),
            precisions=_comma_list(precisions, Precision.names(), "--precisions"),
            batch_sizes=parse_batch_sizes(batch_sizes),
            budget_s=budget,
            duration_s=duration,
            threads=cap_threads(threads, log),
        ),
        build=_build_options(
            min_batch, opt_batch, max_batch, workspace_mb, opt_level, timing_cache, hardware_compat, version_compatible
        ),
    )
    source = resolve_source(
        *(arch, checkpoint, num_classes, image_size, preset, resize_size, crop_pct, interpolation, mean, std),
        class_names=class_names,
        name_folders=(calib_dir, data),
    )
    directory = prepare_dir(directory)
    with locked(directory):
        result = run_pipeline(source, directory, options, log=log)
    for table in result.tables:
        typer.echo(table)
    typer.echo(f"report: {result.report}")
    if warning := source.weights_warning():
        typer.echo(f"WARNING: {warning}")
    if not result.verified:
        raise result.error()


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
    json_path: JsonOption = None,
    backends: Annotated[
        str,
        typer.Option("--backends", help="Comma list of backends to check (see `info`); default: every one available."),
    ] = "",
    fp16_cosine: Fp16Cosine = None,
    fp16_top1: Fp16Top1 = None,
    int8_cosine: Int8Cosine = None,
    int8_top1: Int8Top1 = None,
    int8_max_accuracy_drop: Int8MaxAccuracyDrop = None,
    precisions: Annotated[
        str, typer.Option("--precisions", help="Comma list: fp32, fp16, int8, bf16 (OpenVINO).")
    ] = "fp32,fp16,int8",
) -> None:
    """Run every artifact in DIR on every runner here against PyTorch FP32; exit 1 naming each failure."""
    from .artifacts import locked
    from .errors import VerificationError
    from .evaluate.verify import VERIFY_JSON, run_verify, tolerance_overrides, verify_text
    from .parity import SELECTABLE_PRECISIONS
    from .source import artifact_dir

    chosen = _comma_list(precisions, SELECTABLE_PRECISIONS, "--precisions")
    tolerances = tolerance_overrides(
        {
            "fp16_cosine": fp16_cosine,
            "fp16_top1": fp16_top1,
            "int8_cosine": int8_cosine,
            "int8_top1": int8_top1,
            "int8_max_accuracy_drop": int8_max_accuracy_drop,
        }
    )
    names = _backend_list(backends)
    json_file = _json_target(json_path, directory)
    directory = artifact_dir(directory)
    with locked(directory):
        report = run_verify(
            directory, data, count, batch_size, tolerances, json_file, log=log, backends=names, precisions=chosen
        )
        _print_result(verify_text(report.record), directory / VERIFY_JSON, json_path)
    if not report:
        raise VerificationError(f"verify: {report.failure_summary()}")


@app.command()
def bench(
    directory: ExportedDirOption,
    backends: BackendsOption = "",
    precisions: PrecisionsOption = _PRECISION_DEFAULT,
    batch_sizes: BatchSizesOption = _BATCH_DEFAULT,
    budget: BudgetOption = BenchSettings.budget_s,
    duration: DurationOption = BenchSettings.duration_s,
    warmup_ms: Annotated[
        float, typer.Option("--warmup-ms", help="Warm-up time per runner and batch size.", rich_help_panel=_BENCH)
    ] = BenchSettings.warmup_ms,
    min_iterations: Annotated[
        int, typer.Option("--min-iterations", help="Fewest timed calls per row.", rich_help_panel=_BENCH)
    ] = BenchSettings.min_iterations,
    rounds: Annotated[
        int, typer.Option("--rounds", help="Interleaved rounds (fewer only to fit --budget).", rich_help_panel=_BENCH)
    ] = BenchSettings.rounds,
    min_rounds: Annotated[
        int, typer.Option("--min-rounds", help="Rounds kept however short --budget is.", rich_help_panel=_BENCH)
    ] = BenchSettings.min_rounds,
    pause_ms: Annotated[
        float, typer.Option("--pause-ms", help="Idle time between two slices.", rich_help_panel=_BENCH)
    ] = BenchSettings.pause_ms,
    allow_spinning: Annotated[
        bool,
        typer.Option(
            "--allow-spinning",
            help="Leave thread pools spinning between calls (ONNX Runtime, OpenMP); default: they sleep.",
            rich_help_panel=_BENCH,
        ),
    ] = BenchSettings.allow_spinning,
    threads: ThreadsOption = None,
    json_path: JsonOption = None,
    ov_hint: Annotated[
        Literal["latency", "throughput"], typer.Option("--ov-hint", help="OpenVINO performance hint.")
    ] = "latency",
) -> None:
    """Latency and throughput of every runner at every batch size, each runner in its own process.

    Writes DIR/bench.json, .csv, .md and .png; the table goes to stdout.
    """
    from .artifacts import locked, recorded_step
    from .environment import cap_threads
    from .evaluate.bench import BENCH_JSON, bench_text, run_bench
    from .evaluate.settings import parse_batch_sizes
    from .source import artifact_dir

    settings = BenchSettings(
        backends=_backend_list(backends),
        precisions=_comma_list(precisions, Precision.names(), "--precisions"),
        batch_sizes=parse_batch_sizes(batch_sizes),
        warmup_ms=warmup_ms,
        duration_s=duration,
        min_iterations=min_iterations,
        threads=cap_threads(threads, log),
        ov_hint=ov_hint,
        budget_s=budget,
        rounds=rounds,
        min_rounds=min_rounds,
        pause_ms=pause_ms,
        allow_spinning=allow_spinning,
    )
    json_file = _json_target(json_path, directory)
    directory = artifact_dir(directory)
    with locked(directory), recorded_step(directory, "bench", record_failure=False):
        report = run_bench(directory, settings, json_path=json_file, log=log)
        _print_result(bench_text(report), directory / BENCH_JSON, json_path)


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
    from .artifacts import locked
    from .evaluate.settings import MAX_BATCH, parse_int_list
    from .serving.load_test import LoadTestSettings, triton_load_test, write_triton_bench
    from .serving.triton_repo import default_model_name
    from .source import artifact_dir

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
    typer.echo(md_file.read_text(encoding="utf-8"), nl=False)


@app.command()
def report(directory: ExportedDirOption) -> None:
    """Write DIR/report.md and report.json from what DIR holds, whichever commands made it (as pipeline does)."""
    from .artifacts import locked
    from .report import write_report
    from .source import artifact_dir

    directory = artifact_dir(directory)
    with locked(directory):
        path = write_report(directory, log=log)
    typer.echo(f"report: {path}")


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
        Literal["auto", "gpu", "cpu"],
        typer.Option("--onnx-kind", help="Where ONNX models run: auto (GPU if the host has one), gpu or cpu."),
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
    precision: Annotated[
        Literal["fp32", "fp16", "int8"], typer.Option("--precision", help="Which ONNX file.")
    ] = "fp32",
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
    restarts: Annotated[
        int, typer.Option("--restarts", help="Restart a Triton server that dies, at most N times (default: exit 4).")
    ] = 0,
    http: Annotated[
        bool, typer.Option("--http/--no-http", help="Serve HTTP too; --no-http leaves gRPC alone (see README).")
    ] = True,
) -> None:
    """Serve DIR's ONNX model with a real Triton server (PyTriton) on the CPU until Ctrl-C."""
    from .environment import cap_threads
    from .logs import verbose
    from .serving.pytriton import SERVER_LOG
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
        threads=cap_threads(threads, log),
        name=name,
        log=log,
        server_log=None if verbose() else Path(directory) / SERVER_LOG,
        backend=backend,
        restarts=restarts,
        http=http,
    )


# A path component over 255 bytes, or a path over PATH_MAX: the user's path, wherever a library trips on it.
PATH_ERRNOS = frozenset({errno.ENAMETOOLONG})


def _refuse_undecodable(args: Sequence[str]) -> None:
    """Refuse an argument that is not valid UTF-8 (a Latin-1 ``--dir``), before any work.

    Python keeps such bytes as lone surrogates; torch's ONNX export, ONNX, ONNX Runtime and OpenVINO take
    paths as UTF-8 strings and fail on them, after the work is done. File names inside a data folder are
    read with Python's own calls and need no such rule.
    """
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise BadInputError(f"{shown} is not valid UTF-8; rename it (ONNX libraries need UTF-8 paths)") from None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every known failure to one line and its exit code.

    Typer's Click parses in non-standalone mode so that its usage errors (unknown option, invalid
    choice, conflicting flags: exit 2) become one line here, like every error a command raises. Typer turns
    Ctrl-C into exit 130, said here in one line.
    """
    debug = bool(os.environ.get("RESNEXT_DEPLOY_DEBUG"))
    command = typer.main.get_command(app)
    try:
        _refuse_undecodable(sys.argv[1:] if argv is None else argv)
        result = command.main(args=argv, prog_name="resnext-deploy", standalone_mode=False)
    except typer.TyperException as exc:  # Click's usage errors (typer vendors Click)
        message = exc.format_message().strip()
        if message:  # empty when there were no arguments at all and the help was shown instead
            context = getattr(exc, "ctx", None)
            where = f"`{context.command_path} --help`" if context is not None else "--help"
            typer.echo(f"error: {message} (see {where})", err=True)
        return getattr(exc, "exit_code", ExitCode.USAGE)
    except typer.Abort:
        result = ExitCode.INTERRUPTED
    except DeployError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place that turns the unexpected into a clean line
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno in PATH_ERRNOS:  # a path the file system refuses: bad input
            typer.echo(f"error: {exc.filename or 'a path'}: {exc.strerror}; use a shorter or valid path", err=True)
            return ExitCode.BAD_INPUT
        detail = one_line(exc)
        typer.echo(
            f"internal error: {type(exc).__name__}: {detail} (set RESNEXT_DEPLOY_DEBUG=1 for a traceback, "
            "and please report it)",
            err=True,
        )
        return ExitCode.INTERNAL
    code = result if isinstance(result, int) else ExitCode.OK
    if code == ExitCode.INTERRUPTED:  # typer turns KeyboardInterrupt into exit 130
        typer.echo("interrupted; finished artifacts are kept and the next run resumes from them", err=True)
    return code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
