"""TensorRT: engine builds (strongly typed, 10.x and 11.x), the engine manifest, the runner, the trtexec line.

``tensorrt`` is imported inside the functions that need it, so this package imports on any machine.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ...artifacts import engine_file
from ..base import ArtifactSet, Backend, Candidate
from . import probe


class TensorRTBackend(Backend):
    name = "tensorrt"
    extra = "tensorrt-cu12"  # or tensorrt-cu13: the one matching torch's CUDA build, which install_hint() names
    description = "TensorRT engines on an NVIDIA GPU"

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


BACKEND = TensorRTBackend()
