"""Is TensorRT usable here: the import, a CUDA GPU, the version, and the GPU an engine is built on.

The rest of the package calls these through the module (``probe.tensorrt_status()``), so there is one
place to ask, and one place a contract test replaces.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from ...environment import cuda_available
from ...environment import tensorrt_version as tensorrt_version  # asked through this module
from ...errors import BackendUnavailableError

INSTALL_HINT = "pip install 'resnext-deploy[tensorrt]' on a machine with an NVIDIA GPU"


def tensorrt_status() -> str | None:
    """None when TensorRT imports and a CUDA GPU is visible; otherwise why not, in one line."""
    try:
        import tensorrt  # noqa: F401 - the import is the question
    except Exception as exc:  # noqa: BLE001 - a broken install is as unusable as a missing one
        return f"TensorRT is not installed or does not import ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    if not cuda_available():
        return (
            "no CUDA GPU is visible to PyTorch (no device, no driver, or a CPU build of torch); "
            "TensorRT engines are built and run on an NVIDIA GPU"
        )
    return None


def major_version(version: str) -> int:
    return int(version.split(".")[0])


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def gpu_info() -> dict[str, Any]:
    """The current CUDA device as the engine manifest records it."""
    import torch

    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "driver_version": driver_version(index),
        "cuda_runtime": torch.version.cuda,
    }


def driver_version(index: int) -> str | None:
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


def make_logger(trt, log: Callable[[str], None]):
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


class TensorRTUnavailableError(BackendUnavailableError):
    """No TensorRT or no GPU here; ``command`` is the trtexec line that makes the same engine elsewhere."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command
