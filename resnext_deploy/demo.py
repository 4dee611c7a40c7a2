"""The bundled demo: a small ResNeXt trained on the 8x8 UCI digits shipped in ``calibration/digits``."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO_ROOT / "calibration" / "digits"
DEMO_TRAIN = DEMO_DATA / "train"
DEMO_CALIB = DEMO_DATA / "calib"
DEMO_VAL = DEMO_DATA / "val"
