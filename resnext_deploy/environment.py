"""What this machine offers: library versions, CUDA devices, ONNX Runtime providers, TensorRT."""

from __future__ import annotations

import os
import platform
import sys


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None (the import is deferred: it is heavy and optional)."""
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001 - a broken install is the same as none for this question
        return None
    # __version__ lives in the tensorrt package's Python __init__, not in the compiled bindings.
    return str(getattr(trt, "__version__", "unknown"))


def cuda_available() -> bool:
    """The one CUDA probe: a GPU visible to a CUDA build of torch."""
    import torch

    return bool(torch.cuda.is_available())


def cuda_devices() -> list[str]:
    import torch

    if not cuda_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(f"{index}: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)")
    return devices


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from . import __version__

    devices = cuda_devices()
    return {
        "resnext-deploy": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch cuda": torch.version.cuda or "CPU build",
        "cuda devices": "; ".join(devices) if devices else "none",
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime providers": ", ".join(onnxruntime.get_available_providers()),
        "tensorrt": tensorrt_version() or "not installed",
    }


def stay_offline() -> None:
    """Turn off the telemetry of the libraries this tool drives, before any of them is imported.

    ONNX Runtime (1.2x+ on Linux) writes a device id under ``~/.cache/Microsoft/DeveloperTools`` on import
    unless ``ORT_DISABLE_TELEMETRY`` is set; OpenVINO's converter package initialises ``openvino_telemetry``
    on ``import openvino``, which writes ``~/intel/openvino_ga_cid`` and looks up Google Analytics' host.
    Its own fallback (a stub) is taken when ``openvino_telemetry`` cannot be imported, which a ``None``
    entry in ``sys.modules`` arranges without touching the installation.
    """
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None makes imports fail
