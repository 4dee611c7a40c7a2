"""What calibration costs against the forward passes it needs: one script, the same images, the same batch size.

    python scripts/calibration_cost.py --dir /tmp/calib-cost [--arch resnext50_32x4d] [--count 64]
        [--batch-size 8] [--rounds 3] [--json out.json]

Exports ``--arch`` with seeded random weights into ``--dir`` when it holds no model.onnx, writes
``--count`` seeded N(0,1) images there (``calib.npy``), then, in rotating order within each round, times:

* ``plain``: an ONNX Runtime session on model.onnx fetching the logits only, over the images at
  ``--batch-size`` (what "the forward passes" cost);
* ``fetch``: the pass calibration makes (:func:`~resnext_deploy.precision.statistics.activation_pass`, its setup
  included), fetching the activations without folding them into statistics;
* ``calibration``: :func:`~resnext_deploy.precision.statistics.collect_statistics` at the same batch
  size, every statistic every method needs (min/max, the |x| histograms for entropy and percentile).

Prints the median of each over the rounds and the ratios to ``plain``: the ratio of the medians, and the median
of each round's own ratio (steps of one round run minutes apart at most, so a machine that slows down for a while
moves both), and what the statistics add (``calibration`` minus ``fetch``: with a free fetch, calibration would
still cost plain plus that),
with the CPU's flags, the commit and the load average, so a figure always says where it came from.
Target (#31): calibration at most 1.5x plain on 64 ResNeXt-50 images at batch 8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnext_deploy.artifacts import load_onnx  # noqa: E402
from resnext_deploy.backends.onnxruntime import open_session  # noqa: E402
from resnext_deploy.data import open_dataset  # noqa: E402
from resnext_deploy.precision.statistics import activation_pass, activation_tensors, collect_statistics  # noqa: E402


def machine() -> dict[str, object]:
    """The CPU, its int8-relevant flags, the commit and the load: what every figure is quoted with."""
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in wanted if f in flags],
        "commit": commit,
        "load_average": os.getloadavg(),
    }


def prepare(args: argparse.Namespace) -> Path:
    """model.onnx (exported with seeded random weights when missing) and the seeded images."""
    args.dir.mkdir(parents=True, exist_ok=True)
    if not (args.dir / "model.onnx").exists():
        subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "export", "--arch", args.arch, "--dir", str(args.dir)],
            check=True,
            stdout=sys.stderr,
        )
    model = load_onnx(args.dir / "model.onnx")
    size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    images = args.dir / "calib.npy"
    data = np.random.default_rng(0).standard_normal((args.count, 3, size, size)).astype(np.float32)
    np.save(images, data)
    return images


def model_arguments(description: str) -> argparse.ArgumentParser:
    """The options :func:`prepare` reads (``--dir``, ``--arch``, ``--count``) and ``--json``."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--arch", default="resnext50_32x4d")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--json", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = model_arguments(__doc__)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from resnext_deploy.artifacts import Manifest
    from resnext_deploy.source import recorded_source

    images = prepare(args)
    model_path = args.dir / "model.onnx"
    dataset = open_dataset(images, recorded_source(Manifest(args.dir)).preprocessing, args.count)
    model = load_onnx(model_path)
    found = activation_tensors(model)
    fetched = [name for name in found.names if name not in {value.name for value in model.graph.input}]
    batch_bytes = (found.per_sample or 1) * args.batch_size

    def plain() -> None:
        session = open_session(model_path)
        for batch in dataset.batches(args.batch_size):
            session.run(None, {session.get_inputs()[0].name: batch.images})

    def fetch() -> None:
        for _images, values in activation_pass(model_path, dataset, "", batch_bytes).batches:
            del values

    def calibration() -> None:
        collect_statistics(model_path, dataset, lambda _line: None, batch_bytes=batch_bytes)

    steps = {"plain": plain, "fetch": fetch, "calibration": calibration}
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            started = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - started)
            print(f"round {round_index + 1}: {name} {times[name][-1]:.2f} s", file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in times.items()}
    paired = {
        name: statistics.median(step / plain for step, plain in zip(values, times["plain"], strict=True))
        for name, values in times.items()
    }
    where = machine()
    print(f"{args.count} images at batch {args.batch_size}, {len(fetched)} activations fetched; {where}")
    for name, seconds in medians.items():
        print(
            f"{name:12s} {seconds:8.2f} s  {seconds / medians['plain']:5.2f}x plain  "
            f"(each round's own ratio, median: {paired[name]:.2f}x)"
        )
    statistics_only = medians["calibration"] - medians["fetch"]  # what the statistics add to the fetching loop
    print(
        f"{'statistics':12s} {statistics_only:8.2f} s  {statistics_only / medians['plain']:5.2f}x plain "
        "(calibration minus fetch)"
    )
    if args.json:
        record = {"machine": where, "seconds": times, "median": medians, "paired_ratio_median": paired}
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
