"""How long the INT8 search takes on ResNeXt-50 (issue #31, item 4): a forced search, and the 7-class case.

Usage:

    python scripts/int8_search_timing.py --dir /tmp/search-timing [--cases forced,7-class]

* ``forced``: torchvision-style ResNeXt-50 (random weights, seed 0), ``build-trt --int8 --onnx-only
  --int8-cosine 0.9998`` (a bound the plain INT8 file misses, so the search runs);
* ``forced-ranking``: the same with ``--int8-cosine 0.99995``: the remedies that pass 0.9998 miss it, so the
  one-pass site ranking, its confirmation and the greedy keeping run too (0.9998 never reaches them);
* ``7-class``: the same architecture with a 7-class head (random weights), default tolerances.

Both calibrate and check on 80 seeded noise images in 4 class folders (``--calib-dir``).

Each case runs in a fresh directory (no saved sensitivity or calibration to reuse). Prints the machine and
commit, then per case: the exit code, the step's wall time, the search's own seconds, what it tried and kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

CASES = {  # export options, build-trt options
    "forced": (["--arch", "resnext50_32x4d"], ["--int8-cosine", "0.9998"]),
    "forced-ranking": (["--arch", "resnext50_32x4d"], ["--int8-cosine", "0.99995"]),
    "7-class": (["--arch", "resnext50_32x4d", "--num-classes", "7"], []),
}


def noise_folder(folder: Path, count: int = 80, classes: int = 4, size: int = 224) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        target = folder / f"class{i % classes}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(target / f"{i:03d}.png")
    return folder


def run_case(name: str, directory: Path) -> dict:
    from resnext_deploy.artifacts import Manifest
    from resnext_deploy.cli import main

    export, build = CASES[name]
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        main(["export", "--dir", str(directory / "art"), *export])
    build = [*build, "--calib-dir", str(noise_folder(directory / "images"))]
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        code = main(["build-trt", "--dir", str(directory / "art"), "--int8", "--onnx-only", *build])
    seconds = time.perf_counter() - started
    entry = Manifest(directory / "art").entry("model.int8.onnx")
    search = (entry.search if entry is not None else None) or {}
    return {
        "case": name,
        "exit": code,
        "step_s": round(seconds, 1),
        "search_s": search.get("seconds"),
        "methods": list(search.get("methods", {})),
        "kept": search.get("kept", []),
        "ranked": search.get("ranked"),
        "sites": search.get("layers"),
    }


def main(argv: list[str] | None = None) -> int:
    from inspect_cost import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--cases", default="forced,7-class")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        print(json.dumps(run_case(name, args.dir / name)))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
