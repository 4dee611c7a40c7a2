"""Which data calibrates and which checks: the split of the user's images, or the demo's bundled splits.

``--calib-dir`` (an image folder or a ``.npy``/``.npz`` of preprocessed arrays) is split in a
seeded, class-balanced order into calibration and held-out check subsets (:func:`split_datasets`);
for the bundled demo model its bundled calibration and validation splits when nothing is given.
INT8 needs real data for any other model; FP16 only needs activation ranges and falls back to seeded
synthetic inputs (and says so).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import Dataset, ImageDataset, open_dataset
from ..errors import BadInputError
from ..parity import MIN_CHECK_SAMPLES
from ..source import ModelSource, demo_data

if TYPE_CHECKING:
    from .options import PrecisionOptions

HELDOUT_MAX = 500  # held-out images checked at most, by default
SYNTHETIC_CHECK_COUNT = 64
CHECK_FRACTION = 0.10  # share of the user's images held out for the check (at least MIN_CHECK_SAMPLES)
# Fewer calibration images than this (or than the model's classes) get a warning: per-tensor ranges from a
# handful of images miss what other images reach. NVIDIA suggests about 500 for ImageNet models.
MIN_CALIBRATION = 32


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
    pre, names = source.preprocessing, source.class_names
    calib_source = given_calibration(source, calib_source)
    demo = demo_data(source) if calib_source is None and source.is_demo else None
    if demo is not None:
        if not demo.calib.is_dir():
            raise BadInputError(f"the demo calibration images {demo.calib} are missing; pass --calib-dir")
        calib = open_dataset(demo.calib, pre, calib_count, seed, class_names=names)
        check = open_dataset(check_source or demo.val, pre, check_count or HELDOUT_MAX, seed, class_names=names)
        return calib, check
    if calib_source is None:
        if precision == "int8":
            raise BadInputError(
                f"INT8 needs calibration images for {source.arch}: pass --calib-dir with a folder of images "
                "like the ones the model will see (or a .npy/.npz of preprocessed arrays)"
            )
        calib = open_dataset(None, pre, min(calib_count, SYNTHETIC_CHECK_COUNT), seed)
        if check_source is not None:
            return calib, open_dataset(check_source, pre, check_count or HELDOUT_MAX, seed, class_names=names)
        return calib, open_dataset(None, pre, check_count or SYNTHETIC_CHECK_COUNT, seed + 1)
    if check_source is not None:
        return open_dataset(calib_source, pre, calib_count, seed, class_names=names), open_dataset(
            check_source, pre, check_count or HELDOUT_MAX, seed, class_names=names
        )
    available = open_dataset(calib_source, pre, None, seed, class_names=names).available
    held = check_share(available, min_check)
    if available - held < 1:
        raise BadInputError(
            f"{calib_source} holds {available} samples: the held-out check takes {held} "
            f"(10%, at least {min_check}) and calibration needs the rest; add images or pass --check-data"
        )
    calib = open_dataset(calib_source, pre, min(calib_count, available - held), seed, class_names=names)
    check = open_dataset(
        calib_source, pre, min(check_count or held, held), seed, offset=available - held, class_names=names
    )
    return calib, check


def given_calibration(source: ModelSource, calib_source: str | Path | None) -> Path | None:
    """``--calib-dir`` as the split sees it: None for the demo model's own calibration folder.

    The demo calibrates on that folder without ``--calib-dir``; naming it is the same data, so it gets the
    same split, the same calibration.json and the same typed files, not a split of it into a check set.
    """
    if calib_source is None:
        return None
    demo = demo_data(source) if source.is_demo else None
    with contextlib.suppress(OSError):
        if demo is not None and demo.calib.is_dir() and Path(calib_source).samefile(demo.calib):
            return None
    return Path(calib_source)


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


def data_warnings(dataset: Dataset, heldout: Dataset, num_classes: int) -> list[str]:
    """What the user should know about the calibration and check images before trusting the ranges.

    Few calibration images (under :data:`MIN_CALIBRATION` or the model's class count), a calibration set
    that covers fewer classes than the model has, and images skipped beside class folders (each said once).
    """
    notes = [note for note in dict.fromkeys((dataset.stray_note(), heldout.stray_note())) if note]
    if dataset.fingerprint.startswith("synthetic"):
        return notes  # said louder by the caller
    if dataset.count < max(MIN_CALIBRATION, num_classes):
        floor = f"{MIN_CALIBRATION} (the minimum)"
        if dataset.count < num_classes:
            floor = f"the model's {num_classes} classes"
        notes.append(
            f"calibrating on only {dataset.count} samples ({dataset.description}), fewer than {floor}: ranges "
            "from so few images may not cover what the model will see (add images to --calib-dir; about 500 is usual)"
        )
    elif isinstance(dataset, ImageDataset) and dataset.folder.labels is not None:
        covered = len({dataset.folder.labels[i] for i in dataset.order[: dataset.count]})
        if covered < num_classes:
            notes.append(
                f"the calibration images cover {covered} of the model's {num_classes} classes ({dataset.description}); "
                "ranges from some classes may not cover the others"
            )
    return notes
