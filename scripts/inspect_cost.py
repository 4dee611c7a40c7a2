"""What inspect's site-by-site views cost, against the forward passes they need (issue #32).

Usage:

    python scripts/inspect_cost.py --dir /tmp/inspect-cost [--arch resnext50_32x4d] [--images 32]

Exports the model (random weights, seed 0), makes its INT8 file from minmax ranges of the same seeded
N(0,1) images (the project's calibration, no search), then times on those images, in one process:

* one forward pass of model.onnx and one of model.int8.onnx (ONNX Runtime, CPU, batches of 8);
* the local and accumulated views of every site (:func:`resnext_deploy.inspect.accuracy.site_errors`);
* the output-level checks of the worst sites (:data:`resnext_deploy.inspect.site_report.CONFIRMED`), which
  reuse the INT8 search's saved sensitivities where there are any (none here: no search ran).

Prints the machine, the commit and the load, then the times and the ratio the issue bounds: views / (float
pass + typed pass), at most 3.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.exists() else []


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if "model name" in line),
        platform.processor(),
    )
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, load {load}, commit {commit.stdout.strip() or '?'}"


def timed_pass(model, images: np.ndarray) -> float:
    from resnext_deploy.inspect.accuracy import cpu_session

    session = cpu_session(model)
    name = session.get_inputs()[0].name
    session.run(None, {name: images[:8]})  # warm
    start = time.perf_counter()
    for i in range(0, len(images), 8):
        session.run(None, {name: images[i : i + 8]})
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--arch", default="resnext50_32x4d")
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args(argv)

    import onnx

    from resnext_deploy.artifacts import Manifest
    from resnext_deploy.data import open_dataset, take
    from resnext_deploy.export import export_onnx
    from resnext_deploy.inspect.site_report import artifact_accuracy
    from resnext_deploy.precision.calibration import calibrate
    from resnext_deploy.precision.graph import load_prepared
    from resnext_deploy.precision.int8 import int8_model
    from resnext_deploy.source import SourceOptions, resolve_source

    quiet = lambda _m: None  # noqa: E731
    directory = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    source = resolve_source(SourceOptions(args.arch))
    if not (directory / "model.onnx").exists():
        export_onnx(source, directory, log=quiet)
    dataset = open_dataset(None, source.preprocessing, args.images)
    images = take(dataset, args.images).images
    calibration = calibrate(directory, directory / "model.onnx", dataset, "minmax", 99.99, quiet)
    typed, _fp32, _plan = int8_model(load_prepared(directory / "model.onnx"), calibration)
    onnx.save(typed, str(directory / "model.int8.onnx"))
    manifest = Manifest(directory)
    manifest.record("model.int8.onnx", "int8", parent_sha256=manifest.entry("model.onnx").sha256, options={})
    float_model = onnx.load(str(directory / "model.onnx"))

    float_s = timed_pass(float_model, images)
    typed_s = timed_pass(typed, images)
    start = time.perf_counter()
    accuracy, _passes = artifact_accuracy(
        directory, manifest.entry("model.int8.onnx"), float_model, typed, images, None, confirm=0
    )
    views_s = time.perf_counter() - start
    start = time.perf_counter()
    artifact_accuracy(directory, manifest.entry("model.int8.onnx"), float_model, typed, images, None)
    confirmed_s = time.perf_counter() - start - views_s
    print(f"machine: {machine()}")
    print(f"{args.arch}, {len(images)} images, {len(accuracy.sites)} sites")
    print(f"one pass of model.onnx: {float_s:.2f} s; one pass of model.int8.onnx: {typed_s:.2f} s")
    print(f"local + accumulated views: {views_s:.2f} s = {views_s / (float_s + typed_s):.2f}x the two passes")
    print(f"output-level checks of the worst sites (none saved): {confirmed_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
