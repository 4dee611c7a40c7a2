"""What a typed file's manifest entry records about how it was made: the options ``manifest.json`` compares.

A typed file is current when it was made from the same ``model.onnx`` with equal options (``Manifest.is_current``
decodes the recorded ones as these records). FP16 records the data and the check; INT8 adds how it quantizes and
what it may keep in float; ONNX Runtime's INT8 variant adds its placement.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..parity import Tolerance


@dataclass(frozen=True)
class CalibrationData:
    """The images the ranges are measured on: where from (None: the bundled or synthetic set), which, how many."""

    source: str | None
    fingerprint: str
    count: int
    seed: int
    method: str | None = None  # INT8's calibration method and percentile; None for FP16 (its ranges are max |x|)
    percentile: float | None = None


@dataclass(frozen=True)
class CheckData:
    """The held-out images the file is checked on before it is kept."""

    fingerprint: str
    count: int


@dataclass(frozen=True)
class SearchLimits:
    """How far the INT8 search may go when the configured method fails: the share of sites kept out, the time."""

    max_fraction: float
    minutes: float


@dataclass(frozen=True)
class TypedOptions:
    """What ``model.fp16.onnx`` depends on besides ``model.onnx`` (the base of the INT8 records)."""

    calibration: CalibrationData
    check: CheckData
    fp16_data_max: float  # activations beyond it keep their nodes in FP32
    tolerance: Tolerance  # the precision's tolerance, as verify applies it
    check_tolerance: Tolerance  # the build's check: tightened on a small check set


@dataclass(frozen=True)
class Int8Options(TypedOptions):
    """What ``model.int8.onnx`` depends on besides ``model.onnx``: the typed options and how it quantizes."""

    exclude: tuple[str, ...]  # nodes the user kept out of INT8
    high_precision: str  # what the nodes kept out compute in (fp16, fp32)
    weight_max: int  # the largest quantized weight (63: 7-bit weights, for OpenVINO on CPUs without VNNI)
    search: SearchLimits | None  # None: the search is off

    def for_runtime(self, placement: str, activation_type: str) -> Int8RuntimeOptions:
        """The options of a runtime's variant made from the same decisions (what makes it current)."""
        shared = {f.name: getattr(self, f.name) for f in fields(Int8Options)}
        return Int8RuntimeOptions(**shared, placement=placement, activation_type=activation_type)


@dataclass(frozen=True)
class Int8RuntimeOptions(Int8Options):
    """What a runtime's INT8 variant (``model.int8.ort.onnx``) depends on: the INT8 file's options and its own."""

    placement: str  # the runtime family it is placed for (onnxruntime)
    activation_type: str  # the activations' integer type there (uint8)
