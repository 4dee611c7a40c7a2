"""Typed ONNX: ``model.fp16.onnx`` and ``model.int8.onnx`` (explicit Q/DQ), made and checked with ONNX Runtime.

TensorRT 11 takes precision from the graph alone (strongly typed networks), so every precision
decision is made here, on the CPU, where it can be checked against ``model.onnx`` on held-out data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import ONNX_FILES, Manifest, atomic_path
from ..backends.onnxruntime import OnnxRuntimeRunner
from ..data import Dataset
from ..errors import BadInputError, VerificationError
from ..evaluate.metrics import DEFAULT_TOLERANCES, Parity, Tolerance, compare
from ..source import ModelSource, labels_match_model
from ..ui import progress
from .calibration import (
    DEFAULT_CALIB_COUNT,
    DEFAULT_METHOD,
    DEFAULT_PERCENTILE,
    Log,
    calibrate,
    calibration_dataset,
    check_method,
    heldout_dataset,
)
from .fp16 import FP16_DATA_MAX, fp16_model
from .graph import load_prepared, save_model
from .int8 import HIGH_PRECISIONS, int8_model

CHECK_BATCH = 16
EXPORT_HINT = "run `resnext-deploy export --dir DIR` first"


@dataclass
class TypedResult:
    """A typed ONNX file and how it compared with ``model.onnx`` on held-out inputs."""

    path: Path
    precision: str
    parity: Parity | None
    reused: bool = False
    fp32_nodes: tuple[str, ...] = ()
    quantized_nodes: tuple[str, ...] = ()


def make_typed_onnx(
    directory: str | Path,
    precision: str,
    calib_source: str | Path | None = None,
    calib_count: int = DEFAULT_CALIB_COUNT,
    calib_method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    exclude: tuple[str, ...] | list[str] = (),
    high_precision: str = "fp16",
    seed: int = 0,
    log: Log = print,
    tolerance: Tolerance | None = None,
    check_count: int | None = None,
) -> TypedResult:
    """Write ``DIR/model.<precision>.onnx`` from ``DIR/model.onnx``, check it, record it; or reuse it.

    ``fp32`` returns model.onnx itself once the manifest vouches for it. The typed file is checked
    with ONNX Runtime against model.onnx on held-out inputs (see
    :func:`~resnext_deploy.calibration.heldout_dataset`) with ``tolerance`` (default: the
    precision's entry in :data:`~resnext_deploy.metrics.DEFAULT_TOLERANCES`); a failed check
    raises :class:`VerificationError` and writes nothing.
    """
    if precision not in ONNX_FILES:
        raise BadInputError(f"unknown precision {precision!r}; choose one of: {', '.join(ONNX_FILES)}")
    if high_precision not in HIGH_PRECISIONS:
        raise BadInputError(f"--high-precision must be one of {', '.join(HIGH_PRECISIONS)}, got {high_precision!r}")
    check_method(calib_method, percentile)
    directory = Path(directory)
    manifest = Manifest(directory)
    parent = manifest.require(ONNX_FILES["fp32"], EXPORT_HINT)
    parent_path = directory / ONNX_FILES["fp32"]
    if precision == "fp32":
        log(f"{parent_path} is the FP32 model (recorded in the manifest)")
        return TypedResult(parent_path, "fp32", None, reused=True)
    try:
        source = ModelSource.from_dict(parent["options"]["source"])
    except (KeyError, TypeError):
        raise BadInputError(f"the manifest entry of {parent_path} names no model source; {EXPORT_HINT}") from None

    name = ONNX_FILES[precision]
    final = directory / name
    tolerance = tolerance or DEFAULT_TOLERANCES[precision]
    dataset = calibration_dataset(source, precision, calib_source, calib_count, seed)
    options = _options(precision, dataset, calib_source, calib_method, percentile, exclude, high_precision, seed)
    options["tolerance"] = asdict(tolerance)
    if manifest.is_current(name, parent["sha256"], options):
        entry = manifest.entry(name) or {}
        log(f"{final} is up to date (same model.onnx, calibration data and options); reusing it")
        return TypedResult(
            final,
            precision,
            _parity_from_dict(entry.get("parity")),
            reused=True,
            fp32_nodes=tuple(entry.get("fp32_nodes", ())),
            quantized_nodes=tuple(entry.get("quantized_nodes", ())),
        )
    if dataset.fingerprint.startswith("synthetic"):
        log(f"warning: no calibration images for {source.arch}; FP16 ranges come from {dataset.description}")

    calibration = calibrate(directory, parent_path, dataset, calib_method, percentile, log)
    model = load_prepared(parent_path)
    if precision == "fp16":
        model, fp32_nodes = fp16_model(model, calibration)
        quantized: list[str] = []
    else:
        model, fp32_nodes, plan = int8_model(model, calibration, tuple(exclude), high_precision)
        quantized = plan.weighted
        log(
            f"INT8: {len(plan.weighted)} Conv/Gemm nodes quantized, {len(plan.consumers)} activation tensors "
            f"with Q/DQ ({len(plan.residual_adds)} residual Add shortcuts); the rest in {high_precision}"
        )
    log(_block_summary(precision, fp32_nodes))

    heldout = heldout_dataset(source, dataset, calibration.consumed, calib_source, seed, check_count)
    use_labels = labels_match_model(heldout, source)
    with atomic_path(final) as tmp:
        save_model(model, tmp)
        del model
        parity = check_parity(parent_path, tmp, precision, heldout, tolerance, use_labels)
        log(_parity_summary(name, heldout, parity))
        if not parity:
            hint = " (try --calib-method, --exclude or --high-precision fp32)" if precision == "int8" else ""
            raise VerificationError(
                f"{name} disagrees with model.onnx on {heldout.description}: {'; '.join(parity.failures)}{hint}; "
                f"no {name} was written"
            )
    manifest.record(
        name,
        precision,
        parent_sha256=parent["sha256"],
        options=options,
        calibration={
            "fingerprint": calibration.fingerprint,
            "description": calibration.description,
            "count": calibration.count,
            "method": calibration.method,
            "percentile": calibration.percentile,
        },
        heldout=heldout.description,
        parity=parity.to_dict(),
        fp32_nodes=fp32_nodes,
        quantized_nodes=quantized,
    )
    log(f"wrote {final}")
    return TypedResult(final, precision, parity, fp32_nodes=tuple(fp32_nodes), quantized_nodes=tuple(quantized))


def _options(
    precision: str,
    dataset: Dataset,
    calib_source: str | Path | None,
    method: str,
    percentile: float,
    exclude: tuple[str, ...] | list[str],
    high_precision: str,
    seed: int,
) -> dict[str, Any]:
    """What the typed file depends on besides model.onnx; the manifest compares it to resume."""
    options: dict[str, Any] = {
        "calibration": {
            "source": None if calib_source is None else str(Path(calib_source).resolve()),
            "fingerprint": dataset.fingerprint,
            "count": dataset.count,
            "seed": seed,
        },
        "fp16_data_max": FP16_DATA_MAX,
    }
    if precision == "int8":
        options["calibration"].update(method=method, percentile=percentile)
        options.update(exclude=list(exclude), high_precision=high_precision)
    return options


def _parity_from_dict(data: dict[str, Any] | None) -> Parity | None:
    if not data:
        return None
    fields = {k: v for k, v in data.items() if k in Parity.__dataclass_fields__}
    return Parity(**{**fields, "failures": tuple(fields.get("failures", ()))})


def check_parity(
    reference: str | Path,
    candidate: str | Path,
    precision: str,
    dataset: Dataset,
    tolerance: Tolerance,
    use_labels: bool,
) -> Parity:
    """Run both files in ONNX Runtime on the same inputs and compare the logits."""
    reference_runner = OnnxRuntimeRunner(reference)
    candidate_runner = OnnxRuntimeRunner(candidate, precision)
    refs, cands, labels = [], [], []
    with progress(dataset.count, f"checking {precision} on {dataset.count} held-out samples") as advance:
        for batch in dataset.batches(CHECK_BATCH):
            refs.append(reference_runner(batch.images))
            cands.append(candidate_runner(batch.images))
            if batch.labels is not None:
                labels.append(batch.labels)
            advance(len(batch.images))
    reference_runner.close()
    candidate_runner.close()
    truth = np.concatenate(labels) if use_labels and labels else None
    return compare(np.concatenate(refs), np.concatenate(cands), tolerance, truth)


def _parity_summary(name: str, dataset: Dataset, parity: Parity) -> str:
    text = (
        f"{name} vs model.onnx on {dataset.description}: cosine min {parity.cosine_min:.6f} "
        f"mean {parity.cosine_mean:.6f}, top-1 agreement {parity.top1_agreement:.2%}, "
        f"top-5 overlap {parity.top5_overlap:.2%}"
    )
    if parity.accuracy is not None:
        text += f", accuracy {parity.accuracy:.2f}% (FP32 {parity.reference_accuracy:.2f}%)"
    return text + ("" if parity else f" -- FAILED: {'; '.join(parity.failures)}")


def _block_summary(precision: str, fp32_nodes: list[str]) -> str:
    if not fp32_nodes:
        return f"{precision.upper()}: no activation near float16's range on the calibration data; nothing kept in FP32"
    shown = ", ".join(fp32_nodes[:5]) + (", ..." if len(fp32_nodes) > 5 else "")
    return (
        f"{precision.upper()}: {len(fp32_nodes)} nodes kept in FP32 (|x| over {FP16_DATA_MAX:g} on the "
        f"calibration data): {shown}"
    )


# ----------------------------------------------------------------------------------------------
# Graph preparation shared by both precisions
