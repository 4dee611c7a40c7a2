"""One runner interface over every backend: open on an artifact, float32 NCHW in, float32 logits out.

Families: ``torch`` (the reference; CPU, and CUDA where present), ``onnxruntime`` (CPU EP; CUDA and
TensorRT EPs where onnxruntime-gpu is installed) and ``tensorrt`` (see :mod:`resnext_deploy.engine`).
Heavy or optional imports happen inside the runners that need them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError, BadInputError, one_line


class Runner:
    """Base class. ``last_device_ms`` is the device compute time of the last call where measurable."""

    backend: str = ""
    precision: str = "fp32"
    device: str = "cpu"
    artifact: str | None = None
    last_device_ms: float | None = None

    @property
    def name(self) -> str:
        where = f"{self.backend}-{self.device}" if self.device != "cpu" or self.backend == "torch" else self.backend
        return f"{where}:{self.precision}"

    def infer(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(np.ascontiguousarray(batch, dtype=np.float32))

    def close(self) -> None:
        """Release sessions and device memory."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class TorchRunner(Runner):
    """The PyTorch model itself: FP32 on CPU or CUDA, FP16 on CUDA (TF32 off for FP32 on CUDA)."""

    backend = "torch"

    def __init__(self, model, device: str = "cpu", precision: str = "fp32", threads: int | None = None) -> None:
        import copy

        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch CUDA runner needs a CUDA GPU and a CUDA build of torch")
        if precision == "fp16" and device != "cuda":
            raise BackendUnavailableError("torch FP16 runs on CUDA only; use precision fp32 on the CPU")
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.device = device
        self.precision = precision
        model = copy.deepcopy(model).eval().to(device)
        self.model = model.half() if precision == "fp16" else model
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

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


ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OnnxRuntimeRunner(Runner):
    """An ONNX file in ONNX Runtime. ``device`` picks the execution provider: cpu, cuda or tensorrt."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        provider = ORT_PROVIDERS.get(device)
        if provider is None:
            raise BadInputError(f"unknown ONNX Runtime device {device!r}; use one of {', '.join(ORT_PROVIDERS)}")
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"ONNX Runtime has no {provider} here; pip install 'resnext-deploy[gpu]' "
                "(onnxruntime-gpu, after pip uninstall onnxruntime) on a CUDA machine"
            )
        self.path = Path(path)
        self.artifact = self.path.name
        self.precision = precision
        self.device = device
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=[provider])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
            raise BadInputError(f"ONNX Runtime cannot load {self.path}: {one_line(exc)}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise BadInputError(f"{self.path} must have one NCHW image input; found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape

    def infer(self, batch: np.ndarray) -> np.ndarray:
        declared = self.input_shape[1:]
        if batch.ndim != 4 or any(
            isinstance(d, int) and d != n for d, n in zip(declared, batch.shape[1:], strict=True)
        ):
            shape = " x ".join(str(d) for d in self.input_shape)
            raise BadInputError(f"{self.path} takes {shape} batches; got {' x '.join(map(str, batch.shape))}")
        static_batch = self.input_shape[0]
        if isinstance(static_batch, int) and static_batch != batch.shape[0]:
            return run_in_chunks(self._run, batch, static_batch, pad=True)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)

    def close(self) -> None:
        self.session = None


def run_in_chunks(run, batch: np.ndarray, size: int, pad: bool = False) -> np.ndarray:
    """Run ``batch`` in chunks of at most ``size``; with ``pad``, the last chunk is zero-padded to ``size``."""
    outputs = []
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        real = len(chunk)
        if pad and real < size:
            chunk = np.concatenate([chunk, np.zeros((size - real, *batch.shape[1:]), dtype=batch.dtype)])
        outputs.append(run(chunk)[:real])
    return np.concatenate(outputs)
