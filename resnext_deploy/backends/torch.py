"""The PyTorch model itself: the reference (FP32 on the CPU), and FP32/FP16 on CUDA where present."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..environment import cuda_available
from ..errors import BackendUnavailableError
from .base import ArtifactSet, Backend, Candidate, Runner

# (precision, device) pairs torch runs; CUDA ones only where a GPU is visible.
TORCH_TARGETS = (("fp32", "cpu"), ("fp32", "cuda"), ("fp16", "cuda"))


class TorchRunner(Runner):
    """The PyTorch model: FP32 on CPU or CUDA, FP16 on CUDA (TF32 off for FP32 on CUDA).

    Threads and TF32 are process-wide torch settings: they are set while the runner is open and put
    back on :meth:`close`.
    """

    backend = "torch"

    def __init__(self, model: Any, device: str = "cpu", precision: str = "fp32", threads: int | None = None) -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch CUDA runner needs a CUDA GPU and a CUDA build of torch")
        if precision == "fp16" and device != "cuda":
            raise BackendUnavailableError("torch FP16 runs on CUDA only; use precision fp32 on the CPU")
        self._torch = torch
        self._restore: list[Callable[[], None]] = []
        if threads:
            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            self._restore.append(lambda: torch.set_num_threads(previous_threads))
        self.device = device
        self.precision = precision
        model = copy.deepcopy(model).eval().to(device)
        self.model = model.half() if precision == "fp16" else model
        self.compute_precision = "f16" if precision == "fp16" else "f32"
        self.options = {"threads": torch.get_num_threads()}
        if device == "cuda":
            matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

            def restore_tf32() -> None:
                torch.backends.cuda.matmul.allow_tf32 = matmul
                torch.backends.cudnn.allow_tf32 = cudnn

            self._restore.append(restore_tf32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if self.precision == "fp16":
                x = x.half()
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                y = self.model(x)
                end.record()
                out = y.float().cpu().numpy()  # synchronizes
                self.last_device_ms = start.elapsed_time(end)
                return out
            return self.model(x).float().numpy()

    def close(self) -> None:
        while self._restore:
            self._restore.pop()()


class TorchBackend(Backend):
    name = "torch"
    description = "PyTorch eager, the reference (CPU; CUDA where present)"

    def candidates(self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None) -> list[Candidate]:
        build = functools.cache(artifacts.source.build)
        gpu = cuda_available()
        return [
            Candidate("torch", precision, device, None, functools.partial(_open, build, device, precision, threads))
            for precision, device in TORCH_TARGETS
            if precision in precisions and (device == "cpu" or gpu)
        ]


def _open(build: Callable[[], Any], device: str, precision: str, threads: int | None) -> Runner:
    return TorchRunner(build(), device=device, precision=precision, threads=threads)


BACKEND = TorchBackend()
