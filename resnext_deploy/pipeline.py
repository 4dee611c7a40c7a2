"""The main job: export, FP16, calibrated INT8, TensorRT engines where possible, verify, bench, report.

Each step reuses what an earlier (possibly interrupted) run finished, by sha256 in the manifest, so a
second run after Ctrl-C redoes only what is missing. Once model.onnx exists the run always ends with
a report: a step that fails is recorded in the manifest with its reason (and, for INT8, what the search
tried), the later steps run on what exists, and the run's status is derived from the directory, as
``verify`` and ``report`` derive it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import recorded_step
from .backends.registry import backends, check_build_options
from .data import Dataset, open_dataset
from .errors import BadInputError, DeployError, ExitCode, VerificationError
from .evaluate.settings import BenchSettings
from .export import export_onnx
from .precision.options import PrecisionOptions
from .precision.split import given_calibration, split_datasets
from .precision.typed import make_typed_onnx
from .source import ModelSource


@dataclass(frozen=True)
class PipelineOptions:
    """What the pipeline's steps take, each bundle whole: the CLI makes them, validated, from its option groups."""

    precision: PrecisionOptions = field(default_factory=PrecisionOptions)
    data: Path | None = None
    count: int | None = None
    bench: BenchSettings = field(default_factory=BenchSettings)
    build: Mapping[str, Any] = field(default_factory=dict)  # by backend name: its build_options record
    inspect: bool = False  # run inspect even when every check passed (it always runs when one fails)

    def __post_init__(self) -> None:
        object.__setattr__(self, "build", check_build_options(self.build))


@dataclass
class PipelineResult:
    report: Path
    verified: bool
    failure_summary: str
    skipped: dict[str, str]
    tables: list[str] = field(default_factory=list)  # verify's and bench's, for the caller to print as results
    bad_input: bool = False  # a step failed on its input (too few images, a full disk): exit 3, not 1

    def error(self) -> DeployError:
        """The failure to raise after the report: bad input when a step met one, else a verification failure."""
        kind = BadInputError if self.bad_input else VerificationError
        return kind(f"pipeline: {self.failure_summary} (see {self.report})")


def run_pipeline(
    source: ModelSource, directory: Path, options: PipelineOptions, log: Callable[[str], None] = print
) -> PipelineResult:
    """Run every step in order; the caller holds the directory lock."""
    from .evaluate.bench import bench_text, run_bench
    from .evaluate.verify import run_verify, verify_text
    from .report import write_report

    log("== export (FP32 ONNX)")
    with recorded_step(directory, "export"):
        export_onnx(source, directory, log=log)
    failed: dict[str, str] = {}
    for precision in ("fp16", "int8"):
        log(f"== {precision.upper()} ONNX")
        try:
            with recorded_step(directory, f"{precision} ONNX"):
                make_typed_onnx(directory, precision, options.precision, log=log)
        except (VerificationError, BadInputError) as exc:
            failed[f"{precision} ONNX"] = f"failed: {exc}"
            log(f"{precision.upper()} step failed; continuing with what exists: {exc}")
    skipped: dict[str, str] = {}
    for backend in backends().values():  # TensorRT's engines, or the trtexec lines that build them elsewhere
        try:
            skipped.update(backend.build(directory, options.build.get(backend.name), log))
        except (VerificationError, BadInputError) as exc:  # recorded in the manifest by the step that failed
            failed[f"{backend.name} build"] = f"failed: {exc}"
            log(f"{backend.name} build failed; continuing with what exists: {exc}")
    log("== verify")
    verified = run_verify(
        directory,
        data=options.data,
        count=options.count,
        log=log,
        dataset=verify_dataset(source, options),
        backend_options=options.bench.backend_options,
    )
    log("== bench")
    measured = None
    try:
        with recorded_step(directory, "bench"):
            measured = run_bench(directory, options.bench, log=log)
            if failure := measured.failure(directory):  # rows whose worker died or hung: the others are in bench.json
                raise VerificationError(failure)
    except (VerificationError, BadInputError) as exc:
        failed["bench"] = f"failed: {exc}"
        log(f"bench failed: {exc}")
    skipped = {**failed, **skipped}
    if options.inspect or failed or not verified:
        _inspect(directory, options, log)
    # The same report, and the same status, as `report --dir`: both derived from what the directory records.
    written = write_report(directory, log=log)
    status = written.status
    tables = [verify_text(verified.record)] + ([bench_text(measured)] if measured is not None else [])
    bad_input = status.exit_code == ExitCode.BAD_INPUT
    return PipelineResult(written.path, status.passed, status.summary(), skipped, tables, bad_input)


def _inspect(directory: Path, options: PipelineOptions, log: Callable[[str], None]) -> None:
    """inspect's layer-by-layer account before the report, which shows its "Where"; its own failure is a log line."""
    from .inspect.run import run_inspect

    log("== inspect")
    try:
        run_inspect(directory, options.data, log=log)
    except (DeployError, OSError) as exc:
        log(f"inspect failed; the report goes on without it: {exc}")


def verify_dataset(source: ModelSource, options: PipelineOptions) -> Dataset | None:
    """Verify's images without ``--data``: ``--check-data``, else the held-out part of ``--calib-dir``.

    Never noise while real images exist (a folder too small to split is verified whole); None leaves
    verify's own default (the demo's validation split, or synthetic inputs said loudly for a model
    without any image).
    """
    precision, pre, names = options.precision, source.preprocessing, source.class_names
    calib_source = given_calibration(source, precision.calib_source)
    if options.data is not None or (calib_source is None and precision.check_source is None):
        return None
    if precision.check_source is not None:
        return open_dataset(
            precision.check_source, pre, options.count, precision.seed, num_classes=source.num_classes,
            class_names=names,
        )  # fmt: skip
    try:
        return split_datasets(
            source, "int8", calib_source, precision.calib_count, None, options.count, precision.min_check,
            precision.seed,
        )[1]  # fmt: skip
    except BadInputError:
        return open_dataset(
            calib_source, pre, options.count, precision.seed, num_classes=source.num_classes, class_names=names
        )
