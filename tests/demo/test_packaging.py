"""The wheel carries the demo: its weights and the digits, so an installed tool runs `pipeline` anywhere."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from resnext_deploy.demo import DEMO_CALIB, DEMO_DATA, DEMO_TRAIN, DEMO_VAL, DEMO_WEIGHTS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # builds the wheel
def test_the_wheel_holds_the_demo_data_and_weights(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("resnext_deploy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package_root = DEMO_DATA.parents[1]  # .../resnext_deploy
    expected = [DEMO_WEIGHTS, DEMO_WEIGHTS.with_suffix(".json"), DEMO_DATA / "manifest.json"]
    for split in (DEMO_TRAIN, DEMO_CALIB, DEMO_VAL):
        expected += sorted(split.rglob("*.png"))
    missing = [p for p in expected if f"resnext_deploy/{p.relative_to(package_root)}" not in names]
    assert len(expected) > 1000 and not missing, missing[:5]
