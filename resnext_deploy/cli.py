"""The ``resnext-deploy`` command line: each command is a thin function over one library call.

Option groups (source, precision, tolerances, TensorRT build, bench, the backends' own knobs) are declared
once in :mod:`resnext_deploy.cli_options` and reach a command as their validated bundle. Known errors
become one line on stderr and a documented exit code in :func:`main`; set ``RESNEXT_DEPLOY_DEBUG=1`` to see
tracebacks. Results (tables, the trtexec line, ``--json -``) go to stdout; progress, logs and warnings to
stderr (library logs only with ``--verbose``).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from . import __version__
from .cli_options import (
    BACKEND_OPTIONS,
    BENCH,
    BUILD,
    PRECISION,
    SERVE,
    SOURCE,
    TOLERANCES,
    TRITON_REPO,
    backend_list,
    comma_list,
    grouped,
    help_default,
)
from .errors import BadInputError, DeployError, ExitCode, one_line
from .logs import log
from .logs import setup as setup_logging
from .patches import typer_help

if TYPE_CHECKING:
    from .backends.tensorrt import BuildOptions
    from .evaluate.settings import BenchSettings
    from .parity import Tolerance
    from .precision.options import PrecisionOptions
    from .serving.options import ServeOptions, TritonRepoOptions
    from .source import SourceOptions

app = typer.Typer(
    name="resnext-deploy",
    help="ResNeXt from PyTorch to ONNX, FP16/INT8 and TensorRT, with measured parity and speed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


DirOption = Annotated[Path, typer.Option("--dir", help="Artifact directory (created if missing).")]
ExportedDirOption = Annotated[Path, typer.Option("--dir", help="Artifact directory of an earlier export.")]
ReadDirOption = Annotated[Path, typer.Option("--dir", help="Artifact directory to read.")]
DataOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data",
        help="verify's images: a folder (class subfolders give labels) or .npy/.npz of preprocessed images. "
        "Default: the demo's labeled validation split for the demo model, else seeded synthetic input.",
    ),
]
CountOption = Annotated[Optional[int], typer.Option("--count", help="verify uses at most N images (synthetic: 64).")]

STDOUT = "-"
JsonOption = Annotated[
    Optional[Path],
    typer.Option("--json", help="Also write the JSON here; - writes it to stdout (the table then goes to stderr)."),
]


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


@app.command()
def archs() -> None:
    """List the built-in architectures and timm's ResNeXt family (from the registry alone: no model is built)."""
    from .archs import ARCHS, LIBRARY_ARCHS, Arch
    from .environment import package_version

    specs: list[Arch] = [*ARCHS.values(), *LIBRARY_ARCHS.values()]
    for spec in specs:
        params = spec.parameter_count()
        pre = spec.preprocessing
        typer.echo(
            f"{spec.name:<22} {params / 1e6:7.2f}M params  {spec.num_classes:>4} classes  "
            f"{pre.image_size}px  {spec.description}"
        )
    timm = package_version("timm")
    state = f"timm {timm} is installed" if timm else "timm is not installed: `pip install timm` (README, Install)"
    log(f"{len(ARCHS)} built in; {len(LIBRARY_ARCHS)} built through timm ({state})")


@app.command()
def info() -> None:
    """Versions of torch, torchvision, timm, onnx, onnxruntime, OpenVINO and TensorRT; CUDA devices; providers."""
    from .backends.tensorrt import summary
    from .environment import TORCHVISION_FIX, describe, optional_libraries, torchvision_mismatch

    for key, value in {**describe(), **optional_libraries(), "tensorrt": summary()}.items():
        typer.echo(f"{key:<22} {value}")
    if mismatch := torchvision_mismatch():
        log(f"warning: {mismatch}: `import torchvision` and `import timm` fail; {TORCHVISION_FIX}")


@app.command()
@grouped(source=SOURCE)
def export(
    directory: DirOption,
    source: SourceOptions,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    static_batch: Annotated[
        Optional[int], typer.Option("--static-batch", help="Fixed batch size instead of a dynamic one.")
    ] = None,
) -> None:
    """Export DIR/model.onnx (FP32) and check it against PyTorch in ONNX Runtime."""
    from .artifacts import locked, prepare_dir, recorded_step
    from .export import check_export_options, export_onnx
    from .source import resolve_source

    check_export_options(opset, static_batch)
    model = resolve_source(source, log=log)
    directory = prepare_dir(directory)
    with locked(directory), recorded_step(directory, "export"):
        export_onnx(model, directory, opset=opset, static_batch=static_batch, log=log)
    if warning := model.weights_warning():
        typer.echo(f"WARNING: {warning}")


@app.command("build-trt")
@grouped(precision_options=PRECISION, build=BUILD)
def build_trt(
    directory: ExportedDirOption,
    precision_options: PrecisionOptions,
    build: BuildOptions,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 typed ONNX and engine.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Calibrated INT8 (Q/DQ) ONNX and engine.")] = False,
    onnx_only: Annotated[bool, typer.Option("--onnx-only", help="Stop after the typed ONNX file.")] = False,
    trt_major: Annotated[
        Optional[int], typer.Option("--trt-major", help="TensorRT major version for the printed trtexec line.")
    ] = None,
) -> None:
    """Write the typed ONNX file (FP32 without flags), check it in ONNX Runtime, then build the engine.

    Without TensorRT or a GPU, prints the equivalent trtexec line and exits 4.
    """
    from .artifacts import locked, recorded_step
    from .backends.tensorrt import (
        TensorRTUnavailableError,
        build_engine,
        check_trt_major,
        record_engines_skipped,
        tensorrt_status,
    )
    from .precision.typed import make_typed_onnx
    from .source import artifact_dir

    if fp16 and int8:
        raise typer.BadParameter("choose one of them (neither means FP32)", param_hint="'--fp16' / '--int8'")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    check_trt_major(trt_major)
    directory = artifact_dir(directory)
    with locked(directory):
        with recorded_step(directory, f"{precision} ONNX"):
            make_typed_onnx(directory, precision, precision_options, log=log)
        reason = tensorrt_status()
        if reason is not None:  # for `report`, as pipeline records it: why, and every file's trtexec line
            record_engines_skipped(directory, build, reason)
        if onnx_only:
            return
        try:
            with recorded_step(directory, f"{precision} engine"):
                build_engine(directory, precision, build, log=log, trt_major=trt_major)
        except TensorRTUnavailableError as exc:
            typer.echo(exc.command)
            raise
        record_engines_skipped(directory, build, None)


@app.command()
@grouped(source=SOURCE, precision=PRECISION, build=BUILD, bench=BENCH)
def pipeline(
    source: SourceOptions,
    precision: PrecisionOptions,
    build: BuildOptions,
    bench: BenchSettings,
    directory: DirOption = Path("artifacts/demo"),
    data: DataOption = None,
    count: CountOption = None,
    inspect: Annotated[
        bool, typer.Option("--inspect", help="Run `inspect` even when every check passes (it runs when one fails).")
    ] = False,
) -> None:
    """The whole chain: export, FP16, INT8, TensorRT engines where possible, verify, bench, DIR/report.md.

    With no arguments it runs on the bundled demo model and digits, offline.
    """
    from .artifacts import locked, prepare_dir
    from .backends.tensorrt import BACKEND as TENSORRT
    from .pipeline import PipelineOptions, run_pipeline
    from .source import resolve_source

    builds = {TENSORRT.name: build}
    options = PipelineOptions(precision=precision, data=data, count=count, bench=bench, build=builds, inspect=inspect)
    model = resolve_source(source, name_folders=(precision.calib_source, data), log=log)
    directory = prepare_dir(directory)
    with locked(directory):
        result = run_pipeline(model, directory, options, log=log)
    for table in result.tables:
        typer.echo(table)
    typer.echo(f"report: {result.report}")
    if warning := model.weights_warning():
        typer.echo(f"WARNING: {warning}")
    if not result.verified:
        raise result.error()


@app.command()
@grouped(tolerances=TOLERANCES, backend_options=BACKEND_OPTIONS)
def verify(
    directory: ExportedDirOption,
    tolerances: Mapping[str, Tolerance],
    backend_options: Mapping[str, Mapping[str, Any]],
    data: DataOption = None,
    count: CountOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per runner call.")] = 32,
    json_path: JsonOption = None,
    backends: Annotated[
        str,
        typer.Option("--backends", help="Comma list of backends to check (see `info`); default: every one available."),
    ] = "",
    precisions: Annotated[
        str, typer.Option("--precisions", help="Comma list: fp32, fp16, int8, bf16 (OpenVINO).")
    ] = "fp32,fp16,int8",
) -> None:
    """Run every artifact in DIR on every runner here against PyTorch FP32; exit 1 naming each failure."""
    from .artifacts import locked
    from .errors import VerificationError
    from .evaluate.verify import VERIFY_JSON, run_verify, verify_text
    from .parity import SELECTABLE_PRECISIONS
    from .source import artifact_dir

    chosen = comma_list(precisions, SELECTABLE_PRECISIONS, "--precisions")
    names = backend_list(backends)
    json_file = _json_target(json_path, directory)
    directory = artifact_dir(directory)
    with locked(directory):
        report = run_verify(
            directory,
            data,
            count,
            batch_size,
            tolerances,
            json_file,
            log=log,
            backends=names,
            precisions=chosen,
            backend_options=backend_options,
        )
        _print_result(verify_text(report.record), directory / VERIFY_JSON, json_path)
    if not report:
        raise VerificationError(f"verify: {report.failure_summary()}")


@app.command()
@grouped(settings=BENCH)
def bench(directory: ExportedDirOption, settings: BenchSettings, json_path: JsonOption = None) -> None:
    """Latency and throughput of every runner at every batch size, each runner in its own process.

    Writes DIR/bench.json, .csv, .md and .png; the table goes to stdout. Exit 1 when a runner's process died
    or stopped answering (its rows are recorded as failed; the others are written).
    """
    from .artifacts import locked, recorded_step
    from .errors import VerificationError
    from .evaluate.bench import BENCH_JSON, bench_text, run_bench
    from .source import artifact_dir

    json_file = _json_target(json_path, directory)
    directory = artifact_dir(directory)
    with locked(directory), recorded_step(directory, "bench"):
        report = run_bench(directory, settings, json_path=json_file, log=log)
        _print_result(bench_text(report), directory / BENCH_JSON, json_path)
        if failure := report.failure(directory):  # recorded in the manifest, so report and verify see the failed rows
            raise VerificationError(failure)


@app.command("bench-triton")
def bench_triton(
    directory: ExportedDirOption,
    url: Annotated[
        str, typer.Option("--url", help="The Triton server: http://host:port or grpc://host:port.")
    ] = "http://127.0.0.1:8000",
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Triton model name (default: the one of DIR's models the server has ready)."),
    ] = None,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Comma list of concurrent clients.")] = "1,4,16",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per request.")] = 1,
    duration: Annotated[float, typer.Option("--duration", help="Seconds measured per concurrency level.")] = 3.0,
) -> None:
    """Load-test a running Triton server with DIR's model: DIR/bench_triton.json and .md."""
    from .artifacts import locked
    from .backends.base import BATCH_LIMIT
    from .evaluate.settings import parse_int_list
    from .serving.load_test import (
        LoadTestSettings,
        background_load,
        busy_warning,
        check_url,
        served_model,
        triton_load_test,
        write_triton_bench,
    )
    from .source import artifact_dir

    settings = LoadTestSettings(
        levels=parse_int_list(concurrency, "--concurrency", 1024),
        batch_size=parse_int_list(str(batch_size), "--batch-size", BATCH_LIMIT)[0],
        duration_s=duration,
    )
    directory = artifact_dir(directory)
    check_url(url)
    with locked(directory):
        model = model or served_model(url, directory, log=log)
        other_cpu = background_load()  # before the load test: the server's own work is not "other" load
        if busy := busy_warning(other_cpu):
            log(f"warning: {busy}")
        rows = triton_load_test(url, model, settings, log=log)
        json_file, md_file = write_triton_bench(rows, directory, other_cpu)
    log(f"wrote {json_file} and {md_file}")
    typer.echo(md_file.read_text(encoding="utf-8"), nl=False)


@app.command()
def report(directory: ExportedDirOption) -> None:
    """Write DIR/report.md and report.json from what DIR holds, whichever commands made it (as pipeline does).

    Exits with the run's status, derived from DIR: 0 passed, 1 a step or verify failed (or nothing verified), 3 a
    step met bad input, so a CI job can gate on it.
    """
    from .artifacts import locked
    from .report import write_report
    from .source import artifact_dir

    directory = artifact_dir(directory)
    with locked(directory):
        written = write_report(directory, log=log)
    typer.echo(f"report: {written.status.summary()}")
    typer.echo(f"report: {written.path}")
    if not written.status.passed:
        raise typer.Exit(int(written.status.exit_code))


@app.command()
def inspect(
    directory: ExportedDirOption,
    data: DataOption = None,
    count: Annotated[int, typer.Option("--count", help="Images the accuracy passes use.")] = 32,
    artifacts: Annotated[
        str,
        typer.Option(
            "--artifacts",
            help="Comma list of DIR's files; default: the typed files, and model.onnx "
            "against model.int8.onnx for the layer times.",
        ),
    ] = "",
    backends: Annotated[
        str,
        typer.Option(
            "--backends",
            help="Comma list of runtimes to profile (openvino, onnxruntime, tensorrt); 'none': skip; "
            "default: every one available here.",
        ),
    ] = "",
    json_path: JsonOption = None,
) -> None:
    """Where a typed file loses accuracy (site by site) and where the time goes (layer by layer).

    Writes DIR/inspect.json, inspect.md and inspect.png; the top of the tables goes to stdout.
    """
    from .artifacts import locked, write_json
    from .inspect import INSPECT_JSON
    from .inspect.render import SHOWN, inspect_markdown
    from .inspect.run import run_inspect
    from .source import artifact_dir

    json_file = _json_target(json_path, directory)
    directory = artifact_dir(directory)
    names = [n.strip() for n in artifacts.split(",") if n.strip()] or None
    chosen = None if not backends else [b.strip() for b in backends.split(",") if b.strip() and b.strip() != "none"]
    with locked(directory):
        record = run_inspect(directory, data, count, names, chosen, log=log)
        if json_file is not None:
            write_json(json_file, record.to_dict())
        _print_result(inspect_markdown(record, SHOWN), directory / INSPECT_JSON, json_path)


@app.command("triton-repo")
@grouped(repository=TRITON_REPO)
def triton_repo(
    directory: ReadDirOption,
    out: Annotated[Path, typer.Option("--out", help="Triton model repository to write (created if missing).")],
    repository: TritonRepoOptions,
) -> None:
    """Write a Triton model repository: one model per ONNX file and engine in DIR."""
    from .serving.triton_repo import make_triton_repo

    make_triton_repo(directory, out, repository, log=log)


@app.command()
@grouped(serving=SERVE)
def serve(directory: ReadDirOption, serving: ServeOptions) -> None:
    """Serve DIR's ONNX model with a real Triton server (PyTriton) on the CPU until Ctrl-C."""
    from .logs import verbose
    from .serving.pytriton import SERVER_LOG
    from .serving.pytriton import serve as serve_model

    serve_model(directory, serving, log=log, server_log=None if verbose() else Path(directory) / SERVER_LOG)


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
        with typer_help(help_default):
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
