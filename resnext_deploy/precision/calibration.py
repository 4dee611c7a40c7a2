"""The calibration record: per-tensor ranges from one statistics pass, saved in ``DIR/calibration.json``.

Which data calibrates is :mod:`~resnext_deploy.precision.split`'s decision; how the ranges are
measured is :mod:`~resnext_deploy.precision.statistics`'. Every method's clip is kept per tensor, so
the INT8 search tries them all without another pass; a saved file is reused only for the same model
(sha256 of model.onnx), the same images (their content fingerprint: names and bytes, never sizes or mtimes),
method and percentile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..artifacts import CALIBRATION_NAME, cache_error, is_number, now_iso, read_json, sha256_file, write_json
from ..data import Dataset
from ..errors import BadInputError
from ..schemas import SCHEMA_VERSION
from ..serde import RecordError, decode, encode
from .methods import DEFAULT_METHOD, METHODS, CalibrationMethod
from .statistics import Log, TensorStats, collect_statistics

CALIBRATION_FORMAT = 2  # 2: every method's clip per tensor
DEFAULT_PERCENTILE = 99.99


@dataclass
class TensorRange:
    """One tensor's range on the calibration data, like ONNX Runtime's ``TensorData``.

    A tensor with a histogram also has every method's clip (``|x|`` above it saturates) and the chosen one
    (``amax``); one without (it feeds no quantized op, a graph output say) has its min and max only.
    """

    min: float
    max: float
    amax: float | None = None
    amax_entropy: float | None = None
    amax_minmax: float | None = None
    amax_percentile: float | None = None

    @property
    def max_abs(self) -> float:
        return max(abs(self.min), abs(self.max))

    def clip(self, method: CalibrationMethod) -> float | None:
        """``method``'s clip; None for a tensor without a histogram."""
        clips = {
            CalibrationMethod.ENTROPY: self.amax_entropy,
            CalibrationMethod.MINMAX: self.amax_minmax,
            CalibrationMethod.PERCENTILE: self.amax_percentile,
        }
        return clips[method]

    def with_method(self, method: CalibrationMethod) -> TensorRange:
        """The same range with ``method``'s clip chosen (a tensor without clips stays as it is)."""
        chosen = self.clip(method)
        return self if self.amax is None or chosen is None else replace(self, amax=chosen)

    def problem(self) -> str | None:
        """What this tool would never have written: a non-finite value, min above max, a clip beyond them."""
        values = [self.min, self.max, *self._clips()]
        if not all(is_number(v) for v in values):
            return "with values that are not finite numbers"
        if self.min > self.max:
            return "without a valid min <= max"
        peak = self.max_abs
        if any(v < 0 or v > peak * 1.001 or (v == 0 and peak > 0) for v in self._clips()):
            return "with a range that is negative, zero or beyond its min/max"
        return None

    def _clips(self) -> list[float]:
        clips = (self.amax, self.amax_entropy, self.amax_minmax, self.amax_percentile)
        return [v for v in clips if v is not None]


@dataclass
class Calibration:
    """Per-tensor ranges from one calibration run and what they were computed from."""

    model_sha256: str
    fingerprint: str
    description: str
    count: int
    consumed: int
    method: CalibrationMethod
    percentile: float
    tensors: dict[str, TensorRange] = field(default_factory=dict)
    seconds: float = 0.0
    created: str = ""

    def range(self, name: str) -> TensorRange:
        """A tensor's range; BadInputError when the file has none for it (made for another graph)."""
        try:
            return self.tensors[name]
        except KeyError:
            raise BadInputError(
                f"{CALIBRATION_NAME} has no range for tensor {name!r}; delete it and run again"
            ) from None

    def amax(self, name: str) -> float:
        """The calibrated clip for a quantized tensor: ``|x|`` above it saturates."""
        clip = self.range(name).amax
        if clip is None:
            raise BadInputError(f"{CALIBRATION_NAME} has no clip for tensor {name!r}; delete it and run again")
        return clip

    def with_method(self, method: str) -> Calibration:
        """The same statistics with ``method``'s clips as the ranges (all methods are computed at once)."""
        check_method(method, self.percentile)
        chosen = CalibrationMethod(method)
        tensors = {name: entry.with_method(chosen) for name, entry in self.tensors.items()}
        return replace(self, method=chosen, tensors=tensors)

    def max_abs(self, name: str) -> float | None:
        entry = self.tensors.get(name)
        return None if entry is None else entry.max_abs

    def stale_reason(self, model_sha256: str, dataset: Dataset, method: str, percentile: float) -> str | None:
        """Why this calibration does not fit a request, or None when it does."""
        if self.model_sha256 != model_sha256:
            return "model.onnx changed"
        if self.fingerprint != dataset.fingerprint or self.count != dataset.count:
            if self.description == dataset.description:  # the fingerprint hashes names and contents, not mtimes
                return f"its images changed since ({self.description}: same folder and count, other names or contents)"
            return f"it was made on other data ({self.description}; this run calibrates on {dataset.description})"
        if self.method != method:
            return f"it was made with --calib-method {self.method}"
        if self.percentile != percentile:  # every method's clip is saved, the percentile one among them
            return f"it was made with --percentile {self.percentile}"
        return None

    def problem(self) -> str | None:
        """What in a loaded file this tool would never have written (a hand edit) beyond its types, or None."""
        if self.count < 0 or self.consumed < 0:
            return "has a count that is not a non-negative integer"
        if not is_number(self.percentile) or not is_number(self.seconds):
            return "has a percentile or seconds that is not a finite number"
        for name, entry in self.tensors.items():
            if problem := entry.problem():
                return f"has tensor {name[:80]!r} {problem}"
        return None


def calibration_json(calibration: Calibration) -> dict[str, Any]:
    """The record as calibration.json holds it: a tensor without clips has no clip keys (not nulls)."""
    data = encode(calibration)
    data["tensors"] = {
        name: {key: value for key, value in entry.items() if value is not None}
        for name, entry in data["tensors"].items()
    }
    return {"schema_version": SCHEMA_VERSION, "format": CALIBRATION_FORMAT, **data}


def read_calibration(path: Path) -> Calibration | None:
    """The calibration saved at ``path``; None when it is unreadable or of another format (recomputed).

    A file of this format that does not decode, or holds what calibration never writes, was edited by hand:
    a cache error saying what and how to drop it.
    """
    try:
        data = read_json(path)
    except BadInputError:
        return None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        return None
    try:
        saved = decode(Calibration, data)
    except RecordError as exc:
        where, _, what = str(exc).partition(": ")
        raise cache_error(path, f"has {where.removeprefix(Calibration.__name__ + '.')}: {what}") from None
    if problem := saved.problem():
        raise cache_error(path, problem)
    return saved


def calibrate(
    directory: str | Path,
    model_path: str | Path,
    dataset: Dataset,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    log: Log = print,
) -> Calibration:
    """Calibrate ``model_path`` on ``dataset`` or reuse ``DIR/calibration.json`` when it was made for the same.

    Same means the same model.onnx (sha256), the same data (content fingerprint and count) and the same
    method and percentile; a file made for anything else is recomputed, and the log says why.
    """
    check_method(method, percentile)
    path = Path(directory) / CALIBRATION_NAME
    model_sha = sha256_file(model_path)
    if path.exists():
        saved = read_calibration(path)
        reason = "it is unreadable" if saved is None else saved.stale_reason(model_sha, dataset, method, percentile)
        if saved is not None and reason is None:
            log(f"reusing {path} ({saved.method}, {saved.count} samples of {saved.description})")
            return saved
        log(f"{path} is stale ({reason}); calibrating again")
    started = time.perf_counter()
    stats, consumed = collect_statistics(model_path, dataset, log)
    chosen = CalibrationMethod(method)
    tensors = {name: _tensor_range(stat, chosen, percentile) for name, stat in stats.items()}
    result = Calibration(
        model_sha256=model_sha,
        fingerprint=dataset.fingerprint,
        description=dataset.description,
        count=dataset.count,
        consumed=consumed,
        method=chosen,
        percentile=percentile,
        tensors=tensors,
        seconds=round(time.perf_counter() - started, 2),
        created=now_iso(),
    )
    write_json(path, calibration_json(result))
    log(f"calibrated {len(stats)} tensors ({method}) on {dataset.description} in {result.seconds:.1f} s; wrote {path}")
    return result


def _tensor_range(stat: TensorStats, method: CalibrationMethod, percentile: float) -> TensorRange:
    """A tensor's min and max, and with a histogram every method's clip, so the INT8 search tries them all."""
    if stat.histogram is None:
        return TensorRange(min=stat.minimum, max=stat.maximum)
    clips = {m: stat.amax(m, percentile) for m in CalibrationMethod}
    return TensorRange(
        min=stat.minimum,
        max=stat.maximum,
        amax=clips[method],
        amax_entropy=clips[CalibrationMethod.ENTROPY],
        amax_minmax=clips[CalibrationMethod.MINMAX],
        amax_percentile=clips[CalibrationMethod.PERCENTILE],
    )


def check_method(method: str, percentile: float) -> None:
    if method not in METHODS:
        raise BadInputError(f"unknown --calib-method {method!r}; choose one of: {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise BadInputError(f"--percentile must be in (50, 100], got {percentile}")
