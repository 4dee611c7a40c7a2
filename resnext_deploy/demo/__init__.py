"""The bundled demo: a small ResNeXt trained on the 8x8 UCI digits, with its data, shipped inside the package.

Paths come from :mod:`importlib.resources`, so the demo runs from an installed wheel as from a checkout
(``calibration/README.md`` in the repository holds the data's provenance).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..models import DEMO_ARCH

_ROOT = Path(str(files(__package__)))
DEMO_DATA = _ROOT / "digits"
DEMO_TRAIN = DEMO_DATA / "train"
DEMO_CALIB = DEMO_DATA / "calib"
DEMO_VAL = DEMO_DATA / "val"
DEMO_WEIGHTS = _ROOT / "weights" / f"{DEMO_ARCH}.safetensors"
