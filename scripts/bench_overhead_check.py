"""Does `bench` add anything to what it measures? Its ONNX Runtime median against a plain loop.

Exports ResNeXt-50 (32x4d, random weights: speed does not depend on them) to a temporary
directory, then in one process: a plain `session.run` loop timed with `time.perf_counter`,
`run_bench` on ONNX Runtime FP32 and torch FP32 at batch 1, and the plain loop again (before and
after, so that drift of the machine shows). Prints both medians, their ratio, and ONNX Runtime's
speed against torch as bench measured it. Exit 0 when bench's median is within 10% of the plain
loop's.

    .venv/bin/python scripts/bench_overhead_check.py [--duration 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from resnext_deploy.evaluate.bench import run_bench  # noqa: E402
from resnext_deploy.export import export_onnx  # noqa: E402
from resnext_deploy.source import resolve_source  # noqa: E402

TOLERANCE = 0.10


def plain_loop_median_ms(path: Path, image_size: int, warmup_s: float, duration_s: float, threads: int | None) -> float:
    """The median of `session.run` calls in a for loop: nothing between the timer and the session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {
        session.get_inputs()[0].name: np.random.default_rng(1).standard_normal(
            (1, 3, image_size, image_size), dtype=np.float32
        )
    }
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        session.run(None, feed)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s or len(times) < 10:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnext50_32x4d")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the libraries')")
    args = parser.parse_args()
    source = resolve_source(args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        export_onnx(source, directory, log=print)
        path = directory / "model.onnx"
        before = plain_loop_median_ms(path, source.image_size, 0.2, args.duration, args.threads)
        report = run_bench(
            directory,
            backends=("onnxruntime", "torch"),
            precisions=("fp32",),
            batch_sizes=(1,),
            duration_s=args.duration,
            threads=args.threads,
            log=print,
            progress=False,
        )
        after = plain_loop_median_ms(path, source.image_size, 0.2, args.duration, args.threads)
    rows = {r["backend"]: r for r in report.results}
    bench_ms, torch_ms = rows["onnxruntime"]["median_ms"], rows["torch"]["median_ms"]
    plain_ms = (before + after) / 2
    ratio = bench_ms / plain_ms
    machine = report.machine
    print(f"machine: {machine['cpu']}, {machine['cpus usable']} CPUs usable, threads {args.threads or 'default'}")
    print(f"plain loop median, before bench: {before:.2f} ms; after bench: {after:.2f} ms; mean {plain_ms:.2f} ms")
    print(f"bench ONNX Runtime fp32 median: {bench_ms:.2f} ms ({rows['onnxruntime']['iterations']} iterations)")
    print(f"bench / plain loop: {ratio:.3f} (must be within {1 - TOLERANCE:.2f}..{1 + TOLERANCE:.2f})")
    print(
        f"bench torch fp32 median: {torch_ms:.2f} ms; ONNX Runtime fp32 / torch fp32 speed: {torch_ms / bench_ms:.2f}x"
    )
    return 0 if abs(ratio - 1) <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
