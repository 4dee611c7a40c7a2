"""INT8 on the CPU: the project's files against each runtime's own quantizer, on that runtime (issues 21, 31).

Usage (a quiet machine; NNCF and ModelOpt importable, e.g. installed with ``pip install --target
/tmp/peers nncf nvidia-modelopt`` and ``PYTHONPATH=/tmp/peers``; a peer that does not import is skipped
and said):

    python scripts/int8_speed_compare.py --dir /tmp/int8-speed [--arch resnext50_32x4d]
        [--calib-count 64] [--batch-sizes 1,8] [--duration 3] [--rounds 5] [--json out.json]

Rows, each in a process of its own with its library's default threading, and PyTorch FP32 eager as
the reference. On OpenVINO's CPU plugin (INT8 files with f32 between the Q/DQ pairs, as the project's
runner opens them):

* ``project``: ``model.int8.onnx`` as the project makes it by default (float parts in FP16);
* ``project, ONNX Runtime's file``: ``model.int8.ort.onnx`` from the same build (which INT8 file
  OpenVINO should run);
* ``fp32``: ``model.onnx`` (f32);
* ``project, float parts fp32``: ``--high-precision fp32`` (no FP16<->FP32 conversions on the CPU);
* ``project, no residual-Add Q/DQ``: the residual Adds' Q/DQ pairs left out (``--exclude '*/Add'``);
* ``nncf``: ``nncf.quantize`` of model.onnx read by OpenVINO, saved as IR (NNCF's default preset);
* ``modelopt``: ``modelopt.onnx.quantization.quantize(quantize_mode="int8")`` on the CPU.

On ONNX Runtime's CPU provider (its ONNX Runtime runner, default threads):

* ``ort: project's model.int8.ort.onnx`` (U8S8) and the same file with int8 activations (S8S8);
* ``ort: project's model.int8.onnx``: TensorRT's placement, as ONNX Runtime ran INT8 before #31;
* ``ort: quantize_static``: ONNX Runtime's own quantizer (QOperator, U8S8, per channel,
  ``scripts/ort_quantize_reference.py``);
* ``ort: fp32``: ``model.onnx``.

Equal accuracy: every row's cosine similarity to ``model.onnx`` (ONNX Runtime FP32) on 32 seeded
images that are not the calibration images is printed beside its speed (min and mean).

Every file is calibrated on the same images (``--calib-dir``, or seeded N(0,1) arrays with random
weights; accuracy is not the point of random weights). Rounds are interleaved: in each round every
worker runs each batch size for ``--duration`` seconds after a warm-up, in a rotating order, so
drift hits all rows alike. Reported: the median latency over all rounds, its ratio to PyTorch's at
the same batch size, and the spread of the per-round medians.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnext_deploy.artifacts import ORT_INT8_FILE  # noqa: E402
from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner  # noqa: E402

CHECK_IMAGES = 32

PROJECT_VARIANTS = {
    "project": {},
    "project, float parts fp32": {"high_precision": "fp32"},
    "project, no residual-Add Q/DQ": {"exclude": ("*/Add",)},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="working directory (files are reused when present)")
    parser.add_argument("--arch", default="resnext50_32x4d")
    parser.add_argument("--calib-dir", type=Path, help="calibration images or .npy/.npz; default seeded N(0,1)")
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per row and round")
    parser.add_argument("--warmup", type=float, default=0.2, help="seconds of warm-up per row and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peers", default="nncf,modelopt", help="peers to quantize with (comma list, or none)")
    parser.add_argument("--runtimes", default="openvino,onnxruntime", help="which runtimes' rows (comma list)")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# The files


def calibration_arrays(args: argparse.Namespace, source: Any) -> tuple[Path, np.ndarray]:
    """The calibration data as a path the project reads and as arrays the peers read."""
    from resnext_deploy.data import open_dataset

    if args.calib_dir is not None:
        dataset = open_dataset(args.calib_dir, source.preprocessing, args.calib_count)
        images = np.concatenate([batch.images for batch in dataset.batches(16)])
        return args.calib_dir, images
    path = args.dir / "calib.npy"
    size = source.preprocessing.image_size
    images = np.random.default_rng(0).standard_normal((args.calib_count, 3, size, size)).astype(np.float32)
    np.save(path, images)
    return path, images


def project_files(args: argparse.Namespace, base: Path, calib: Path) -> dict[str, Path]:
    """Each project variant's model.int8.onnx, made by the library in a copy of the export."""
    from resnext_deploy.parity import Tolerance
    from resnext_deploy.precision.options import PrecisionOptions
    from resnext_deploy.precision.typed import make_typed_onnx

    # Random weights: a loose check, so that every variant gets its file; no search (it would keep
    # sites in float, and the rows must differ only in what they name).
    loose = {"int8": Tolerance(cosine_min=0.9, rel_error_max=0.5)}
    files = {}
    for index, (name, options) in enumerate(PROJECT_VARIANTS.items()):
        directory = args.dir / f"project{index}"
        if not directory.exists():
            shutil.copytree(base, directory, ignore=shutil.ignore_patterns("model.*.onnx", "*.json.lock"))
        result = make_typed_onnx(
            directory,
            "int8",
            PrecisionOptions(
                calib_source=calib,
                calib_count=args.calib_count,
                min_check=min(32, max(1, args.calib_count // 4)),
                search=False,
                tolerances=loose,
                **options,
            ),
            log=functools.partial(tagged, name),
        )
        files[name] = result.path
    return files


def tagged(name: str, message: str) -> None:
    print(f"[{name}] {message}", file=sys.stderr)


def nncf_file(args: argparse.Namespace, model: Path, images: np.ndarray) -> Path:
    import nncf
    import openvino as ov

    target = args.dir / "nncf" / "model.int8.xml"
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        calibration = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
        quantized = nncf.quantize(ov.Core().read_model(str(model)), calibration, subset_size=len(images))
        ov.save_model(quantized, str(target))
    return target


def modelopt_file(args: argparse.Namespace, model: Path, images: np.ndarray) -> Path:
    from modelopt.onnx.quantization import quantize

    target = args.dir / "modelopt" / "model.int8.onnx"
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        quantize(
            onnx_path=str(model),
            quantize_mode="int8",
            calibration_data={"input": images},
            calibration_eps=["cpu"],
            output_path=str(target),
        )
    return target


PEERS = {"nncf": nncf_file, "modelopt": modelopt_file}


def s8s8_file(directory: Path) -> Path:
    """model.int8.ort.onnx's placement with int8 activations (S8S8), from the same directory's calibration."""
    from resnext_deploy.artifacts import CALIBRATION_NAME
    from resnext_deploy.precision.calibration import read_calibration
    from resnext_deploy.precision.graph import load_prepared, save_model
    from resnext_deploy.precision.int8_ort import int8_ort_model

    target = directory / "model.int8.ort.s8s8.onnx"
    if not target.exists():
        calibration = read_calibration(directory / CALIBRATION_NAME)
        if calibration is None:
            raise SystemExit(f"{directory / CALIBRATION_NAME} is missing or of another format: run build-trt --int8")
        model, _plan = int8_ort_model(load_prepared(directory / "model.onnx"), calibration, activation_type="int8")
        save_model(model, target)
    return target


def quantize_static_file(base: Path, calib: Path, count: int) -> Path:
    """ONNX Runtime's quantize_static output (QOperator, U8S8, per channel) of the export, on the same images."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from ort_quantize_reference import REFERENCE, build_reference

    target = base / REFERENCE
    return target if target.exists() else build_reference(base, calib, count)


# ----------------------------------------------------------------------------------------------
# The measurement, one process per row


def worker(connection: Any, kind: str, target: str, arch: str) -> None:
    """Open one runner, then measure on request: ``(batch, warmup_s, duration_s)`` -> latencies in ms."""
    if kind == "torch":
        from resnext_deploy.backends.torch import TorchRunner
        from resnext_deploy.models import create_model

        runner = TorchRunner(create_model(arch))
    elif kind == "onnxruntime":
        from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(target, "int8")  # ONNX Runtime's default threads and spinning
    else:
        from resnext_deploy.backends.openvino import OpenVINORunner

        runner = OpenVINORunner(target, "int8" if "int8" in Path(target).name else "fp32")
    connection.send("ready")
    while (request := connection.recv()) is not None:
        if isinstance(request, np.ndarray):  # the accuracy check: logits on these images
            connection.send(runner(request))
            continue
        batch, warmup, duration, size = request
        images = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            runner(images)
        times: list[float] = []
        end = time.perf_counter() + duration
        while time.perf_counter() < end or len(times) < 3:
            start = time.perf_counter()
            runner(images)
            times.append((time.perf_counter() - start) * 1e3)
        connection.send(times)
    runner.close()


def measure(
    args: argparse.Namespace, rows: dict[str, tuple[str, str]], size: int, reference: Path
) -> list[dict[str, Any]]:
    """Interleaved rounds over every row and batch size; the median of all iterations and of each round.

    Before timing, each row's logits on CHECK_IMAGES seeded images are compared with ``reference``'s
    (model.onnx in ONNX Runtime): the accuracy every speed is quoted at.
    """
    context = mp.get_context("spawn")
    workers = {}
    for name, (kind, target) in rows.items():
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(child, kind, target, args.arch), daemon=True)
        process.start()
        if parent.recv() != "ready":
            raise SystemExit(f"{name}: the worker did not start")
        workers[name] = (process, parent)
    check = np.random.default_rng(12345).standard_normal((CHECK_IMAGES, 3, size, size)).astype(np.float32)
    expected = OnnxRuntimeRunner(reference)(check)
    cosines = {}
    for name, (_process, connection) in workers.items():
        if rows[name][0] == "torch":  # the speed reference: a model of the same shape, not the exported weights
            cosines[name] = (None, None)
            continue
        connection.send(check)
        cosines[name] = cosine(expected, connection.recv())
    batches = [int(b) for b in args.batch_sizes.split(",")]
    samples: dict[tuple[str, int], list[list[float]]] = {(n, b): [] for n in rows for b in batches}
    names = list(rows)
    try:
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for batch in batches:
                for name in order:
                    connection = workers[name][1]
                    connection.send((batch, args.warmup, args.duration, size))
                    samples[(name, batch)].append(connection.recv())
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for process, connection in workers.values():
            connection.send(None)
            process.join(timeout=30)
    results = []
    for (name, batch), rounds in samples.items():
        pooled = [t for times in rounds for t in times]
        per_round = [statistics.median(times) for times in rounds]
        results.append(
            {
                "row": name,
                "batch_size": batch,
                "median_ms": statistics.median(pooled),
                "round_medians_ms": per_round,
                "round_spread": (max(per_round) - min(per_round)) / statistics.median(per_round),
                "iterations": len(pooled),
                "runtime": rows[name][0],
                "cosine_min": cosines[name][0],
                "cosine_mean": cosines[name][1],
            }
        )
    reference = {r["batch_size"]: r["median_ms"] for r in results if r["row"] == "pytorch fp32"}
    for result in results:
        result["vs_pytorch"] = reference[result["batch_size"]] / result["median_ms"]
    return results


def cosine(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Min and mean per-sample cosine similarity of two logit arrays."""
    dots = (reference * candidate).sum(axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    values = dots / np.maximum(norms, 1e-30)
    return float(values.min()), float(values.mean())


def cell(result: dict[str, Any]) -> str:
    return f"{result['median_ms']:.2f} ms, {result['vs_pytorch']:.2f}x ({result['round_spread']:.0%})"


def table(results: list[dict[str, Any]], batches: list[int]) -> str:
    rows = dict.fromkeys(r["row"] for r in results)
    by = {(r["row"], r["batch_size"]): r for r in results}
    header = "| runtime | file | " + " | ".join(f"batch {b}: median ms, vs PyTorch (round spread)" for b in batches)
    lines = [header + " | cosine vs model.onnx (min / mean) |", "| --- | --- |" + " --- |" * (len(batches) + 1)]
    for row in rows:
        first = by[(row, batches[0])]
        cells = [cell(by[(row, b)]) for b in batches]
        accuracy = "-" if first["cosine_min"] is None else f"{first['cosine_min']:.4f} / {first['cosine_mean']:.4f}"
        lines.append(f"| {first['runtime']} | {row} | " + " | ".join(cells) + f" | {accuracy} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from resnext_deploy.export import export_onnx
    from resnext_deploy.source import SourceOptions, resolve_source

    args.dir.mkdir(parents=True, exist_ok=True)
    source = resolve_source(SourceOptions(args.arch))
    base = args.dir / "export"
    if not (base / "model.onnx").exists():
        base.mkdir(exist_ok=True)
        export_onnx(source, base, log=lambda message: print(message, file=sys.stderr))
    calib, images = calibration_arrays(args, source)
    runtimes = set(args.runtimes.split(","))
    rows: dict[str, tuple[str, str]] = {"pytorch fp32": ("torch", "")}
    project = project_files(args, base, calib)
    default = project["project"]
    ort_file = default.with_name(ORT_INT8_FILE)
    if "onnxruntime" in runtimes:  # before ModelOpt is imported: it patches ONNX Runtime's quantizer
        reference = quantize_static_file(base, calib, args.calib_count)
    if "openvino" in runtimes:
        rows.update({name: ("openvino", str(path)) for name, path in project.items()})
        rows["project, ONNX Runtime's file"] = ("openvino", str(ort_file))
        for peer in [p for p in args.peers.split(",") if p and p != "none"]:
            try:
                rows[peer] = ("openvino", str(PEERS[peer](args, base / "model.onnx", images)))
            except ImportError as exc:
                print(f"{peer} skipped: it does not import here ({exc})", file=sys.stderr)
        rows["fp32"] = ("openvino", str(base / "model.onnx"))
    if "onnxruntime" in runtimes:
        rows["ort: project's model.int8.ort.onnx"] = ("onnxruntime", str(ort_file))
        rows["ort: project's model.int8.ort.onnx, S8S8"] = ("onnxruntime", str(s8s8_file(default.parent)))
        rows["ort: project's model.int8.onnx"] = ("onnxruntime", str(default))
        rows["ort: quantize_static"] = ("onnxruntime", str(reference))
        rows["ort: fp32"] = ("onnxruntime", str(base / "model.onnx"))
    results = measure(args, rows, source.preprocessing.image_size, base / "model.onnx")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    sys.path.insert(0, str(ROOT / "scripts"))
    from calibration_cost import machine

    where = machine()
    print(f"{args.arch}, {args.rounds} rounds of {args.duration} s per row; {where}")
    print(table(results, batches))
    if args.json is not None:
        args.json.write_text(json.dumps({"arch": args.arch, "machine": where, "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
