"""What this machine offers: library versions, CUDA devices, ONNX Runtime providers, TensorRT."""

from __future__ import annotations

import os
import platform
import re
import stat
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata, util
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

# The README's fix for a torchvision that is not the build of the installed torch.
TORCHVISION_FIX = (
    "install the torchvision built for this torch from the index torch came from (README, Install), "
    "or `pip uninstall torchvision`"
)


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None (the import is deferred: it is heavy and optional)."""
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001 - a broken install is the same as none for this question
        return None
    # __version__ lives in the tensorrt package's Python __init__, not in the compiled bindings.
    return str(getattr(trt, "__version__", "unknown"))


def package_version(name: str) -> str | None:
    """An installed distribution's version, read from its metadata without importing it (None: not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torchvision_build() -> str | None:
    """torchvision's own version string with its build label (``0.28.0+cu130``), read from its ``version.py``.

    The distribution's version often drops the label; importing torchvision to ask would crash on a mismatch.
    """
    spec = util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(folder) / "version.py").read_text(encoding="utf-8")
        except OSError:
            continue
        if found := re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", text, re.MULTILINE):
            return found.group(1)
    return None


def torchvision_mismatch() -> str | None:
    """Why the installed torchvision cannot work with the installed torch, or None (it fits, or there is none).

    A torchvision wheel is built against one torch release and one CUDA build: PyPI's are CUDA builds, whose
    compiled ops need libtorch_cuda, so beside a CPU torch ``import torchvision`` (and ``import timm``) fails
    with "operator torchvision::nms does not exist".
    """
    installed = package_version("torchvision")
    if installed is None:
        return None
    import torch

    torch_version = Version(torch.__version__)
    for line in metadata.requires("torchvision") or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        fits = requirement.specifier.contains(torch_version.base_version, prereleases=True)
        if requirement.name == "torch" and requirement.marker is None and not fits:
            return f"torchvision {installed} needs torch{requirement.specifier}, not torch {torch.__version__}"
    try:
        build = Version(_torchvision_build() or installed)
    except InvalidVersion:
        return None
    label = build.local or ""
    if label.startswith("cu") and torch.version.cuda is None:
        return f"torchvision {build} is a CUDA build, but torch {torch.__version__} is a CPU build"
    if label.startswith("cu") and not label.startswith(f"cu{torch.version.cuda.split('.')[0]}"):
        return f"torchvision {build} and torch {torch.__version__} (CUDA {torch.version.cuda}) differ"
    return None


def optional_libraries() -> dict[str, str]:
    """The optional libraries users bring (torchvision, timm for their weights) and OpenVINO: version or absent."""
    return {name: package_version(name) or "not installed" for name in ("torchvision", "timm", "openvino")}


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
    if "MPLCONFIGDIR" not in os.environ:  # matplotlib (bench's plot) keeps its font cache under HOME otherwise
        os.environ["MPLCONFIGDIR"] = _private_temp_dir("matplotlib")


def _private_temp_dir(name: str) -> str:
    """A folder of this user's under the temporary directory, reused across runs; a fresh one if it is not ours."""
    path = os.path.join(tempfile.gettempdir(), f"resnext-deploy-{name}-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix=f"resnext-deploy-{name}-")
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():  # a link or another user's: not trusted
        return tempfile.mkdtemp(prefix=f"resnext-deploy-{name}-")
    return path


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and ``taskset`` narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int | None, log: Callable[[str], None]) -> int | None:
    """``--threads`` capped at the CPUs this process may use, with a warning when it asked for more.

    Every command taking ``--threads`` passes it through here: thread pools larger than the machine
    oversubscribe it (``--threads 1000`` on 2 cores ran 30x slower), and ONNX Runtime's session creation
    can hang when the process limit stops it from starting them. None (library defaults) and values
    below 1 (refused by the command's own check) pass through unchanged.
    """
    cpus = usable_cpus()
    if threads is None or threads <= cpus:
        return threads
    log(f"warning: --threads {threads} is more than the {cpus} CPUs this process may use; using {cpus}")
    return cpus


if __name__ == "__main__":  # `make setup`: exit 1 when the installed torchvision cannot work with this torch
    if problem := torchvision_mismatch():
        print(f"{problem}; {TORCHVISION_FIX}", file=sys.stderr)
        sys.exit(1)
