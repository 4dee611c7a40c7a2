"""Which data calibrates and which checks: the split of the user's images, or the demo's bundled splits.

``--calib-dir`` (an image folder or a ``.npy``/``.npz`` of preprocessed arrays) is split in a
seeded, class-balanced order into calibration and held-out check subsets (:func:`split_datasets`);
for the bundled demo model its bundled calibration and validation splits when nothing is given.
INT8 needs real data for any other model; FP16 only needs activation ranges and falls back to seeded
synthetic inputs (and says so).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import Dataset, open_dataset
from ..errors import BadInputError
from ..parity import MIN_CHECK_SAMPLES
from ..source import ModelSource, demo_data

if TYPE_CHECKING:
    from .options import PrecisionOptions

DEFAULT_CALIB_COUNT = 512  # NVIDIA suggests about 500 images for ImageNet-sized calibration
HELDOUT_MAX = 500  # held-out images checked at most, by default
SYNTHETIC_CHECK_COUNT = 64
CHECK_FRACTION = 0.10  # share of the user's images held out for the check (at least MIN_CHECK_SAMPLES)


def check_share(available: int, min_check: int) -> int:
    """How many of ``available`` user images the held-out check takes: 10% of them, at least ``min_check``."""
    return max(min_check, math.ceil(available * CHECK_FRACTION))


def split_datasets(
    source: ModelSource,
    precision: str,
    calib_source: str | Path | None,
    calib_count: int,
    check_source: str | Path | None = None,
    check_count: int | None = None,
    min_check: int = MIN_CHECK_SAMPLES,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """The calibration images and the held-out check images, never overlapping.

    * ``check_source`` (``--check-data``): the check uses it; calibration takes ``calib_source`` whole.
    * ``calib_source`` alone: its seeded order is split once; the last ``max(min_check, 10%)`` samples
      are the check set, the calibration takes up to ``calib_count`` from the rest. The split does not
      depend on ``calib_count``, so changing it never moves an image from the check into calibration.
    * the demo model without data: its bundled calibration and validation splits.
    * no image at all: FP16 calibrates and checks on seeded synthetic inputs (said loudly by the caller:
      the check shows numeric parity only); INT8 refuses, since its scales would mean nothing.
    """
    if calib_count < 1:
        raise BadInputError(f"--calib-count must be at least 1, got {calib_count}")
    pre = source.preprocessing
    demo = demo_data(source) if calib_source is None and source.is_demo else None
    if demo is not None:
        if not demo.calib.is_dir():
            raise BadInputError(f"the demo calibration images {demo.calib} are missing; pass --calib-dir")
        calib = open_dataset(demo.calib, pre, calib_count, seed)
        check = open_dataset(check_source or demo.val, pre, check_count or HELDOUT_MAX, seed)
        return calib, check
    if calib_source is None:
        if precision == "int8":
            raise BadInputError(
                f"INT8 needs calibration images for {source.arch}: pass --calib-dir with a folder of images "
                "like the ones the model will see (or a .npy/.npz of preprocessed arrays)"
            )
        calib = open_dataset(None, pre, min(calib_count, SYNTHETIC_CHECK_COUNT), seed)
        if check_source is not None:
            return calib, open_dataset(check_source, pre, check_count or HELDOUT_MAX, seed)
        return calib, open_dataset(None, pre, check_count or SYNTHETIC_CHECK_COUNT, seed + 1)
    if check_source is not None:
        return open_dataset(calib_source, pre, calib_count, seed), open_dataset(
            check_source, pre, check_count or HELDOUT_MAX, seed
        )
    available = open_dataset(calib_source, pre, None, seed).available
    held = check_share(available, min_check)
    if available - held < 1:
        raise BadInputError(
            f"{calib_source} holds {available} samples: the held-out check takes {held} "
            f"(10%, at least {min_check}) and calibration needs the rest; add images or pass --check-data"
        )
    calib = open_dataset(calib_source, pre, min(calib_count, available - held), seed)
    check = open_dataset(calib_source, pre, min(check_count or held, held), seed, offset=available - held)
    return calib, check


def split_for(source: ModelSource, precision: str, options: PrecisionOptions) -> tuple[Dataset, Dataset]:
    """:func:`split_datasets` with the data options of one :class:`PrecisionOptions` bundle."""
    return split_datasets(
        source,
        precision,
        options.calib_source,
        options.calib_count,
        options.check_source,
        options.check_count,
        options.min_check,
        options.seed,
    )
