"""TensorRT: engine builds (strongly typed, 10.x and 11.x), the engine manifest, the runner, the trtexec line.

``tensorrt`` is imported inside the functions that need it, so this package imports on any machine.
This module is TensorRT's face: code outside ``backends/`` imports what it names here, never its modules.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...artifacts import PRECISIONS, engine_file
from ..base import ArtifactSet, Backend, Candidate, TritonModel
from . import probe
from .options import BuildOptions

if TYPE_CHECKING:
    from .build import build_engine, record_engines_skipped
    from .layers import layer_profile
    from .options import check_trt_major
    from .probe import TensorRTUnavailableError, summary, tensorrt_status

# What the face hands on, by the module that defines it, looked up when asked for: the builder and the profiler
# import torch, so they load on first use, and a test's stand-in for a probe is what every caller gets.
_HANDED_ON = {
    "build_engine": "build",
    "record_engines_skipped": "build",
    "layer_profile": "layers",
    "check_trt_major": "options",
    "TensorRTUnavailableError": "probe",
    "summary": "probe",
    "tensorrt_status": "probe",
}

__all__ = [
    "BACKEND",
    "BuildOptions",
    "TensorRTUnavailableError",
    "build_engine",
    "check_trt_major",
    "layer_profile",
    "record_engines_skipped",
    "summary",
    "tensorrt_status",
]


def __getattr__(name: str) -> Any:
    if name in _HANDED_ON:
        return getattr(importlib.import_module(f".{_HANDED_ON[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TensorRTBackend(Backend):
    name = "tensorrt"
    extra = "tensorrt-cu12"  # or tensorrt-cu13: the one matching torch's CUDA build, which install_hint() names
    description = "TensorRT engines on an NVIDIA GPU"
    int8_note = {"cuda": "ResNeXt's grouped convolutions have few fast INT8 kernels in TensorRT"}
    build_options = BuildOptions

    def unavailable(self) -> str | None:
        return probe.tensorrt_status()

    def install_hint(self) -> str:
        return probe.install_hint()

    def candidates(self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None) -> list[Candidate]:
        from .runner import TensorRTRunner

        found = []
        for precision in precisions:
            name = engine_file(precision)
            if artifacts.present(name):
                reason = probe.tensorrt_status() or artifacts.unusable(name)
                opener = functools.partial(TensorRTRunner, artifacts.path(name))
                found.append(Candidate(self.name, precision, "cuda", name, None if reason else opener, reason))
        return found

    def build(self, directory: Path, options: BuildOptions, log: Callable[[str], None]) -> dict[str, str]:
        """An engine per typed ONNX file where TensorRT and a GPU are here; else the trtexec lines, recorded."""
        from .build import build_engines

        return build_engines(directory, options, log)

    def triton_models(
        self, directory: Path, options: Mapping[str, Any], usable: Callable[[str], bool]
    ) -> list[TritonModel]:
        """One ``tensorrt_plan`` model per current engine, on GPU instances, batching within its profile."""
        from .manifest import read_engine_manifest
        from .trtexec import build_trt_command

        models = []
        for precision in PRECISIONS:
            name = engine_file(precision)
            if not usable(name):
                continue
            body = read_engine_manifest(directory / name)
            models.append(
                TritonModel(
                    name, precision, "trt", "tensorrt_plan", instance_kind="KIND_GPU", io_from=body.source_onnx,
                    batch_profile=body.profile.batches, built_with=body.tensorrt_version,
                    version_compatible=body.build_options.version_compatible,
                    rebuild=f"{build_trt_command(directory / name)} --min-batch 1", profile_input=body.profile.input,
                )
            )  # fmt: skip
        return models


BACKEND = TensorRTBackend()
