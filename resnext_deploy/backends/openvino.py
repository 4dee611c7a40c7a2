"""ONNX files in OpenVINO on the CPU: the explicit-Q/DQ INT8 file runs on fused int8 kernels here.

OpenVINO's CPU plugin defaults to bf16 compute on CPUs that have it, so the fp32 candidate pins
``INFERENCE_PRECISION_HINT=f32``; bf16 is a candidate of its own, run only when asked for. Compiled
models are cached under the artifact directory, one folder per file content (sha256), so a changed
file is compiled again and never served from a stale cache; each folder's blobs are sealed by sha256 after
compiling and checked before use.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import ONNX_FILES, read_json, sha256_file, write_json
from ..errors import BadInputError, one_line
from .base import ArtifactSet, Backend, BackendOption, Candidate, Runner, TritonModel, usable_runtime_files

PERFORMANCE_HINTS = ("latency", "throughput")
DEFAULT_HINT = "latency"
CACHE_DIR = "openvino_cache"
CACHE_SEAL = "compiled.json"  # sha256 of each blob OpenVINO wrote, taken right after it compiled
# The ONNX file each precision runs; bf16 is the FP32 file computed in bf16.
FILES = {**ONNX_FILES, "bf16": ONNX_FILES["fp32"]}
# INT8: the layers between Q/DQ pairs in f32. OpenVINO 2026.4 cannot compile some Q/DQ files (ONNX Runtime's
# per-channel S8S8 ones) in bf16, and on ResNeXt-50 f32 there cost no measurable time: the convolutions are int8.
PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
# Layer types of OpenVINO's runtime model that move or hold data rather than compute: left out of what a runner
# reports it computes in.
DATA_LAYERS = frozenset({"Const", "Input", "Output", "Parameter", "Result", "Reorder", "Reshape", "Convert"})
# Layer types named on their own in that report; the others are summed up as "rest".
MAIN_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")
# x86 flags of int8 dot products that accumulate in int32 (no int16 saturation).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Without them a pair of u8 x s8 products (u8 up to 255) must fit in an int16: |weight| <= 64. model.int8.onnx
# keeps 63 (WEIGHT_MAX); ONNX Runtime's quantize_static(reduce_range=True) gives 64.
SAFE_WEIGHT_MAX = int(np.iinfo(np.int16).max) // (2 * 255)


def _installed() -> bool:
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
        return False


def cpu_has_vnni() -> bool | None:
    """Whether this CPU sums int8 products in int32 (VNNI, AVX-VNNI, AMX-INT8); None where /proc/cpuinfo can't say.

    Without them OpenVINO's int8 convolutions sum pairs of u8 x s8 products in a saturating int16
    (``vpmaddubsw``): the reason model.int8.onnx has 7-bit weights (``precision/int8.py``, ``WEIGHT_MAX``).
    """
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), None)
    return None if flags is None else bool(VNNI_FLAGS & set(flags))


def cpu_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin can compute natively here (FP32, BF16, FP16, INT8, ...)."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINORunner(Runner):
    """An ONNX file compiled by OpenVINO for the CPU.

    ``precision`` picks the compute precision: fp32 and bf16 force it, fp16 computes in f16 where the
    CPU has native FP16 and in f32 otherwise, int8 runs the quantized layers in int8 and the rest in
    f32. With the throughput hint a batch is split over OpenVINO's optimal number of parallel infer
    requests (its streams); with the latency hint one request runs the whole batch.
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        precision: str = "fp32",
        threads: int | None = None,
        performance_hint: str = "latency",
        cache_dir: str | Path | None = None,
    ) -> None:
        import openvino as ov

        if performance_hint not in PERFORMANCE_HINTS:
            raise BadInputError(
                f"unknown OpenVINO hint {performance_hint!r}; use one of {', '.join(PERFORMANCE_HINTS)}"
            )
        self.path = Path(path)
        self.artifact = self.path.name
        self.precision = precision
        config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint.upper()}
        hint = PRECISION_HINTS.get(precision)
        if precision == "fp16":
            hint = "f16" if "FP16" in cpu_capabilities() else "f32"
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        try:
            self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises untyped errors for files it cannot compile
            raise BadInputError(f"OpenVINO cannot compile {self.path}: {one_line(exc)}") from None
        inputs = self.compiled.inputs
        if len(inputs) != 1 or inputs[0].get_partial_shape().rank.get_length() != 4:
            raise BadInputError(f"{self.path} must have one NCHW image input; found {len(inputs)} input(s)")
        # Declared dimensions (None where dynamic), to refuse a wrong batch with a clear message.
        self.input_shape = [d.get_length() if d.is_static else None for d in inputs[0].get_partial_shape()]
        self.requests = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.request = self.compiled.create_infer_request()
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests) if self.requests > 1 else None
        self.options = {
            "performance_hint": performance_hint,
            "inference_precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "num_streams": int(self.compiled.get_property("NUM_STREAMS")),
            "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "infer_requests": self.requests,
            "runtime_precision": runtime_precisions(self.compiled),
        }
        summary = precision_summary(self.options["runtime_precision"])
        self.compute_precision = summary or self.options["inference_precision"]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or any(d not in (None, n) for d, n in zip(self.input_shape, batch.shape, strict=True)):
            shape = " x ".join("?" if d is None else str(d) for d in self.input_shape)
            raise BadInputError(f"{self.path} takes {shape} batches; got {' x '.join(map(str, batch.shape))}")
        if self.queue is None or len(batch) == 1:
            return np.array(self.request.infer({0: batch})[0], dtype=np.float32)
        chunks = np.array_split(batch, min(self.requests, len(batch)))
        outputs: dict[int, np.ndarray] = {}

        def done(request: Any, index: int) -> None:
            outputs[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

        self.queue.set_callback(done)
        for index, chunk in enumerate(chunks):
            self.queue.start_async({0: chunk}, index)
        self.queue.wait_all()
        return np.concatenate([outputs[index] for index in range(len(chunks))])

    def close(self) -> None:
        self.queue = self.request = self.compiled = None


def runtime_precisions(compiled: Any) -> dict[str, dict[str, int]]:
    """What the compiled model runs, from OpenVINO's runtime model: per layer type, its layers by runtime precision.

    Only computing layers (not :data:`DATA_LAYERS`); e.g. ``{"Convolution": {"i8": 53}, "Eltwise": {"f32": 2}}``.
    An empty dict where the runtime model cannot be read.
    """
    found: dict[str, dict[str, int]] = {}
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
            if kind not in DATA_LAYERS:
                counts = found.setdefault(kind, {})
                counts[precision] = counts.get(precision, 0) + 1
    except Exception:  # noqa: BLE001 - an OpenVINO without these runtime-info keys: nothing to report
        return {}
    return found


def precision_summary(layers: Mapping[str, Mapping[str, int]]) -> str | None:
    """One line from :func:`runtime_precisions`: ``f32`` where everything runs in one precision, else
    e.g. ``i8 Convolution 53/53, i8 FullyConnected 1/1; rest: i8 60, f32 4``. None where nothing was read."""
    totals: dict[str, int] = {}
    for counts in layers.values():
        for precision, count in counts.items():
            totals[precision] = totals.get(precision, 0) + count
    if len(totals) <= 1:
        return next(iter(totals), None)
    parts = []
    for kind in MAIN_LAYERS:
        counts = layers.get(kind, {})
        total = sum(counts.values())
        parts += [f"{p} {kind} {n}/{total}" for p, n in sorted(counts.items(), key=lambda item: -item[1])]
    rest: dict[str, int] = {}
    for kind, counts in layers.items():
        if kind not in MAIN_LAYERS:
            for precision, count in counts.items():
                rest[precision] = rest.get(precision, 0) + count
    text = ", ".join(parts)
    if rest:
        text += (
            ("; " if text else "")
            + "rest: "
            + ", ".join(f"{p} {n}" for p, n in sorted(rest.items(), key=lambda item: -item[1]))
        )
    return text


class OpenVINOBackend(Backend):
    name = "openvino"
    extra = "openvino"
    description = "OpenVINO on the CPU (fp32 pinned to f32; bf16 only when asked for)"
    options = (
        BackendOption(
            "performance_hint",
            DEFAULT_HINT,
            "OpenVINO performance hint (bench rows record it; triton-repo writes it as PERFORMANCE_HINT).",
            flag="--ov-hint",
            choices=PERFORMANCE_HINTS,
        ),
    )
    int8_note = {
        "cpu": "OpenVINO's CPU plugin fuses the Q/DQ pairs into int8 convolutions, which are fast only with VNNI "
        "or AMX-INT8 instructions (avx512_vnni, avx_vnni, amx_int8); without them, or when the machine is busy, "
        "int8 gains little"
    }

    def unavailable(self) -> str | None:
        return None if _installed() else f"OpenVINO is not installed; {self.install_hint()}"

    def candidates(
        self,
        artifacts: ArtifactSet,
        precisions: Sequence[str],
        threads: int | None,
        *,
        performance_hint: str = DEFAULT_HINT,
    ) -> list[Candidate]:
        missing = self.unavailable()
        found = []
        for precision in precisions:
            name = artifacts.runtime_file(precision, self.name) if precision in ONNX_FILES else FILES.get(precision)
            if name is None or not artifacts.present(name):
                continue
            reason = missing or artifacts.unusable(name)
            if reason is None and precision == "bf16" and "BF16" not in cpu_capabilities():
                reason = "this CPU has no native bf16 (OpenVINO lists no BF16 capability)"
            if reason is None and precision == "int8" and cpu_has_vnni() is False:
                reason = _saturating_weights(artifacts.path(name))
            opener = None
            entry = artifacts.manifest.entry(name)  # recorded and unchanged once ``unusable`` found no reason
            if reason is None and entry is not None:
                cache = artifacts.directory / CACHE_DIR / f"{name}-{entry.sha256[:16]}"
                opener = functools.partial(_open, artifacts.path(name), precision, threads, performance_hint, cache)
            found.append(Candidate(self.name, precision, "cpu", name, opener, reason))
        return found

    def triton_models(
        self, directory: Path, options: Mapping[str, Any], usable: Callable[[str], bool]
    ) -> list[TritonModel]:
        """One model per current ONNX file on Triton's ``openvino`` backend, CPU instances.

        The throughput hint fits a server's concurrent requests only with several instances; one
        instance serves Triton's batches one at a time, which the latency hint (the default) runs fastest.
        """
        hint = {"PERFORMANCE_HINT": str(options["performance_hint"]).upper()}
        return [
            TritonModel(name, precision, self.name, self.name, triton_backend=True, instance_kind="KIND_CPU",
                        parameters=hint)
            for precision, name in usable_runtime_files(self.name, usable)
        ]  # fmt: skip


def _saturating_weights(path: Path) -> str | None:
    """Why an INT8 file's weights would saturate OpenVINO's int16 pair sums on this CPU (no VNNI), or None.

    Files made before weights had 7 bits (or by other tools) may hold weights up to 127; OpenVINO runs
    them without a word and returns wrong logits, so the candidate is skipped with the fix instead.
    """
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception:  # noqa: BLE001 - an unreadable file fails where OpenVINO compiles it, with its own message
        return None
    weights = {node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    largest = max(
        (int(np.abs(numpy_helper.to_array(init).astype(np.int32)).max(initial=0)) for init in graph.initializer
         if init.name in weights and init.data_type == onnx.TensorProto.INT8),
        default=0,
    )  # fmt: skip
    if largest <= SAFE_WEIGHT_MAX:
        return None
    return (
        f"{path.name} has 8-bit weights (up to {largest}); OpenVINO's int8 convolutions on this CPU (no VNNI/AMX) "
        f"sum them in a saturating int16 and return wrong logits; make it again with build-trt --int8 "
        f"(7-bit weights; at most {SAFE_WEIGHT_MAX} is safe)"
    )


def _open(path: Path, precision: str, threads: int | None, performance_hint: str, cache: Path) -> Runner:
    """Open a runner with OpenVINO's compiled-model cache in ``cache`` when it can be trusted, else uncached.

    Uncached: a read-only DIR, or an ``openvino_cache`` that is a symlink (never followed out of DIR).
    """
    if not _usable_cache(cache):
        return OpenVINORunner(path, precision, threads, performance_hint)
    runner = OpenVINORunner(path, precision, threads, performance_hint, cache)
    with contextlib.suppress(OSError, BadInputError):  # an unsealed cache is checked, and emptied, next time
        write_json(cache / CACHE_SEAL, {"blobs": _blob_hashes(cache)})
    return runner


def _blob_hashes(cache: Path) -> dict[str, str]:
    """sha256 of every regular file in ``cache`` except the seal (OpenVINO's compiled blobs)."""
    return {
        entry.name: sha256_file(entry)
        for entry in sorted(cache.iterdir())
        if entry.name != CACHE_SEAL and stat.S_ISREG(entry.lstat().st_mode)
    }


def _usable_cache(cache: Path) -> bool:
    """True when ``cache`` is a real folder under DIR whose blobs match the seal taken after they were made.

    Blobs that differ from what was compiled (corrupted, edited) or that have no seal are removed, so
    OpenVINO compiles again: a corrupted blob gave NaN logits with HTTP 200 from ``serve --backend
    openvino``. A symlink or anything but regular files is not followed and makes the run uncached.
    """
    try:
        for level in (cache.parent, cache):
            if level.is_symlink() or (level.exists() and not level.is_dir()):
                return False
            level.mkdir(exist_ok=True)
        entries = list(cache.iterdir())
        if any(not stat.S_ISREG(entry.lstat().st_mode) for entry in entries):
            return False
        sealed = read_json(cache / CACHE_SEAL).get("blobs") if (cache / CACHE_SEAL).exists() else None
        if entries and sealed != _blob_hashes(cache):
            for entry in entries:
                entry.unlink()
    except (OSError, BadInputError, AttributeError):  # AttributeError: a seal that is not an object
        return False
    return True


BACKEND = OpenVINOBackend()
