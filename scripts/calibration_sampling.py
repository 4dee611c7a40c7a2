"""How far the sampled histograms move the clips: against every value counted, and against other images.

    python scripts/calibration_sampling.py --dir /tmp/calib-cost [--arch resnext50_32x4d] [--count 64]
        [--json out.json]

Calibration's histograms count a strided sample of each image's tensor (``HISTOGRAM_VALUES`` values an image,
see ``precision/statistics.py``); min and max see every value. This script calibrates ``--arch`` (seeded
random weights, exported into ``--dir`` when it holds no model.onnx, as ``calibration_cost.py`` does) three
times at the default batch size: on ``--count`` seeded N(0,1) images with the sample, on the same images with
every value counted, and on as many other images (another seed, written to ``--dir`` as calib-other.npy) with
every value counted. For the entropy and percentile clips and the max of each histogram tensor it prints the
median, 90th percentile and largest relative difference of "sample vs every value" beside "other images vs
these images": the noise that the choice of calibration images brings anyway.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
from calibration_cost import ROOT, machine, model_arguments, prepare

sys.path.insert(0, str(ROOT))

from resnext_deploy.artifacts import Manifest  # noqa: E402
from resnext_deploy.data import open_dataset  # noqa: E402
from resnext_deploy.precision.options import DEFAULT_PERCENTILE  # noqa: E402
from resnext_deploy.precision.statistics import HISTOGRAM_VALUES, TensorStats, collect_statistics  # noqa: E402
from resnext_deploy.source import recorded_source  # noqa: E402

EVERY_VALUE = 1 << 40  # a histogram_values no image reaches: stride 1
METHODS = ("entropy", "percentile", "minmax")


def clips(
    model_path: Path, images: Path, count: int, histogram_values: int = HISTOGRAM_VALUES
) -> dict[str, list[float]]:
    """Each histogram tensor's entropy, percentile and minmax clip after one calibration pass."""
    dataset = open_dataset(images, recorded_source(Manifest(model_path.parent)).preprocessing, count)
    stats, _seen = collect_statistics(model_path, dataset, lambda _line: None, histogram_values=histogram_values)
    return {name: [stat.amax(method, DEFAULT_PERCENTILE) for method in METHODS] for name, stat in _kept(stats)}


def _kept(stats: dict[str, TensorStats]) -> list[tuple[str, TensorStats]]:
    return [(name, stat) for name, stat in stats.items() if stat.histogram is not None and stat.max_abs > 0]


def differences(found: dict[str, list[float]], reference: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per method, the median, 90th percentile and largest relative difference over the tensors."""
    result = {}
    for index, method in enumerate(METHODS):
        relative = [abs(found[name][index] / reference[name][index] - 1) for name in reference]
        result[method] = {
            "median": statistics.median(relative),
            "p90": float(np.percentile(relative, 90)),
            "max": max(relative),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    args = model_arguments(__doc__).parse_args(argv)

    images = prepare(args)
    model_path = args.dir / "model.onnx"
    other = args.dir / "calib-other.npy"
    np.save(other, np.random.default_rng(1).standard_normal(np.load(images, mmap_mode="r").shape).astype(np.float32))
    sampled = clips(model_path, images, args.count)
    every = clips(model_path, images, args.count, EVERY_VALUE)
    others = clips(model_path, other, args.count, EVERY_VALUE)
    rows = {"sample vs every value": differences(sampled, every), "other images vs these": differences(others, every)}
    print(f"{len(every)} histogram tensors, {args.count} images; {machine()}")
    for label, by_method in rows.items():
        for method, figures in by_method.items():
            shown = "  ".join(f"{key} {value:7.2%}" for key, value in figures.items())
            print(f"{label:24s} {method:10s} {shown}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "differences": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
