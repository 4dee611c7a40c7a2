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

from .errors import DeployError, ExitCode

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


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every known failure to one line and its exit code.

    Typer itself answers usage errors (exit 2) and Ctrl-C (exit 130); everything a command raises
    is turned into one line here.
    """
    debug = bool(os.environ.get("RESNEXT_DEPLOY_DEBUG"))
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="resnext-deploy", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ExitCode.USAGE)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished artifacts are kept and the next run resumes from them", err=True)
        return ExitCode.INTERRUPTED
    except DeployError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place that turns the unexpected into a clean line
        if debug:
            raise
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
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
