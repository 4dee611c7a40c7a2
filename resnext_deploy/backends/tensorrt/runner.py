"""A TensorRT engine behind the runner interface, with torch CUDA tensors as its buffers.

Security: a TensorRT engine is executable code (its kernels, and in a version-compatible engine a whole
TensorRT runtime, run on your machine with your privileges). Load only engines you built yourself or
received from someone you trust, the same rule as for pickled checkpoints. :class:`TensorRTRunner`
refuses an engine whose bytes differ from the manifest written beside it, which catches corruption and
accidental swaps, but the manifest is not a signature and cannot vouch for an engine from a stranger.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BackendUnavailableError, BadInputError
from ..base import Runner, run_in_chunks
from . import probe
from .manifest import check_compatible, read_engine_manifest
from .probe import factory_failed, make_logger
from .trtexec import build_trt_command

if TYPE_CHECKING:  # for annotations only: tensorrt is imported where it is used
    import tensorrt as trt


@dataclass
class _Loaded:
    """What TensorRT gave us for one engine; the context belongs to the engine, the engine to the runtime."""

    runtime: trt.Runtime
    engine: trt.ICudaEngine
    context: trt.IExecutionContext


class TensorRTRunner(Runner):
    """A TensorRT engine behind the runner interface, with torch CUDA tensors as its device buffers.

    Only open engines you built or trust: an engine is executable code (see the module docstring).
    """

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: str | Path) -> None:
        self.path = Path(engine_path)
        self.artifact = self.path.name
        meta = read_engine_manifest(self.path)
        plan = self.path.read_bytes()
        if hashlib.sha256(plan).hexdigest() != meta.plan_sha256:
            raise BadInputError(
                f"{self.path} is not the engine its manifest describes (sha256 differs): it was replaced or "
                f"corrupted; rebuild it with `{build_trt_command(self.path)}`"
            )
        reason = probe.tensorrt_status()
        if reason is not None:
            raise BackendUnavailableError(reason)
        installed = str(probe.tensorrt_version())
        check_compatible(meta, self.path, installed, probe.gpu_info().compute_capability)
        import tensorrt as trt
        import torch

        self._torch = torch
        self.meta = meta
        self.precision = meta.precision

        self._errors: list[str] = []
        try:
            runtime = trt.Runtime(make_logger(self._errors, lambda _m: None))
        except TypeError as exc:
            raise factory_failed("runtime", self._errors, exc) from None
        if meta.build_options.version_compatible:
            # The plan carries its own lean runtime (host code); the sha256 check above is what lets us trust it.
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            detail = "; ".join(self._errors[-3:]) or "no detail given"
            raise BadInputError(f"TensorRT {installed} cannot load {self.path}: {detail}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(f"{self.path} must have one input and one output; found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        try:
            self._input_dtype = dtypes[engine.get_tensor_dtype(self.input_name)]
            self._output_dtype = dtypes[engine.get_tensor_dtype(self.output_name)]
        except KeyError:
            raise BadInputError(f"{self.path} has I/O types other than float32/float16; rebuild it") from None
        low, _opt, high = (tuple(s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
        self.min_batch, self.max_batch, self.chw = low[0], high[0], tuple(high[1:])
        context = engine.create_execution_context()
        if context is None:
            raise BackendUnavailableError(
                f"TensorRT could not create an execution context for {self.path} (GPU memory?)"
            )
        self._loaded: _Loaded | None = _Loaded(runtime, engine, context)
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(self._device)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.chw or len(batch) == 0:
            raise BadInputError(f"{self.path} takes N x {' x '.join(map(str, self.chw))} batches; got {batch.shape}")
        self._device_ms = 0.0
        if self.min_batch <= len(batch) <= self.max_batch:
            out = self._run(batch)
        else:  # chunks of the profile's maximum, the last one zero-padded up to its minimum
            out = run_in_chunks(self._run, batch, self.max_batch, pad_to=self.min_batch)
        self.last_device_ms = self._device_ms
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._loaded is None:
            raise BadInputError(f"the runner of {self.path} was closed")
        context = self._loaded.context
        torch = self._torch
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(batch).to(self._device).to(self._input_dtype).contiguous()
            shape = tuple(x.shape)
            if not context.set_input_shape(self.input_name, shape):
                raise BadInputError(f"batch shape {shape} is outside {self.path}'s optimization profile")
            y = torch.empty(
                tuple(context.get_tensor_shape(self.output_name)), dtype=self._output_dtype, device=self._device
            )
            context.set_tensor_address(self.input_name, x.data_ptr())
            context.set_tensor_address(self.output_name, y.data_ptr())
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(self._stream)
            ok = context.execute_async_v3(self._stream.cuda_stream)
            end.record(self._stream)
            if not ok:
                raise BadInputError(f"TensorRT failed to run {self.path}: {'; '.join(self._errors[-3:])}")
            out: np.ndarray = y.float().cpu().numpy()  # waits for the stream
        end.synchronize()
        self._device_ms += start.elapsed_time(end)
        return out

    def close(self) -> None:
        self._loaded = None
