"""The calibration methods, declared once: ``--calib-method``'s choices, calibration.json's strings, the search's order.

Like ONNX Runtime's ``CalibrationMethod``; a module of its own so that the command line reads the choices without
importing numpy. A :class:`CalibrationMethod` is a ``str``, so it compares with and serializes as its name.
"""

from __future__ import annotations

from enum import Enum


class CalibrationMethod(str, Enum):
    """How a tensor's clip is chosen from its histogram (minmax: its largest ``|x|``)."""

    ENTROPY = "entropy"
    MINMAX = "minmax"
    PERCENTILE = "percentile"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


METHODS = tuple(method.value for method in CalibrationMethod)
DEFAULT_METHOD = CalibrationMethod.ENTROPY
