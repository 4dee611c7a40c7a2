"""ONNX files in ONNX Runtime: the CPU provider, and CUDA/TensorRT providers where onnxruntime-gpu is installed."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, BadInputError, one_line
from ..logs import ort_severity
from .base import (
    ArtifactSet,
    Backend,
    BackendOption,
    Candidate,
    Runner,
    TritonModel,
    run_in_chunks,
    usable_runtime_files,
)

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_HINT = "pip install 'resnext-deploy[gpu]' (onnxruntime-gpu, after pip uninstall onnxruntime) on a CUDA machine"


SPINNING_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
SPINNING_DEFAULT = True  # ONNX Runtime's own: idle pool threads spin


def physical_cores() -> int:
    """Physical cores of the whole machine (one per distinct core sibling list in sysfs): ONNX Runtime's default.

    ONNX Runtime sizes its pool by the machine's physical cores and ignores the process's affinity mask
    (``taskset -c 0`` still got two threads on a 2-core machine), so :func:`session_options` caps it.
    """
    siblings = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
        try:
            siblings.add(path.read_text().strip())
        except OSError:
            continue
    return len(siblings) or os.cpu_count() or 1


def default_threads() -> int | None:
    """The thread count a session gets without ``--threads``: None (ONNX Runtime's default) unless that default,
    the machine's physical cores, is more than the CPUs this process may use, and then those CPUs."""
    from ..environment import usable_cpus

    usable = usable_cpus()
    return usable if usable < physical_cores() else None


def session_options(threads: int | None = None, allow_spinning: bool = True) -> Any:
    """ONNX Runtime session options as every session here uses them: the log level ``--verbose`` sets, and threads.

    Without ``threads``, ONNX Runtime's own default, capped at the CPUs this process may use
    (:func:`default_threads`). ``allow_spinning=False`` makes idle pool threads sleep at once instead of
    spinning for the next call (bench's ``--passive-pools``); the default leaves ONNX Runtime's default.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = ort_severity()
    threads = threads or default_threads()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not allow_spinning:
        for key in SPINNING_KEYS:
            options.add_session_config_entry(key, "0")
    return options


def open_session(
    model: str | Path | bytes | Any,
    *,
    threads: int | None = None,
    allow_spinning: bool = True,
    provider: str = ORT_PROVIDERS["cpu"],
    optimize: bool = True,
    memory_pattern: bool = True,
    priority_order: bool = False,
    profile_prefix: str | Path | None = None,
    origin: str | Path | None = None,
) -> Any:
    """An ONNX Runtime session on ``model`` (a path, serialized bytes or a ModelProto) as every session here opens.

    It takes :func:`session_options` (log level, thread cap, spinning; telemetry is off since the package
    imported). ``optimize=False`` turns ONNX Runtime's graph rewrites off, so that the graph runs as written;
    ``memory_pattern=False`` its memory pattern (one block per run, planned from the first run);
    ``priority_order=True`` its priority-based execution order (by priority, then node index; with many
    fetched outputs it runs more of the layout copies it inserts before them early, and maps less memory);
    ``profile_prefix`` turns its profiler on, writing there. A model ONNX Runtime cannot load is bad input,
    naming ``origin`` (the file a ModelProto came from), else the path.
    """
    import onnxruntime as ort

    options = session_options(threads, allow_spinning)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_mem_pattern = memory_pattern
    if priority_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if isinstance(model, str | Path):
        source: str | bytes = str(model)
    else:
        source = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, options, providers=[provider])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
        what = origin or (model if isinstance(model, str | Path) else "the ONNX model")
        raise BadInputError(f"ONNX Runtime cannot load {what}: {one_line(exc)}") from None


def spinning_of(options: Any) -> bool:
    """Whether a session's idle intra-op threads spin, read back from its options (ONNX Runtime's default: yes)."""
    try:
        return str(options.get_session_config_entry(SPINNING_KEYS[0])) != "0"
    except Exception:  # noqa: BLE001 - ONNX Runtime raises when the entry was never set: its default
        return True


class OnnxRuntimeRunner(Runner):
    """An ONNX file in ONNX Runtime. ``device`` picks the execution provider: cpu, cuda or tensorrt."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        provider = ORT_PROVIDERS.get(device)
        if provider is None:
            raise BadInputError(f"unknown ONNX Runtime device {device!r}; use one of {', '.join(ORT_PROVIDERS)}")
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(f"ONNX Runtime has no {provider} here; {GPU_HINT}")
        self.path = Path(path)
        self.artifact = self.path.name
        self.precision = precision
        self.device = device
        self.session = open_session(self.path, threads=threads, allow_spinning=allow_spinning, provider=provider)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise BadInputError(f"{self.path} must have one NCHW image input; found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape
        given = self.session.get_session_options()  # what the session runs with, read back from it
        self.options = {
            "intra_op_threads": given.intra_op_num_threads or "default",
            "allow_spinning": spinning_of(given),
        }

    def infer(self, batch: np.ndarray) -> np.ndarray:
        declared = self.input_shape[1:]
        if batch.ndim != 4 or any(
            isinstance(d, int) and d != n for d, n in zip(declared, batch.shape[1:], strict=True)
        ):
            shape = " x ".join(str(d) for d in self.input_shape)
            raise BadInputError(f"{self.path} takes {shape} batches; got {' x '.join(map(str, batch.shape))}")
        static_batch = self.input_shape[0]
        if isinstance(static_batch, int) and static_batch != batch.shape[0]:
            return run_in_chunks(self._run, batch, static_batch, pad_to=static_batch)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)

    def close(self) -> None:
        self.session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime (CPU provider; CUDA and TensorRT providers with onnxruntime-gpu)"
    # No flag: bench turns spinning off for every backend with this knob with --passive-pools.
    options = (BackendOption("allow_spinning", SPINNING_DEFAULT, "Idle pool threads spin for the next call."),)
    int8_note = {
        "cpu": "ONNX Runtime's CPU provider fuses model.int8.ort.onnx into QLinearConv/QLinearAdd kernels; it runs "
        "TensorRT's model.int8.onnx (used when the ONNX Runtime file is absent) through quantize/dequantize pairs "
        "and float kernels",
        "cuda": "ONNX Runtime's CUDA provider has few int8 kernels and runs most Q/DQ pairs as separate "
        "quantize/dequantize steps",
        "tensorrt": "ResNeXt's grouped convolutions have few fast INT8 kernels in TensorRT",
    }

    def candidates(
        self,
        artifacts: ArtifactSet,
        precisions: Sequence[str],
        threads: int | None,
        *,
        allow_spinning: bool = SPINNING_DEFAULT,
    ) -> list[Candidate]:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        devices = [device for device, provider in ORT_PROVIDERS.items() if provider in available]
        found = []
        for precision in precisions:
            name = artifacts.runtime_file(precision, self.name)
            if name is None or not artifacts.present(name):
                continue
            reason = artifacts.unusable(name)
            for device in devices:
                opener = functools.partial(
                    OnnxRuntimeRunner, artifacts.path(name), precision, device, threads, allow_spinning
                )
                found.append(Candidate(self.name, precision, device, name, None if reason else opener, reason))
        return found

    def triton_models(
        self, directory: Path, options: Mapping[str, Any], usable: Callable[[str], bool]
    ) -> list[TritonModel]:
        """One ``onnxruntime_onnx`` model per current ONNX file; ``--onnx-kind`` says where it runs."""
        return [
            TritonModel(name, precision, "onnx", "onnxruntime_onnx")
            for precision, name in usable_runtime_files(self.name, usable)
        ]


BACKEND = OnnxRuntimeBackend()
