"""Write the demo data set, calibration/digits/{train,calib,val}/<digit>/<index>.png, and its manifest.

The source is scikit-learn's bundled copy of the UCI optical digits (1,797 8x8 images, no network
needed). Images are written as PNG so the demo exercises the same image-folder path a user's data
takes. The split is seeded and class-balanced, so regenerating gives the same files.

    .venv/bin/pip install -e '.[data]'
    .venv/bin/python scripts/make_digits_dataset.py          # writes calibration/digits
    .venv/bin/python scripts/make_digits_dataset.py --check  # compares the folders with the manifest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from resnext_deploy.artifacts import write_json  # noqa: E402
from resnext_deploy.demo import DEMO_DATA  # noqa: E402

SEED = 0
VAL_COUNT = 500
CALIB_COUNT = 256
SPLITS = ("train", "calib", "val")


def split_indices(labels: np.ndarray, seed: int = SEED) -> dict[str, list[int]]:
    """Seeded stratified split: classes are interleaved round-robin, so every prefix is class-balanced."""
    rng = random.Random(seed)
    per_class = {int(c): [int(i) for i in np.flatnonzero(labels == c)] for c in np.unique(labels)}
    for members in per_class.values():
        rng.shuffle(members)
    order: list[int] = []
    queues = [per_class[c] for c in sorted(per_class)]
    while any(queues):
        order += [q.pop(0) for q in queues if q]
    val, calib, train = order[:VAL_COUNT], order[VAL_COUNT : VAL_COUNT + CALIB_COUNT], order[VAL_COUNT + CALIB_COUNT :]
    return {"train": sorted(train), "calib": sorted(calib), "val": sorted(val)}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale the 0..16 block counts to 0..255 grey levels."""
    return np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe_split(folder: Path) -> dict:
    """File count, per-class counts and one digest over the sorted ``<class>/<file> <sha256>`` lines."""
    files = sorted(p for p in folder.rglob("*.png") if p.is_file())
    lines = [f"{p.relative_to(folder).as_posix()} {sha256_bytes(p.read_bytes())}\n" for p in files]
    per_class: dict[str, int] = {}
    for p in files:
        per_class[p.parent.name] = per_class.get(p.parent.name, 0) + 1
    return {
        "files": len(files),
        "per_class": dict(sorted(per_class.items())),
        "sha256": sha256_bytes("".join(sorted(lines)).encode()),
    }


def build_manifest(root: Path) -> dict:
    return {
        "source": "UCI Optical Recognition of Handwritten Digits (test set, 1,797 images) via sklearn.datasets",
        "license": "CC BY 4.0",
        "seed": SEED,
        "digest": "sha256 over the sorted lines '<class>/<file> <sha256 of the file>\\n' of each split",
        "splits": {name: describe_split(root / name) for name in SPLITS},
    }


def write_dataset(root: Path) -> dict:
    """Write the three split folders (replacing old ones) and the manifest; return the manifest."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    for name, indices in split_indices(labels).items():
        folder = root / name
        if folder.exists():
            shutil.rmtree(folder)
        for index in indices:
            target = folder / str(int(labels[index])) / f"{index:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8(images[index]), mode="L").save(target, format="PNG", optimize=False)
    manifest = build_manifest(root)
    write_json(root / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DATA, help="output folder (default: calibration/digits)")
    parser.add_argument("--check", action="store_true", help="only compare the folders with manifest.json")
    args = parser.parse_args(argv)
    if args.check:
        recorded = json.loads((args.out / "manifest.json").read_text(encoding="utf-8"))["splits"]
        actual = build_manifest(args.out)["splits"]
        bad = [name for name in SPLITS if recorded.get(name) != actual[name]]
        print("manifest matches" if not bad else f"manifest differs for: {', '.join(bad)}")
        return 1 if bad else 0
    manifest = write_dataset(args.out)
    for name, split in manifest["splits"].items():
        print(f"{name}: {split['files']} images {split['per_class']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
