"""ONNX Runtime's own INT8 model as a speed reference for the CPU rows of ``bench``, measured in the same run.

Builds ``DIR/ort_quantize_static.u8s8.onnx`` from ``DIR/model.onnx`` with ONNX Runtime's
``quantize_static`` (QOperator format: QLinearConv and friends, uint8 activations, int8 per-channel
weights, the U8S8 path ONNX Runtime's CPU kernels are fastest at) on calibration images, then measures
it interleaved with bench's runners of DIR (by default PyTorch eager, ONNX Runtime and OpenVINO), so
that the ratios hold on a busy machine. The reference is not an artifact: it is not in the manifest,
no command uses it, and its parity is not checked. Prints the table and, per batch size, the best CPU
row against PyTorch eager and against this reference; writes ``DIR/ort_reference_bench.json``.

    python scripts/ort_quantize_reference.py --dir out --calib-dir images/ [--batch-sizes 1,8]
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from resnext_deploy.artifacts import Manifest, atomic_path, write_json
from resnext_deploy.backends.base import ArtifactSet, Backend, Candidate
from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner
from resnext_deploy.backends.registry import register
from resnext_deploy.data import open_dataset
from resnext_deploy.errors import DeployError
from resnext_deploy.evaluate.bench import bench_table, measure_bench
from resnext_deploy.evaluate.settings import BenchSettings, parse_batch_sizes
from resnext_deploy.serde import encode
from resnext_deploy.source import recorded_source
from resnext_deploy.ui import render_table

REFERENCE = "ort_quantize_static.u8s8.onnx"
REFERENCE_BACKEND = "ort-quantize_static"


def build_reference(directory: Path, calib_dir: Path, count: int) -> Path:
    """``quantize_static`` QOperator U8S8 of DIR/model.onnx, calibrated (MinMax) on ``count`` images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = recorded_source(Manifest(directory))
    dataset = open_dataset(calib_dir, source.preprocessing, count)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (batch.images for batch in dataset.batches(8))

        def get_next(self) -> dict | None:
            images = next(self.batches, None)
            return None if images is None else {"input": images}

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice on pre-processing, done here
    target = directory / REFERENCE
    with tempfile.TemporaryDirectory() as scratch, atomic_path(target) as tmp:
        prepared = Path(scratch) / "pre_processed.onnx"  # shape inference and graph clean-up, as ORT advises
        quant_pre_process(str(directory / "model.onnx"), str(prepared))
        quantize_static(
            str(prepared),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="artifact directory holding model.onnx")
    parser.add_argument("--calib-dir", type=Path, required=True, help="calibration images for quantize_static")
    parser.add_argument("--calib-count", type=int, default=32)
    parser.add_argument("--backends", default="torch,onnxruntime,openvino")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--warmup-ms", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--min-iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the whole measurement")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


class QuantizeStaticBackend(Backend):
    """The reference file as a bench backend of its own, so it is measured in a worker like every other row.

    Its pool sleeps between calls like bench's ONNX Runtime rows (``allow_spinning`` off).
    """

    name = REFERENCE_BACKEND
    description = "ONNX Runtime quantize_static QOperator U8S8 (a speed reference, not an artifact)"

    def candidates(self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None) -> list[Candidate]:
        opener = functools.partial(OnnxRuntimeRunner, artifacts.path(REFERENCE), "int8", "cpu", threads, False)
        return [Candidate(self.name, "int8", "cpu", REFERENCE, opener)]


def run(args: argparse.Namespace) -> int:
    target = args.dir / REFERENCE
    if not target.exists():
        print(f"building {target} with quantize_static (QOperator, U8S8)", file=sys.stderr)
        build_reference(args.dir, args.calib_dir, args.calib_count)
    register(QuantizeStaticBackend())
    settings = BenchSettings(
        backends=(*args.backends.split(","), REFERENCE_BACKEND),
        precisions=tuple(args.precisions.split(",")),
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        warmup_ms=args.warmup_ms,
        duration_s=args.duration,
        min_iterations=args.min_iterations,
        threads=args.threads,
        budget_s=args.budget,
    )
    report = measure_bench(args.dir, settings, log=lambda line: print(line, file=sys.stderr))
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    rows = report.results
    print(render_table(*bench_table(rows), title="interleaved with ONNX Runtime's quantize_static reference"))
    summary = []
    for b in settings.batch_sizes:
        at_b = [r for r in rows if r.batch_size == b and r.device == "cpu"]
        ref = next(r for r in at_b if r.backend == REFERENCE_BACKEND)
        best = min((r for r in at_b if r.backend not in (REFERENCE_BACKEND, "torch")), key=lambda r: r.median_ms)
        line = {
            "batch_size": b,
            "best": best.label,
            "vs_torch_eager": best.speedup_vs_reference,
            "vs_quantize_static": ref.median_ms / best.median_ms,
            "quantize_static_vs_torch_eager": ref.speedup_vs_reference,
        }
        summary.append(line)
        print(
            f"batch {b}: best CPU row {line['best']} is {line['vs_torch_eager']:.2f}x PyTorch eager and "
            f"{line['vs_quantize_static']:.2f}x ONNX Runtime quantize_static U8S8 "
            f"(which is {line['quantize_static_vs_torch_eager']:.2f}x PyTorch eager)"
        )
    write_json(args.dir / "ort_reference_bench.json", {**encode(report), "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
