"""The trtexec and build-trt lines that make the same engine elsewhere."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from ...artifacts import ONNX_FILES, engine_file
from . import probe
from .options import HARDWARE_COMPAT, BuildOptions
from .probe import major_version


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    options: BuildOptions,
    image_size: int | tuple[int, int],
    input_name: str = "input",
    trt_major: int | None = None,
    relative_to: str | Path | None = None,
) -> str:
    """The trtexec line that builds the same engine on a GPU machine (TensorRT 10.x form unless told 11).

    The 10.x form passes ``--stronglyTyped``; 11.x no longer needs it (strong typing is the only mode there,
    though its trtexec still accepts the flag), so the default form works with both. Paths are absolute,
    so the line works from any directory, or relative to ``relative_to`` for a report that lives there.
    """
    if trt_major is None:
        installed = probe.tensorrt_version()
        trt_major = major_version(installed) if installed else 10
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size

    def shape(batch: int) -> str:
        return f"{input_name}:{batch}x3x{height}x{width}"

    args = [
        "trtexec",
        f"--onnx={shown_path(onnx_path, relative_to)}",
        f"--saveEngine={shown_path(engine_path, relative_to)}",
    ]
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
        args.append(f"--timingCacheFile={shown_path(options.timing_cache, relative_to)}")
    if options.hardware_compat is not None:
        args.append(f"--hardwareCompatibilityLevel={HARDWARE_COMPAT[options.hardware_compat]}")
    if options.version_compatible:
        args.append("--versionCompatible")
    line = shlex.join(args)
    if options.hardware_compat == "same-cc":
        line += f"  # {SAME_CC_NOTE}"
    return line


SAME_CC_NOTE = "sameComputeCapability needs TensorRT 10.9 or later"


def trtexec_tensorrt_version(trtexec: str | Path) -> str | None:
    """The TensorRT version (major.minor.patch) a trtexec binary belongs to, from its ``[TensorRT v101303]`` tag.

    A plain plan loads only in the TensorRT version that built it, so a trtexec of another version (often a
    system install beside the pip wheels) refusing our engine says nothing about the engine. None when the
    binary does not run or prints no tag.
    """
    try:
        done = subprocess.run([str(trtexec), "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\[TensorRT v(\d+)\]", done.stdout + done.stderr)
    if match is None:
        return None
    number = int(match.group(1))  # major * 10000 + minor * 100 + patch
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def shown_path(path: str | Path, relative_to: str | Path | None = None) -> str:
    """``path`` as printed in a command: absolute, or relative to ``relative_to``."""
    absolute = Path(path).absolute()
    return str(absolute) if relative_to is None else os.path.relpath(absolute, Path(relative_to).absolute())


def build_trt_command(engine_path: Path, relative_to: str | Path | None = None) -> str:
    """The build-trt line that makes this engine again (its precision read from the file name; no flag is FP32)."""
    precision = next((p for p in ONNX_FILES if engine_path.name == engine_file(p)), "fp32")
    flag = "" if precision == "fp32" else f" --{precision}"
    return shlex.join(["resnext-deploy", "build-trt", "--dir", shown_path(engine_path.parent, relative_to)]) + flag
