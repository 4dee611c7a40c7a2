"""The precision names, declared once: every file table, tolerance, CLI choice and JSON schema derives from here.

A :class:`Precision` is a ``str``, so it compares, hashes and serializes as its name ("fp32") and existing
string keys keep working. ``bf16`` has no file of its own: it is the FP32 file computed in bf16 (OpenVINO).
A precision's own file is the one TensorRT builds from; a runtime family that fuses another pattern gets a
variant of it (:data:`RUNTIME_FILES`), made from the same decisions and recorded under the same precision.
"""

from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """How a candidate computes. Members with an ONNX artifact come first, in the order files are made."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BF16 = "bf16"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def onnx_file(self) -> str:
        """The ONNX file this precision runs: its own, or the FP32 file for bf16."""
        return _FILES.get(self, _FILES[Precision.FP32])

    @property
    def has_artifact(self) -> bool:
        """Whether the tool makes a file of this precision (bf16 is a compute mode of the FP32 file)."""
        return self in _FILES

    def runtime_file(self, family: str) -> str:
        """The ONNX file runtime ``family`` (a backend name) runs for this precision: its variant, or the file."""
        return RUNTIME_FILES.get((self.value, family), self.onnx_file)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every precision name a user can choose, in declaration order."""
        return tuple(member.value for member in cls)


_FILES = {Precision.FP32: "model.onnx", Precision.FP16: "model.fp16.onnx", Precision.INT8: "model.int8.onnx"}
# The precisions the tool makes files of, as plain names (manifest entries, engines, Triton models).
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision if p.has_artifact)
ONNX_FILES: dict[str, str] = {p.value: p.onnx_file for p in Precision if p.has_artifact}
# Variants made for one runtime family (a backend name) beside the precision's own file: ONNX Runtime's CPU
# provider fuses Q/DQ into QLinearConv only with Q/DQ around each layer (precision/int8_ort.py).
ORT_INT8_FILE = "model.int8.ort.onnx"
# OpenVINO has no entry: it runs model.int8.onnx, level with model.int8.ort.onnx on ResNeXt-50 (ahead by turns
# in loaded runs of scripts/int8_speed_compare.py), and so verify checks TensorRT's file on a CPU.
RUNTIME_FILES: dict[tuple[str, str], str] = {("int8", "onnxruntime"): ORT_INT8_FILE}
