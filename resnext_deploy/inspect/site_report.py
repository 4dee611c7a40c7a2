"""Per-site accuracy of one typed file as records: the passes of :mod:`.accuracy`, ranked, with what the INT8
search did at each site and, for the worst few, what keeping the site in float would give."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import ArtifactEntry, read_json
from ..errors import BadInputError
from .accuracy import Passes, SiteErrors, cpu_session, site_errors
from .records import ArtifactAccuracy, SiteRecord
from .sites import Site, fp16_sites, initializer_arrays, int8_sites, module_path

CONFIRMED = 3  # the worst sites (local view) whose output-level effect is measured with full passes


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0


def logit_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Squared logit error over the logits' energy (the INT8 search's sensitivity measure)."""
    if not np.isfinite(candidate).all():
        return math.inf
    return float(((candidate - reference) ** 2).sum() / max(float((reference**2).sum()), 1e-30))


def sites_of(float_model: Any, typed: Any, entry: ArtifactEntry) -> list[Site]:
    if entry.precision == "int8":
        return int8_sites(typed, float_model)
    fp32_nodes = entry.fp32_nodes
    return fp16_sites(typed, float_model, fp32_nodes)


def saved_sensitivities(directory: Path, model_sha256: str) -> dict[str, float]:
    """The INT8 search's saved per-site logit errors for this model.onnx (by node name), or none.

    They were measured on the search's graph (its method, remedies and check images), so inspect shows
    them as ``saved`` beside what it measures itself and never mixes the two in one ranking.
    """
    path = directory / "int8_search.json"
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except BadInputError:
        return {}
    key = data.get("key") if isinstance(data, dict) else None
    scores = data.get("scores") if isinstance(data, dict) else None
    if not isinstance(key, dict) or key.get("model") != model_sha256 or not isinstance(scores, dict):
        return {}
    return {str(k): float(v) for k, v in scores.items() if isinstance(v, int | float) and math.isfinite(v)}


def search_action(site: Site, search: Mapping[str, Any] | None, remedies: Sequence[str]) -> str:
    """What the INT8 search did at ``site``, from the manifest's record of it."""
    if site.precision == "fp32":
        by_search = search and set(site.consumers) & set(search.get("kept", []))
        return "kept in float" + (" by the search" if by_search else "")
    if site.precision != "int8":
        return ""
    done = []
    if "equalization" in remedies and any("Conv" in name for name in site.consumers):
        done.append("equalized")
    if "bias correction" in remedies and site.kind == "qdq":
        done.append("bias-corrected")
    return ", ".join(done) or ("none" if search else "")  # no record: the file passed without a search


def _with_site(float_model: Any, typed: Any, site: Site, alone: bool) -> Any:
    """An in-memory file with one site changed: ``alone``: model.onnx with only ``site`` typed; else the typed
    file with ``site`` kept in float (its pair and the weight's dequantization bypassed)."""
    import onnx
    from onnx import helper, numpy_helper

    from .accuracy import typed_weight

    model = onnx.ModelProto()
    model.CopyFrom(float_model if alone else typed)
    nodes = {node.name: node for node in model.graph.node}
    typed_inits = initializer_arrays(typed)
    float_inits = initializer_arrays(float_model)
    float_nodes = {node.name: node for node in float_model.graph.node}
    producers = {out: node for node in model.graph.node for out in node.output}
    for name in site.consumers:
        node, original = nodes.get(name), float_nodes.get(name)
        if node is None or original is None:
            continue
        for index, tensor in enumerate(node.input):
            if alone and tensor == site.tensor and site.scale:
                base = f"inspect_{index}_{name}"
                model.graph.initializer.extend(
                    [
                        numpy_helper.from_array(np.asarray(site.scale, np.float32), f"{base}_scale"),
                        numpy_helper.from_array(np.zeros((), np.int8), f"{base}_zero"),
                    ]
                )
                model.graph.node.extend(
                    [
                        helper.make_node("QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zero"], [f"{base}_q"]),
                        helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zero"], [base]),
                    ]
                )
                node.input[index] = base
            elif alone and tensor in float_inits:
                value = typed_weight(typed, typed_inits, name, index)
                if value is not None:
                    model.graph.initializer.append(numpy_helper.from_array(value, f"inspect_w{index}_{name}"))
                    node.input[index] = f"inspect_w{index}_{name}"
            elif not alone and tensor in producers and producers[tensor].op_type == "DequantizeLinear":
                dq = producers[tensor]
                source = dq.input[0]
                if source in producers and producers[source].op_type == "QuantizeLinear":
                    node.input[index] = producers[source].input[0]  # the activation, before its pair
                elif source in typed_inits and index < len(original.input) and original.input[index] in float_inits:
                    dtype = typed_inits[dq.input[1]].dtype
                    weight = float_inits[original.input[index]].astype(dtype)
                    model.graph.initializer.append(numpy_helper.from_array(weight, f"inspect_w{index}_{name}"))
                    node.input[index] = f"inspect_w{index}_{name}"
    if alone:
        from ..precision.graph import toposort

        toposort(model.graph)
    return model


def _logits(model: Any, images: np.ndarray) -> np.ndarray:
    session = cpu_session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 16]})[0] for i in range(0, len(images), 16)])


def artifact_accuracy(
    directory: Path,
    entry: ArtifactEntry,
    float_model: Any,
    typed: Any,
    images: np.ndarray,
    search: Mapping[str, Any] | None,
    confirm: int = CONFIRMED,
) -> tuple[ArtifactAccuracy, Passes]:
    """The records of one typed file on ``images``: both views, ranked; the worst few confirmed on the logits."""
    sites = sites_of(float_model, typed, entry)
    passes = site_errors(float_model, typed, sites, images)
    records = [_record(errors, search, entry.remedies) for errors in passes.errors]
    records = _ranked(records)
    fp32 = entry.parent_sha256 or ""
    saved = saved_sensitivities(directory, fp32) if entry.precision == "int8" else {}
    top1 = agreement(passes.float_logits, passes.typed_logits)
    label = "FP32" if entry.options.get("high_precision") == "fp32" else "FP16"
    worst = {s.tensor for s in sorted(records, key=lambda s: s.local_rank or 10**9)[:confirm] if s.local_rank}
    final = []
    for record, site in zip(records, sites, strict=True):
        scores = [saved[n] for n in site.consumers if n in saved]
        if scores and len(scores) == len(site.consumers):
            record = replace(record, alone_rel_error=max(scores), alone_source="saved")
        if site.tensor in worst and site.precision == "int8":
            if record.alone_source is None:
                alone = _logits(_with_site(float_model, typed, site, alone=True), images)
                record = replace(
                    record,
                    alone_rel_error=logit_error(passes.float_logits, alone),
                    alone_top1=agreement(passes.float_logits, alone),
                    alone_source="measured",
                )
            kept = agreement(passes.float_logits, _logits(_with_site(float_model, typed, site, alone=False), images))
            record = replace(record, fix=f"keep `{record.node}` in {label}: top-1 {top1:.1%} -> {kept:.1%}")
        final.append(record)
    return ArtifactAccuracy(entry.name, entry.precision or "", top1, tuple(final)), passes


def _record(errors: SiteErrors, search: Mapping[str, Any] | None, remedies: Sequence[str]) -> SiteRecord:
    site = errors.site
    node = site.consumers[0] if site.consumers else site.tensor
    share = max(errors.values, 1)
    return SiteRecord(
        tensor=site.tensor,
        node=node,
        module=module_path(node),
        kind=site.kind,
        precision=site.precision,
        depth=site.depth,
        nodes=site.consumers,
        scale=site.scale,
        step=errors.step,
        low=errors.low if errors.values else 0.0,
        high=errors.high if errors.values else 0.0,
        clipped=errors.clipped / share,
        flushed=errors.flushed / share,
        rel_error=errors.rel_error,
        local_sqnr_db=errors.local.sqnr_db if errors.local is not None else None,
        local_cosine=errors.local.cosine if errors.local is not None else None,
        accumulated_sqnr_db=errors.accumulated.sqnr_db if errors.accumulated.count else None,
        accumulated_cosine=errors.accumulated.cosine if errors.accumulated.count else None,
        reached_sqnr_db=errors.reached.sqnr_db if errors.reached.count else None,
        added=errors.added if errors.accumulated.count else None,
        search=search_action(site, search, remedies),
    )


def _ranked(records: list[SiteRecord]) -> list[SiteRecord]:
    """Local view: lowest SQNR first; accumulated view: the largest share of error added at the site first."""
    local = sorted((r for r in records if r.local_sqnr_db is not None), key=lambda r: r.local_sqnr_db or 0.0)
    added = sorted((r for r in records if r.added is not None), key=lambda r: -(r.added or 0.0))
    local_rank = {r.tensor: i for i, r in enumerate(local, start=1)}
    added_rank = {r.tensor: i for i, r in enumerate(added, start=1)}
    return [replace(r, local_rank=local_rank.get(r.tensor), accumulated_rank=added_rank.get(r.tensor)) for r in records]
