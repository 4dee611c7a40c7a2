"""Is TensorRT usable here: the import, a CUDA GPU, the version, and the GPU an engine is built on.

The rest of the package calls these through the module (``probe.tensorrt_status()``), so there is one
place to ask, and one place a contract test replaces.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...environment import cuda_available
from ...environment import tensorrt_version as tensorrt_version  # asked through this module
from ...errors import BackendUnavailableError, one_line

if TYPE_CHECKING:  # for annotations only: tensorrt is imported where it is used
    import tensorrt as trt

# TensorRT's wheels come per CUDA major; the extra must match the CUDA build of torch (which shares the driver).
CUDA_EXTRAS = {"12": "tensorrt-cu12", "13": "tensorrt-cu13"}
NULL_FACTORY = "factory function returned nullptr"  # pybind11's TypeError when TensorRT returns NULL


def install_hint() -> str:
    """The pip line for the TensorRT extra that matches this torch's CUDA build."""
    import torch

    cuda: str | None = torch.version.cuda
    extra = CUDA_EXTRAS.get((cuda or "").split(".")[0])
    if extra is None:
        return (
            "pip install 'resnext-deploy[tensorrt-cu12]' or 'resnext-deploy[tensorrt-cu13]' (the CUDA major of "
            "your CUDA build of torch) on a machine with an NVIDIA GPU"
        )
    return f"pip install 'resnext-deploy[{extra}]' (torch here is a CUDA {cuda} build) on a machine with an NVIDIA GPU"


def tensorrt_status() -> str | None:
    """None when TensorRT imports, a CUDA GPU is visible and TensorRT can create a runtime; else why not."""
    try:
        import tensorrt  # noqa: F401 - the import is the question
    except Exception as exc:  # noqa: BLE001 - a broken install is as unusable as a missing one
        return f"TensorRT is not installed or does not import ({type(exc).__name__}: {exc}); {install_hint()}"
    if not cuda_available():
        return (
            "no CUDA GPU is visible to PyTorch (no device, no driver, or a CPU build of torch); "
            "TensorRT engines are built and run on an NVIDIA GPU"
        )
    return runtime_problem()


def runtime_problem() -> str | None:
    """Why TensorRT cannot create a ``Runtime`` here, with what it logged; None when it can."""
    import tensorrt as trt

    errors: list[str] = []
    try:
        trt.Runtime(make_logger(errors, lambda _m: None))
    except TypeError as exc:
        return str(factory_failed("runtime", errors, exc))
    return None


def factory_failed(what: str, errors: list[str], exc: TypeError) -> BackendUnavailableError:
    """``trt.Builder``/``trt.Runtime`` got NULL from TensorRT, which pybind11 raises as a TypeError.

    It happens when TensorRT cannot initialize CUDA, most often because the driver is older than the CUDA
    major of the TensorRT wheels (NVIDIA/TensorRT#2913). A TypeError of another kind is a bug and re-raised.
    """
    if NULL_FACTORY not in str(exc):
        raise exc
    logged = "; ".join(errors[-3:]) or f"it logged nothing; {one_line(exc)}"
    return BackendUnavailableError(
        f"TensorRT {tensorrt_version()} could not create a {what} ({logged}). Most often the NVIDIA driver is "
        f"older than this TensorRT's CUDA build needs (nvidia-smi shows the newest CUDA it supports); "
        f"{install_hint()}, or update the driver"
    )


def major_version(version: str) -> int:
    return int(version.split(".")[0])


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built on, as its engine manifest records it (driver and CUDA are informational)."""

    gpu: str  # the device name
    compute_capability: str  # "8.6": an engine runs only on this one unless built for ampere+
    driver_version: str | None = None
    cuda_runtime: str | None = None


def gpu_info() -> GpuInfo:
    """The current CUDA device as the engine manifest records it."""
    import torch

    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return GpuInfo(props.name, f"{props.major}.{props.minor}", driver_version(index), torch.version.cuda)


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


def make_logger(errors: list[str], log: Callable[[str], None]) -> trt.ILogger:
    """A TensorRT logger that appends errors to ``errors`` (for the exception message) and forwards warnings.

    The subclass of ``trt.ILogger`` is made here, on use, so that nothing of TensorRT is touched at import.
    """
    import tensorrt as trt

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log(f"TensorRT: {msg}")

    return _Logger()


class TensorRTUnavailableError(BackendUnavailableError):
    """No TensorRT or no GPU here; ``command`` is the trtexec line that makes the same engine elsewhere."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command


def summary() -> str:
    """TensorRT's version and whether it can create a runtime here (what `info` shows).

    An import alone proves little: the wheels import without a GPU, and with a driver too old for their CUDA build.
    """
    version = tensorrt_version()
    if version is None:
        return f"not installed ({install_hint()})"
    if not cuda_available():
        return f"{version} (no CUDA GPU visible, so not usable here)"
    problem = runtime_problem()
    return f"{version} (cannot run here: {problem})" if problem else f"{version} (creates a runtime)"
