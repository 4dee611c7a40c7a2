"""Typed ONNX: ``model.fp16.onnx`` and ``model.int8.onnx`` (explicit Q/DQ), made and checked with ONNX Runtime.

TensorRT 11 takes precision from the graph alone (strongly typed networks), so every precision
decision is made here, on the CPU, where it can be checked against ``model.onnx`` on held-out data.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import ONNX_FILES, ORT_INT8_FILE, CalibrationRef, Manifest, atomic_path
from ..backends.base import Runner
from ..backends.onnxruntime import OnnxRuntimeRunner
from ..backends.openvino import BACKEND as OPENVINO
from ..data import Dataset
from ..errors import BadInputError, VerificationError
from ..parity import BUILD_MIN_DECISIVE, Parity, Tolerance, compare
from ..serde import decode
from ..source import ModelSource, labels_match_model, recorded_source
from ..ui import progress
from .bias import correct_biases
from .calibration import Calibration, Log, calibrate
from .fp16 import FP16_DATA_MAX, fp16_model
from .graph import load_prepared, save_model
from .int8 import WEIGHT_MAX, QdqPlan, graph_quantization, int8_model
from .int8_ort import DEFAULT_ACTIVATION_TYPE, int8_ort_model
from .options import PrecisionOptions
from .records import CalibrationData, CheckData, Int8Options, Int8RuntimeOptions, SearchLimits, TypedOptions
from .search import CheckSet, SearchKey, SearchRecord, SearchResult, search_int8
from .split import HELDOUT_MAX, data_warnings, given_calibration, split_for

CHECK_BATCH = 16
# The build's check must predict verify's verdict. The minimum cosine and the misses of a few dozen
# images understate those of verify's hundreds (three files passed at cosine 0.991 on 32 images and
# failed at 0.97-0.98 on 500), so a check set smaller than verify's default takes a margin: half of
# each allowance of the tolerance (see Tolerance.tightened). On VERIFY_SET images or more, none.
BUILD_MARGIN = 0.5
VERIFY_SET = HELDOUT_MAX
EXPORT_HINT = "run `resnext-deploy export --dir DIR` first"
ORT_STEP = "int8 for onnxruntime"  # the manifest's skipped step when model.int8.ort.onnx fails its check


@dataclass
class TypedResult:
    """A typed ONNX file and how it compared with ``model.onnx`` on held-out inputs."""

    path: Path
    precision: str
    parity: Parity | None
    reused: bool = False
    fp32_nodes: tuple[str, ...] = ()
    quantized_nodes: tuple[str, ...] = ()
    search: SearchRecord | None = None
    remedies: tuple[str, ...] = ()  # INT8: equalization, bias correction, exclusion, as the file uses them
    runtime_files: tuple[Path, ...] = ()  # INT8: the variants for other runtimes written beside it (ONNX Runtime's)


@dataclass(frozen=True)
class TypedPlan:
    """What one typed file is made from and checked against, decided before anything is computed."""

    directory: Path
    precision: str
    parent_sha256: str
    source: ModelSource
    dataset: Dataset  # calibration images
    heldout: Dataset  # check images, never among them
    tolerance: Tolerance  # the build's check: the precision's tolerance, tightened on a small check set
    margin: str  # says when it is tightened, for the failure message
    record_options: TypedOptions  # what the file depends on besides model.onnx (the manifest compares it)
    use_labels: bool

    @property
    def name(self) -> str:
        return ONNX_FILES[self.precision]

    @property
    def parent_path(self) -> Path:
        return self.directory / ONNX_FILES["fp32"]

    @property
    def synthetic(self) -> bool:
        return self.heldout.fingerprint.startswith("synthetic")


@dataclass
class TypedBuild:
    """The typed graph before it is written, and what went into it."""

    model: Any  # the ONNX graph; released once written, so the check runs without it in memory
    calibration: Calibration
    fp32_nodes: list[str]
    quantized: list[str] = field(default_factory=list)  # INT8: the weighted nodes
    tensors: list[str] = field(default_factory=list)  # INT8: the activation tensors with Q/DQ
    search: SearchRecord | None = None
    ort_model: Any = None  # INT8: ONNX Runtime's placement of the same sites and ranges (model.int8.ort.onnx)
    ort_parity: Parity | None = None
    ort_skipped: str | None = None  # why no model.int8.ort.onnx is written
    ort_tensors: list[str] = field(default_factory=list)  # its activation tensors with Q/DQ
    expected: list[np.ndarray] = field(default_factory=list)  # model.onnx's logits on the check set, once run

    @property
    def remedies(self) -> list[str]:
        return self.search.remedies if self.search else []


def make_typed_onnx(
    directory: str | Path,
    precision: str,
    options: PrecisionOptions | None = None,
    log: Log = print,
) -> TypedResult:
    """Write ``DIR/model.<precision>.onnx`` from ``DIR/model.onnx``, check it, record it; or reuse it.

    ``fp32`` returns model.onnx itself once the manifest vouches for it. The typed file is checked
    with ONNX Runtime against model.onnx on held-out inputs (see
    :func:`~resnext_deploy.precision.split.split_datasets`) with the precision's tolerance. An
    INT8 file that fails is searched for sensitive layers (:mod:`~resnext_deploy.precision.search`)
    unless ``options.search`` is off; a failed check raises :class:`VerificationError` and writes nothing.
    Four steps: :func:`plan_typed`, :func:`run_typed`, :func:`judge_typed`, :func:`record_typed`.
    """
    options = options or PrecisionOptions()
    if precision not in ONNX_FILES:
        raise BadInputError(f"unknown precision {precision!r}; choose one of: {', '.join(ONNX_FILES)}")
    manifest = Manifest(Path(directory))
    parent = manifest.require(ONNX_FILES["fp32"], EXPORT_HINT)
    if precision == "fp32":
        log(f"{manifest.directory / ONNX_FILES['fp32']} is the FP32 model (recorded in the manifest)")
        return TypedResult(manifest.directory / ONNX_FILES["fp32"], "fp32", None, reused=True)
    plan = plan_typed(manifest, parent.sha256, precision, options)
    reused = _reused(manifest, plan, log)
    if reused is not None:
        return reused
    built = run_typed(plan, options, log)
    parity = judge_typed(plan, built, options, log)
    return record_typed(manifest, plan, built, parity, log)


def plan_typed(manifest: Manifest, parent_sha256: str, precision: str, options: PrecisionOptions) -> TypedPlan:
    """The data split, the check's tolerance and the options record of one typed file."""
    source = recorded_source(manifest)
    dataset, heldout = split_for(source, precision, options)
    tolerance, margin = check_tolerance(options.tolerance(precision), heldout.count)
    calib_source = given_calibration(source, options.calib_source)
    record_options = _options(precision, dataset, heldout, options, calib_source, tolerance)
    return TypedPlan(
        manifest.directory,
        precision,
        parent_sha256,
        source,
        dataset,
        heldout,
        tolerance,
        margin,
        record_options,
        labels_match_model(heldout, source),
    )


def _reused(manifest: Manifest, plan: TypedPlan, log: Log) -> TypedResult | None:
    """The recorded file when it was made from the same model.onnx, data and options."""
    if not manifest.is_current(plan.name, plan.parent_sha256, plan.record_options):
        return None
    entry = manifest.entry(plan.name)
    if entry is None:
        return None
    final = plan.directory / plan.name
    if (
        plan.precision == "int8"
        and ort_is_target()
        and not manifest.is_current(ORT_INT8_FILE, entry.sha256, _ort_options(plan))
    ):
        log(f"{final} is up to date but {ORT_INT8_FILE} is not; making both again from one calibration")
        return None
    log(f"{final} is up to date (same model.onnx, calibration data and options); reusing it")
    return TypedResult(
        final,
        plan.precision,
        None if not entry.parity else decode(Parity, entry.parity, nan_as_null=True),
        reused=True,
        fp32_nodes=entry.fp32_nodes,
        quantized_nodes=tuple(entry.quantized_nodes or ()),
        search=None if entry.search is None else SearchRecord.from_dict(entry.search),
        remedies=entry.remedies,
        runtime_files=_recorded_variants(manifest, plan),
    )


def run_typed(plan: TypedPlan, options: PrecisionOptions, log: Log) -> TypedBuild:
    """Calibrate and build the typed graph (for INT8, searched when it fails and the search is on)."""
    if plan.dataset.fingerprint.startswith("synthetic"):
        log(f"WARNING: no images for {plan.source.arch}; FP16 ranges come from {plan.dataset.description}")
    if plan.synthetic:
        log(f"WARNING: the check runs on {plan.heldout.description}: it shows numeric parity only, not accuracy")
    for note in data_warnings(plan.dataset, plan.heldout, plan.source.num_classes):
        log(f"warning: {note}")
    if plan.heldout.count < options.min_check:
        raise BadInputError(
            f"only {plan.heldout.count} check samples in {plan.heldout.description}; the check needs at least "
            f"{options.min_check} (add images, or pass --check-data with more)"
        )
    calibration = calibrate(
        plan.directory, plan.parent_path, plan.dataset, options.calib_method, options.percentile, log
    )
    prepared = load_prepared(plan.parent_path)
    if plan.precision == "fp16":
        model, fp32_nodes = fp16_model(prepared, calibration)
        built = TypedBuild(model, calibration, fp32_nodes)
    else:
        built = _int8(plan, prepared, calibration, options, log)
    log(_block_summary(plan.precision, built.fp32_nodes))
    return built


def judge_typed(plan: TypedPlan, built: TypedBuild, options: PrecisionOptions, log: Log) -> Parity:
    """Write the graph to a temporary file, check that file, and move it into place only when it passes."""
    final = plan.directory / plan.name
    with atomic_path(final) as tmp:
        save_model(built.model, tmp)
        built.model = None
        parity = check_parity(
            plan.parent_path, tmp, plan.precision, plan.heldout, plan.tolerance, plan.use_labels, built.expected, log
        )
        log(_parity_summary(plan.name, plan.heldout, parity))
        if not parity:
            raise VerificationError(
                f"{plan.name} disagrees with model.onnx on {plan.heldout.description}: {'; '.join(parity.failures)}"
                f"{plan.margin}{_tried(built.search, options)}; no {plan.name} was written"
            )
    if built.ort_model is not None:
        with contextlib.suppress(_NotKept):
            _judge_ort(plan, built, log)
    return parity


def _judge_ort(plan: TypedPlan, built: TypedBuild, log: Log) -> None:
    """Write and check ONNX Runtime's INT8 file on ONNX Runtime, like the TensorRT file; one that fails is not kept.

    It has the TensorRT file's sites and ranges, but more tensors quantized (the Add inputs, the bias), so
    it is checked on its own; a failure leaves ONNX Runtime on model.int8.onnx and says why.
    """
    with atomic_path(plan.directory / ORT_INT8_FILE) as tmp:
        save_model(built.ort_model, tmp)
        built.ort_model = None
        parity = check_parity(
            plan.parent_path, tmp, "int8", plan.heldout, plan.tolerance, plan.use_labels, built.expected, openvino=False
        )
        log(_parity_summary(ORT_INT8_FILE, plan.heldout, parity))
        if not parity:
            built.ort_skipped = (
                f"{ORT_INT8_FILE} disagrees with model.onnx on {plan.heldout.description}: "
                f"{'; '.join(parity.failures)}{plan.margin}; ONNX Runtime runs {plan.name} instead"
            )
            log(f"warning: {built.ort_skipped}")
            raise _NotKept
        built.ort_parity = parity


class _NotKept(Exception):
    """Leaves atomic_path without moving the checked file into place."""


def record_typed(manifest: Manifest, plan: TypedPlan, built: TypedBuild, parity: Parity, log: Log) -> TypedResult:
    """Record the written file in the manifest, with its data, check, float nodes and (INT8) remedies."""
    search = built.search.to_dict() if built.search else None
    calibration = built.calibration
    ranges = CalibrationRef(
        fingerprint=calibration.fingerprint,
        description=calibration.description,
        count=calibration.count,
        method=built.search.method if built.search else calibration.method,
        percentile=calibration.percentile,
    )
    entry = manifest.record(
        plan.name,
        plan.precision,
        parent_sha256=plan.parent_sha256,
        options=plan.record_options,
        calibration=ranges,
        heldout=plan.heldout.description,
        heldout_synthetic=plan.synthetic,
        parity=parity.to_dict(),
        fp32_nodes=built.fp32_nodes,
        quantized_nodes=built.quantized,
        quantized_tensors=built.tensors,
        search=search,
        remedies=built.remedies,
    )
    final = plan.directory / plan.name
    log(f"wrote {final}")
    variants: tuple[Path, ...] = ()
    if plan.precision == "int8":
        variants = _record_ort(manifest, plan, built, entry.sha256, ranges, log)
    return TypedResult(
        final,
        plan.precision,
        parity,
        fp32_nodes=tuple(built.fp32_nodes),
        quantized_nodes=tuple(built.quantized),
        search=built.search,
        remedies=tuple(built.remedies),
        runtime_files=variants,
    )


def _record_ort(
    manifest: Manifest, plan: TypedPlan, built: TypedBuild, parent_sha256: str, ranges: CalibrationRef, log: Log
) -> tuple[Path, ...]:
    """Record model.int8.ort.onnx as the INT8 file's ONNX Runtime variant, or forget an older one not made again.

    Its parent is model.int8.onnx: made again, that file makes this one stale, so the two never disagree.
    """
    path = plan.directory / ORT_INT8_FILE
    if built.ort_parity is None:
        manifest.forget(ORT_INT8_FILE)
        path.unlink(missing_ok=True)  # an older variant would no longer match model.int8.onnx
        manifest.record_skipped(ORT_STEP, built.ort_skipped)
        return ()
    manifest.record(
        ORT_INT8_FILE,
        plan.precision,
        parent_sha256=parent_sha256,
        options=_ort_options(plan),
        calibration=ranges,
        heldout=plan.heldout.description,
        heldout_synthetic=plan.synthetic,
        parity=built.ort_parity.to_dict(),
        fp32_nodes=[],
        quantized_nodes=built.quantized,
        quantized_tensors=built.ort_tensors,
        placement="onnxruntime",
        remedies=built.remedies,
    )
    manifest.record_skipped(ORT_STEP, None)
    log(f"wrote {path} (ONNX Runtime's placement of the same sites and ranges)")
    return (path,)


def _ort_options(plan: TypedPlan) -> Int8RuntimeOptions:
    """The TensorRT file's options and the variant's own: what makes model.int8.ort.onnx current."""
    assert isinstance(plan.record_options, Int8Options), "only the INT8 file has an ONNX Runtime variant"
    return plan.record_options.for_runtime("onnxruntime", DEFAULT_ACTIVATION_TYPE)


def _recorded_variants(manifest: Manifest, plan: TypedPlan) -> tuple[Path, ...]:
    return (plan.directory / ORT_INT8_FILE,) if plan.precision == "int8" and manifest.entry(ORT_INT8_FILE) else ()


def ort_is_target() -> bool:
    """Whether ONNX Runtime is a deployment target here (installed): then the INT8 step writes its own file."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def check_tolerance(tolerance: Tolerance, count: int) -> tuple[Tolerance, str]:
    """The tolerance the build's check applies on ``count`` images, and a note when it is the tightened one."""
    if count >= VERIFY_SET:
        return tolerance, ""
    note = (
        f" (the build's check on {count} images keeps a margin: half of each allowance of the tolerance, and "
        f"decisive top-1 as verify judges it only on {BUILD_MIN_DECISIVE} decisive samples or more, else no flip among "
        f"the decisive samples (raw agreement where the error is large), so that verify on "
        f"{VERIFY_SET} agrees; pass --check-data with {VERIFY_SET} images to check without it)"
    )
    return replace(tolerance.tightened(BUILD_MARGIN), decisive_min=BUILD_MIN_DECISIVE), note


def _int8(plan: TypedPlan, prepared: Any, calibration: Calibration, options: PrecisionOptions, log: Log) -> TypedBuild:
    """The INT8 graph with the configured method; searched further when it fails and the search is on."""
    search_record = None
    searched = None
    check = None
    # ONNX Runtime's file starts from the same float graph: int8_model changes it in place, the search copies it
    base = (prepared if options.search else _copy(prepared)) if ort_is_target() else None
    if not options.search:
        model, fp32_nodes, qdq = int8_model(prepared, calibration, options.exclude, options.high_precision)
    else:
        key = SearchKey(  # by content: model.onnx's sha256, the calibration and check images' fingerprints
            model=plan.parent_sha256,
            calibration=calibration.fingerprint,
            check=plan.record_options.check,
            percentile=options.percentile,
            exclude=tuple(sorted(options.exclude)),  # the sites there are to rank (a saved score names only those)
        )
        check = CheckSet(plan.parent_path, plan.heldout, plan.use_labels)
        searched = search_int8(
            plan.directory, prepared, calibration, plan.dataset, check, plan.tolerance, options, key, log
        )
        record, best = searched.record, searched.best
        model, fp32_nodes, qdq, parity = best.model, best.fp32_nodes, best.plan, best.parity
        if not (record.methods and len(record.methods) == 1 and parity.passed):  # else the configured method passed
            search_record = record
            if record.kept:
                log(f"INT8 search: kept {len(record.kept)} Q/DQ site(s) out of INT8: {', '.join(record.kept)}")
    if not qdq.consumers:
        raise BadInputError(
            f"no activation is left in INT8 (--exclude {' '.join(options.exclude) or '(none)'}): "
            "the file would be float, not INT8; exclude fewer nodes"
        )
    # What the manifest records is read from the graph written, by the function verify reads the file with: the
    # two agree by construction, whatever the FP16-range rule kept in FP32 (renaming tensors there) or the search
    # kept out.
    found = graph_quantization(model)
    log(
        f"INT8: {len(found.layers)} Conv/Gemm nodes quantized, {len(found.tensors)} activation tensors "
        f"with Q/DQ ({len(qdq.residual_adds)} residual Add shortcuts); the rest in {options.high_precision}"
    )
    built = TypedBuild(model, calibration, fp32_nodes, sorted(found.layers), sorted(found.tensors), search_record)
    if check is not None:  # the search ran model.onnx on the check images already (batches of CHECK_BATCH)
        built.expected.append(check.reference)
    if base is not None:
        built.ort_model = _ort_int8(base, calibration, qdq, searched, options.exclude, log)
        built.ort_tensors = sorted(graph_quantization(built.ort_model).tensors)
    return built


def _ort_int8(
    base: Any, calibration: Calibration, qdq: QdqPlan, searched: SearchResult | None, exclude: tuple[str, ...], log: Log
) -> Any:
    """ONNX Runtime's INT8 graph with exactly the TensorRT file's sites, ranges (method) and remedies.

    When the search ran, its float graph (model.onnx or the equalized graph, with the bias shifts once
    chosen) is the base: nothing it measured is measured again.
    """
    ranges, shifts = calibration, {}
    if searched is not None:
        base, shifts = searched.graph.model, searched.graph.shifts
        ranges = searched.graph.ranges.with_method(searched.best.method)
    if shifts:
        correct_biases(base, shifts, qdq.weighted)
    model, _plan = int8_ort_model(base, ranges, exclude, only=qdq.sites)
    log(f"INT8 for ONNX Runtime: the same {len(qdq.sites)} sites with Q/DQ around each ({ORT_INT8_FILE})")
    return model


def _copy(model: Any) -> Any:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _tried(record: SearchRecord | None, options: PrecisionOptions) -> str:
    """What was tried and what would pass, for the failure message."""
    if record is None:
        return " (the INT8 search is off)" if not options.search else ""
    text = f" after trying --calib-method {', '.join(record.methods)}"
    if record.kept:
        text += f" and keeping {len(record.kept)} of {record.layers} Q/DQ sites out of INT8 (budget {record.budget})"
    if record.note:
        text += f" ({record.note})"
    if record.needed is not None:
        fraction = math.ceil(100 * record.needed / record.layers) / 100
        return (
            text + f"; keeping the {record.needed} most sensitive of {record.layers} Q/DQ sites out passes: "
            f"pass --search-max-fraction {fraction:g}"
        )
    if record.time_limited:
        return text + "; raise --search-minutes (the search ran out of time), or pass --exclude"
    if record.ranked:
        return (
            text + f"; keeping up to half of the {record.layers} Q/DQ sites out does not pass either: the damage "
            "is spread, not in a few sites (try --high-precision fp32, more calibration images, or a looser tolerance)"
        )
    return text


def _options(
    precision: str,
    dataset: Dataset,
    heldout: Dataset,
    options: PrecisionOptions,
    calib_source: Path | None,
    checked_with: Tolerance,
) -> TypedOptions:
    """What the typed file depends on besides model.onnx; the manifest compares it to resume."""
    int8 = precision == "int8"
    typed = TypedOptions(
        calibration=CalibrationData(
            source=None if calib_source is None else str(calib_source.resolve()),
            fingerprint=dataset.fingerprint,
            count=dataset.count,
            seed=options.seed,
            method=options.calib_method if int8 else None,
            percentile=options.percentile if int8 else None,
        ),
        check=CheckData(heldout.fingerprint, heldout.count),
        fp16_data_max=FP16_DATA_MAX,
        tolerance=options.tolerance(precision),
        check_tolerance=checked_with,
    )
    if not int8:
        return typed
    search = SearchLimits(options.search_max_fraction, options.search_minutes) if options.search else None
    return Int8Options(
        **vars(typed),
        exclude=options.exclude,
        high_precision=options.high_precision,
        weight_max=WEIGHT_MAX,  # 7-bit weights: OpenVINO on CPUs without VNNI (int8.py)
        search=search,
    )


def check_parity(
    reference: str | Path,
    candidate: str | Path,
    precision: str,
    dataset: Dataset,
    tolerance: Tolerance,
    use_labels: bool,
    expected: list[np.ndarray] | None = None,
    log: Log | None = None,
    openvino: bool = True,
) -> Parity:
    """Run both files on the same inputs and compare the logits, on every CPU runtime the file is deployed on.

    ONNX Runtime always; OpenVINO too where it is installed and ``openvino`` (it runs TensorRT's INT8 file on
    CPUs, and its int8 kernels round differently), judged by the same :func:`~resnext_deploy.parity.compare`
    and tolerance. The ONNX Runtime parity is returned, with OpenVINO's failures added to it (named), so that
    the check fails when either runtime would fail verify. ``expected``: model.onnx's logits per batch, filled
    in by the first check of a build (when empty) and reused by the next (ONNX Runtime's INT8 file is checked
    on the same images), so model.onnx runs once.
    """
    runners: dict[str, Runner] = {"onnxruntime": OnnxRuntimeRunner(candidate, precision)}
    if openvino and OPENVINO.unavailable() is None:
        from ..backends.openvino import OpenVINORunner

        runners["openvino"] = OpenVINORunner(candidate, precision)
    reference_runner = None if expected else OnnxRuntimeRunner(reference)
    refs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    try:
        with progress(dataset.count, f"checking {precision} on {dataset.count} held-out samples") as advance:
            for batch in dataset.batches(CHECK_BATCH):
                if reference_runner is not None:
                    refs.append(reference_runner(batch.images))
                for name, runner in runners.items():
                    outputs[name].append(runner(batch.images))
                if batch.labels is not None:
                    labels.append(batch.labels)
                advance(len(batch.images))
    finally:
        for runner in (*([reference_runner] if reference_runner is not None else []), *runners.values()):
            runner.close()
    if reference_runner is not None and expected is not None:
        expected.extend(refs)
    refs = expected or refs
    truth = np.concatenate(labels) if use_labels and labels else None
    reference_logits = np.concatenate(refs)
    parities = {name: compare(reference_logits, np.concatenate(out), tolerance, truth) for name, out in outputs.items()}
    parity = parities.pop("onnxruntime")
    for name, other in parities.items():
        if log is not None:
            log(f"{_parity_summary(Path(candidate).name, dataset, other)} (on {name})")
        parity = replace(parity, failures=(*parity.failures, *(f"on {name}: {f}" for f in other.failures)))
    return parity


def _parity_summary(name: str, dataset: Dataset, parity: Parity) -> str:
    text = (
        f"{name} vs model.onnx on {dataset.description}: cosine min {parity.cosine_min:.6f} "
        f"mean {parity.cosine_mean:.6f}, relative error {parity.rel_error:.3g}, top-1 agreement "
        f"{parity.top1_agreement:.2%} raw, {parity.top1_decisive:.2%} on {parity.decisive} decisive"
    )
    if parity.top5_overlap is not None:
        text += f", top-5 overlap {parity.top5_overlap:.2%}"
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
