"""The calibration record: per-tensor ranges from one statistics pass, saved in ``DIR/calibration.json``.

Which data calibrates is :mod:`~resnext_deploy.precision.split`'s decision; how the ranges are
measured is :mod:`~resnext_deploy.precision.statistics`'. Every method's clip is kept per tensor, so
the INT8 search tries them all without another pass; a saved file is reused only for the same model
(sha256 of model.onnx), the same images (their content fingerprint: names and bytes, never sizes or mtimes),
method and percentile.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..artifacts import CALIBRATION_NAME, cache_error, is_number, now_iso, read_json, sha256_file, write_json
from ..data import Dataset
from ..errors import BadInputError
from ..schemas import SCHEMA_VERSION
from .statistics import Log, collect_statistics

CALIBRATION_FORMAT = 2  # 2: every method's clip per tensor
METHODS = ("entropy", "minmax", "percentile")
DEFAULT_METHOD = "entropy"
DEFAULT_PERCENTILE = 99.99


@dataclass
class Calibration:
    """Per-tensor ranges from one calibration run and what they were computed from."""

    model_sha256: str
    fingerprint: str
    description: str
    count: int
    consumed: int
    method: str
    percentile: float
    tensors: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    created: str = ""

    def amax(self, name: str) -> float:
        """The calibrated clip for a quantized tensor: ``|x|`` above it saturates."""
        try:
            return self.tensors[name]["amax"]
        except KeyError:
            raise BadInputError(
                f"{CALIBRATION_NAME} has no range for tensor {name!r}; delete it and run again"
            ) from None

    def with_method(self, method: str) -> Calibration:
        """The same statistics with ``method``'s clips as the ranges (all methods are computed at once)."""
        check_method(method, self.percentile)
        tensors = {
            name: {**entry, "amax": entry.get(f"amax_{method}", entry["amax"])} if "amax" in entry else entry
            for name, entry in self.tensors.items()
        }
        return replace(self, method=method, tensors=tensors)

    def max_abs(self, name: str) -> float | None:
        entry = self.tensors.get(name)
        return None if entry is None else max(abs(entry["min"]), abs(entry["max"]))

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

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "format": CALIBRATION_FORMAT, **asdict(self)}

    def problem(self) -> str | None:
        """What in a loaded file this tool would never have written (a hand edit), field by field, or None."""
        texts = ("model_sha256", "fingerprint", "description", "method", "created")
        if bad := [name for name in texts if not isinstance(getattr(self, name), str)]:
            return f"has {bad[0]} that is not a string"
        if self.method not in METHODS:
            return f"has an unknown method {self.method!r}"
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (self.count, self.consumed)):
            return "has a count that is not a non-negative integer"
        if not is_number(self.percentile) or not is_number(self.seconds):
            return "has a percentile or seconds that is not a finite number"
        if not isinstance(self.tensors, dict):
            return "has tensors that are not an object"
        for name, entry in self.tensors.items():
            if not isinstance(entry, dict) or not all(is_number(v) for v in entry.values()):
                return f"has tensor {str(name)[:80]!r} with values that are not finite numbers"
            if not is_number(entry.get("min")) or not is_number(entry.get("max")) or entry["min"] > entry["max"]:
                return f"has tensor {str(name)[:80]!r} without a valid min <= max"
            peak = max(abs(entry["min"]), abs(entry["max"]))
            clips = [v for key, v in entry.items() if key.startswith("amax")]
            if any(v < 0 or v > peak * 1.001 or (v == 0 and peak > 0) for v in clips):
                return f"has tensor {str(name)[:80]!r} with a range that is negative, zero or beyond its min/max"
        return None

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ValueError("not a calibration file of this version")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


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
        try:
            saved = Calibration.from_dict(read_json(path))
        except (BadInputError, ValueError, KeyError, TypeError):
            reason = "it is unreadable"
        else:
            if problem := saved.problem():
                raise cache_error(path, problem)
            reason = saved.stale_reason(model_sha, dataset, method, percentile)
        if reason is None:
            log(f"reusing {path} ({saved.method}, {saved.count} samples of {saved.description})")
            return saved
        log(f"{path} is stale ({reason}); calibrating again")
    started = time.perf_counter()
    stats, consumed = collect_statistics(model_path, dataset, log)
    tensors = {}
    for name, stat in stats.items():
        entry = {"min": stat.minimum, "max": stat.maximum}
        if stat.histogram is not None:  # every method's clip, so the INT8 search can try them without rerunning
            entry.update({f"amax_{m}": stat.amax(m, percentile) for m in METHODS})
            entry["amax"] = entry[f"amax_{method}"]
        tensors[name] = entry
    result = Calibration(
        model_sha256=model_sha,
        fingerprint=dataset.fingerprint,
        description=dataset.description,
        count=dataset.count,
        consumed=consumed,
        method=method,
        percentile=percentile,
        tensors=tensors,
        seconds=round(time.perf_counter() - started, 2),
        created=now_iso(),
    )
    write_json(path, result.to_dict())
    log(f"calibrated {len(stats)} tensors ({method}) on {dataset.description} in {result.seconds:.1f} s; wrote {path}")
    return result


def check_method(method: str, percentile: float) -> None:
    if method not in METHODS:
        raise BadInputError(f"unknown --calib-method {method!r}; choose one of: {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise BadInputError(f"--percentile must be in (50, 100], got {percentile}")
