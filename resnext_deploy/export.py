"""FP32 ONNX export, checked at once against PyTorch in ONNX Runtime."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifacts import CALIBRATION_NAME, ONNX_FILES, Manifest, atomic_path, read_json, tool_versions
from .backends.base import BATCH_LIMIT
from .backends.onnxruntime import OnnxRuntimeRunner
from .backends.torch import TorchRunner
from .errors import BadInputError, VerificationError
from .parity import DEFAULT_TOLERANCES, Parity, compare
from .source import ModelSource

ONNX_NAME = ONNX_FILES["fp32"]
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
PARITY_BATCHES = (1, 4)


@dataclass
class ExportResult:
    path: Path
    parity: dict[int, Parity]
    reused: bool = False


def onnx_metadata(source: ModelSource) -> dict[str, str]:
    """The ``metadata_props`` every exported file carries, so later steps need nothing else."""
    pre = source.preprocessing
    return {
        "resnext_deploy.arch": source.arch,
        "resnext_deploy.num_classes": str(source.num_classes),
        "resnext_deploy.image_size": str(pre.image_size),
        "resnext_deploy.preprocessing": json.dumps(
            {
                "resize_size": pre.resize_size,
                "crop_size": pre.image_size,
                "crop_pct": round(pre.crop_pct, 6),
                "interpolation": pre.interpolation,
                "mean": pre.mean,
                "std": pre.std,
                "scale": "1/255",
                "layout": "NCHW",
                "color": "RGB",
            }
        ),
        "resnext_deploy.class_names": json.dumps(list(source.class_names)),
        "resnext_deploy.checkpoint_sha256": source.checkpoint_sha256 or "random-init",
        "resnext_deploy.weights": "random" if source.random_weights else "checkpoint",
        "resnext_deploy.versions": json.dumps(tool_versions()),
    }


@dataclass(frozen=True)
class ExportOptions:
    """What ``model.onnx`` depends on besides the checkpoint: the model source and the export's settings."""

    source: ModelSource
    opset: int
    static_batch: int | None  # None: a dynamic batch dimension


def check_export_options(opset: int, static_batch: int | None) -> None:
    """Refuse bad export options before anything is created on disk."""
    if not 13 <= opset <= 21:
        raise BadInputError(f"--opset must be between 13 and 21 (TensorRT's ONNX parser range), got {opset}")
    if static_batch is not None and not 1 <= static_batch <= BATCH_LIMIT:
        raise BadInputError(f"--static-batch must be between 1 and {BATCH_LIMIT}, got {static_batch}")


def export_onnx(
    source: ModelSource,
    directory: str | Path,
    opset: int = DEFAULT_OPSET,
    static_batch: int | None = None,
    log=print,
) -> ExportResult:
    """Write ``DIR/model.onnx`` and record it; reuse it when the manifest says it is current."""
    import onnx
    import torch

    check_export_options(opset, static_batch)
    directory = Path(directory)
    manifest = Manifest(directory)
    options = ExportOptions(source, opset, static_batch)
    final = directory / ONNX_NAME
    log(f"model: {source.describe()}")
    if manifest.is_current(ONNX_NAME, source.checkpoint_sha256, options):
        log(f"{final} is up to date (same model and options); reusing it")
        return ExportResult(final, {}, reused=True)

    log("building the PyTorch model")
    model = source.build()
    size = source.image_size
    example = torch.zeros(static_batch or 2, 3, size, size)
    dynamic = None if static_batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with atomic_path(final) as tmp:
        log(f"exporting to ONNX (opset {opset}; up to a minute for the largest models on a small CPU)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        proto.producer_name = "resnext-deploy"
        onnx.helper.set_model_props(proto, onnx_metadata(source))
        onnx.save(proto, str(tmp))
        log("checking the ONNX file (onnx.checker), then ONNX Runtime against PyTorch")
        onnx.checker.check_model(str(tmp), full_check=True)
        weights = f"checkpoint {source.checkpoint}" if source.checkpoint else "the seeded random weights"
        parity = check_export(model, tmp, static_batch, size, weights)
        for batch, result in parity.items():
            log(
                f"ONNX Runtime vs PyTorch, batch {batch}: max abs diff {result.max_abs:.3g} "
                f"(logit scale {result.scale:.3g}), min cosine {result.cosine_min:.7f}"
            )
        failed = {b: p for b, p in parity.items() if not p}
        if failed:
            batch, result = next(iter(failed.items()))
            raise VerificationError(
                f"the exported ONNX file disagrees with PyTorch at batch {batch}: {'; '.join(result.failures)}; "
                "no model.onnx was written"
            )
    manifest.record(
        ONNX_NAME,
        "fp32",
        parent_sha256=source.checkpoint_sha256,
        options=options,
        parity={str(b): p.to_dict() for b, p in parity.items()},
        weights_warning=source.weights_warning(),
    )
    log(f"wrote {final}")
    if warning := source.weights_warning():
        log(f"warning: {warning}")
    for name, reason in manifest.stale().items():
        log(f"warning: {name} is stale ({reason}); verify and bench skip it, build-trt or pipeline remakes it")
    _warn_stale_calibration(directory, manifest, log)
    return ExportResult(final, parity)


def _warn_stale_calibration(directory: Path, manifest: Manifest, log) -> None:
    """calibration.json is not a manifest artifact; say when it belongs to an earlier model.onnx (redone on use)."""
    path = directory / CALIBRATION_NAME
    if not path.exists():
        return
    try:
        made_for = read_json(path).get("model_sha256")
    except BadInputError:
        made_for = None
    entry = manifest.entry(ONNX_NAME)
    if entry is None or made_for != entry.sha256:
        log(f"warning: {CALIBRATION_NAME} is stale (made for an earlier model.onnx); build-trt calibrates again")


def check_export(
    model, path: Path, static_batch: int | None, image_size: int, weights: str = "the weights"
) -> dict[int, Parity]:
    """Run PyTorch and ONNX Runtime on the same seeded inputs at two batch sizes.

    A reference that is itself NaN or Inf (``weights`` that overflow float32) is bad input, not an export fault.
    """
    rng = np.random.default_rng(0)
    reference = TorchRunner(model)
    candidate = OnnxRuntimeRunner(path)
    results = {}
    for batch in (static_batch,) if static_batch else PARITY_BATCHES:
        x = rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)
        expected = reference(x)
        if not np.isfinite(expected).all():
            candidate.close()
            raise BadInputError(
                f"with {weights} the PyTorch model itself computes NaN or Inf on seeded N(0,1) inputs (values too "
                "large for float32?); check the weights; no model.onnx was written"
            )
        results[batch] = compare(expected, candidate(x), DEFAULT_TOLERANCES["fp32"])
    candidate.close()
    return results
