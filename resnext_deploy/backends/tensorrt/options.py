"""The optimization profile and builder settings of an engine build, validated once where they are made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...errors import BadInputError
from ...serde import INLINE
from ..base import BATCH_LIMIT

HARDWARE_COMPAT = {"ampere+": "ampere+", "same-cc": "sameComputeCapability"}  # ours -> trtexec's spelling
MAX_OPT_LEVEL = 5
TRT_MAJORS = range(10, 100)  # --trt-major: 10 and 11 are supported; later majors get 11's trtexec flags


def check_trt_major(trt_major: int | None) -> None:
    """Refuse a ``--trt-major`` no TensorRT has (or will soon have) before any work."""
    if trt_major is not None and trt_major not in TRT_MAJORS:
        raise BadInputError(f"--trt-major must be between {TRT_MAJORS[0]} and {TRT_MAJORS[-1]}, got {trt_major}")


@dataclass(frozen=True)
class BuildOptions:
    """The optimization profile and builder settings; precision is not among them (it is in the ONNX graph).

    Settings TensorRT would only refuse after parsing the model fail here, once, as bad input.
    """

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mb: int | None = None
    opt_level: int | None = None
    timing_cache: Path | None = None
    hardware_compat: str | None = None  # "ampere+" | "same-cc"
    version_compatible: bool = False

    def __post_init__(self) -> None:
        if self.min_batch < 1:
            raise BadInputError(f"--min-batch must be at least 1, got {self.min_batch}")
        if self.max_batch > BATCH_LIMIT:
            raise BadInputError(f"--max-batch must be at most {BATCH_LIMIT}, got {self.max_batch}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise BadInputError(
                f"the profile needs min <= opt <= max batch; got {self.min_batch} <= {self.opt_batch} <= "
                f"{self.max_batch}"
            )
        if self.opt_level is not None and not 0 <= self.opt_level <= MAX_OPT_LEVEL:
            raise BadInputError(f"--opt-level must be between 0 and {MAX_OPT_LEVEL}, got {self.opt_level}")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise BadInputError(f"--workspace-mb must be at least 1, got {self.workspace_mb}")
        if self.hardware_compat is not None and self.hardware_compat not in HARDWARE_COMPAT:
            raise BadInputError(
                f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT)}, got {self.hardware_compat!r}"
            )
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise BadInputError(f"--timing-cache {self.timing_cache} is a directory; pass a file path")


@dataclass(frozen=True)
class EngineOptions:
    """What an engine depends on besides its ONNX file (manifest.json compares it): the settings, TensorRT, the GPU."""

    build: BuildOptions = field(metadata=INLINE)  # its fields at the top level, where manifests have them
    tensorrt: str  # the TensorRT version that built it
    compute_capability: str  # of the GPU it was built on
