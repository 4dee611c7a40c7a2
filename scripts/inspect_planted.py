"""The README's `inspect` example: the demo model with an outlier planted, its INT8 file made without the search.

Usage:

    python scripts/inspect_planted.py --dir /tmp/inspect-planted [--backends openvino,onnxruntime]

Plants 8 outlier channels in the demo model (layer2.0's bn1, before its ReLU, x300; the grouped conv2 that
reads them /300: the same function, see ``scripts/int8_outlier_cases.py``), exports it, calibrates on the
demo's calibration images (the default method) and writes ``model.int8.onnx`` with every site in INT8 (what
``build-trt --int8 --no-search`` would check and refuse), recorded in the manifest. Then runs
``resnext-deploy inspect --dir DIR/art --data <the demo's validation images>`` and prints its stdout after a
line naming the machine and commit.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
spec = importlib.util.spec_from_file_location("int8_outlier_cases", ROOT / "scripts" / "int8_outlier_cases.py")
assert spec is not None and spec.loader is not None
cases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--backends", default="openvino,onnxruntime")
    args = parser.parse_args(argv)

    import onnx
    from safetensors.torch import load_file, save_file

    from resnext_deploy.artifacts import Manifest
    from resnext_deploy.cli import main as cli
    from resnext_deploy.data import open_dataset
    from resnext_deploy.demo import DEMO_CALIB, DEMO_VAL, DEMO_WEIGHTS
    from resnext_deploy.export import export_onnx
    from resnext_deploy.precision.calibration import DEFAULT_METHOD, DEFAULT_PERCENTILE, calibrate
    from resnext_deploy.precision.graph import load_prepared
    from resnext_deploy.precision.int8 import int8_model
    from resnext_deploy.source import SourceOptions, resolve_source

    sys.path.insert(0, str(ROOT / "scripts"))
    from inspect_cost import machine

    quiet = lambda _m: None  # noqa: E731
    args.dir.mkdir(parents=True, exist_ok=True)
    state = load_file(str(DEMO_WEIGHTS))
    cases.plant(state, "layer2.0", "bn1", "conv2", list(range(0, 64, 8)), 300.0)
    checkpoint = args.dir / "planted.safetensors"
    save_file(state, str(checkpoint))
    directory = args.dir / "art"
    directory.mkdir(exist_ok=True)
    source = resolve_source(SourceOptions("resnext11_digits", checkpoint))
    export_onnx(source, directory, log=quiet)
    dataset = open_dataset(DEMO_CALIB, source.preprocessing, 256, num_classes=source.num_classes)
    ranges = calibrate(directory, directory / "model.onnx", dataset, DEFAULT_METHOD, DEFAULT_PERCENTILE, quiet)
    model, _fp32, _plan = int8_model(load_prepared(directory / "model.onnx"), ranges)
    onnx.save(model, str(directory / "model.int8.onnx"))
    manifest = Manifest(directory)
    parent = manifest.entry("model.onnx").sha256
    manifest.record("model.int8.onnx", "int8", parent_sha256=parent, options={"made by": "scripts/inspect_planted.py"})
    print(f"machine: {machine()}")
    sys.stdout.flush()
    return cli(["inspect", "--dir", str(directory), "--data", str(DEMO_VAL), "--backends", args.backends])


if __name__ == "__main__":
    sys.exit(main())
