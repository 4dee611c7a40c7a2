"""The precision options, one validated bundle shared by ``build-trt``, ``pipeline`` and the library."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..errors import BadInputError
from ..parity import DEFAULT_TOLERANCES, MIN_CHECK_SAMPLES, Tolerance
from .calibration import DEFAULT_METHOD, DEFAULT_PERCENTILE, check_method
from .int8 import HIGH_PRECISIONS

DEFAULT_CALIB_COUNT = 512  # NVIDIA suggests about 500 images for ImageNet-sized calibration
# At most this share of the Q/DQ sites (weighted layers, residual Adds) kept out of INT8: on the demo's
# 18 sites, 4. Outliers planted in one or two places needed 15-29% of the layers when only layers counted.
DEFAULT_SEARCH_MAX_FRACTION = 0.25
DEFAULT_SEARCH_MINUTES = 10.0


@dataclass(frozen=True)
class PrecisionOptions:
    """How the FP16 and INT8 files are made and checked; invalid values fail here, once, as bad input."""

    calib_source: Path | None = None
    calib_count: int = DEFAULT_CALIB_COUNT
    calib_method: str = DEFAULT_METHOD
    percentile: float = DEFAULT_PERCENTILE
    exclude: tuple[str, ...] = ()
    high_precision: str = "fp16"
    check_source: Path | None = None
    check_count: int | None = None
    min_check: int = MIN_CHECK_SAMPLES
    search: bool = True
    search_max_fraction: float = DEFAULT_SEARCH_MAX_FRACTION
    search_minutes: float = DEFAULT_SEARCH_MINUTES
    seed: int = 0
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_TOLERANCES)))

    def __post_init__(self) -> None:
        if self.calib_count < 1:
            raise BadInputError(f"--calib-count must be at least 1, got {self.calib_count}")
        check_method(self.calib_method, self.percentile)
        if self.high_precision not in HIGH_PRECISIONS:
            raise BadInputError(
                f"--high-precision must be one of {', '.join(HIGH_PRECISIONS)}, got {self.high_precision!r}"
            )
        if self.check_count is not None and self.check_count < 1:
            raise BadInputError(f"--check-count must be at least 1, got {self.check_count}")
        if self.min_check < 1:
            raise BadInputError(f"the minimum check size must be at least 1, got {self.min_check}")
        if not 0.0 <= self.search_max_fraction <= 1.0:
            raise BadInputError(f"--search-max-fraction must be between 0 and 1, got {self.search_max_fraction:g}")
        if not 0 < self.search_minutes < float("inf"):  # NaN fails this too (it would reach manifest.json)
            raise BadInputError(f"--search-minutes must be a positive number, got {self.search_minutes:g}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "tolerances", MappingProxyType({**DEFAULT_TOLERANCES, **self.tolerances}))

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances[precision]
