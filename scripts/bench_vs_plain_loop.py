"""Do bench's numbers match what a plain loop measures? ONNX Runtime FP32 and OpenVINO INT8, before and after bench.

Runs, each in a process of its own and one at a time:

1. a plain loop per (runtime, batch size): ``session.run`` on DIR/model.onnx (ONNX Runtime, its
   default options), ``infer`` on DIR/model.int8.onnx (OpenVINO, the latency hint and f32 for the
   float parts, as bench's OpenVINO int8 row compiles it), timed with ``time.perf_counter``;
2. ``resnext-deploy bench --dir DIR`` with its default matrix (or ``--bench-args``);
3. the same plain loops again.

The machine drifts between the two ends (10% a minute apart is common on a 2-core VM), so bench's
median passes when it lies within the range of the two plain medians widened by ``--tolerance``
(3%). Prints a table and a JSON summary on stdout; writes nothing but what bench writes in DIR.

    .venv/bin/python scripts/bench_vs_plain_loop.py --dir out [--batch-sizes 1,8] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOOPS = {"onnxruntime": ("fp32", "model.onnx"), "openvino": ("int8", "model.int8.onnx")}


def plain_loop(runtime: str, path: Path, batch: int, warmup_s: float, duration_s: float, threads: int | None) -> float:
    """The median of plain calls on a seeded N(0,1) batch, after a warm-up; nothing between the timer and the call."""
    import numpy as np

    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape

        def call(x: np.ndarray) -> object:
            return session.run(None, {name: x})

    else:
        import openvino as ov

        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
        shape = [d.get_length() if d.is_static else None for d in compiled.inputs[0].get_partial_shape()]

        def call(x: np.ndarray) -> object:
            return request.infer({0: x})

    size = int(shape[-1])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        call(x)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < duration_s or len(times) < 10:
        t0 = time.perf_counter()
        call(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _loop_in_process(args: argparse.Namespace, runtime: str, batch: int) -> float:
    command = [sys.executable, __file__, "--loop", runtime, "--dir", str(args.dir), "--batch", str(batch)]
    command += ["--duration", str(args.duration)] + (["--threads", str(args.threads)] if args.threads else [])
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def compare(args: argparse.Namespace) -> int:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    pairs = [(runtime, batch) for runtime in LOOPS for batch in batch_sizes]
    before = {pair: _loop_in_process(args, *pair) for pair in pairs}
    bench = [sys.executable, "-m", "resnext_deploy", "bench", "--dir", str(args.dir), *shlex.split(args.bench_args)]
    bench += ["--threads", str(args.threads)] if args.threads else []
    print("$ " + shlex.join(bench), file=sys.stderr)
    started = time.monotonic()
    subprocess.run(bench, check=True, stdout=subprocess.DEVNULL)
    bench_wall_s = time.monotonic() - started
    after = {pair: _loop_in_process(args, *pair) for pair in pairs}
    rows = json.loads((args.dir / "bench.json").read_text())["results"]
    summary, passed = [], True
    for runtime, batch in pairs:
        precision, name = LOOPS[runtime]
        [row] = [
            r
            for r in rows
            if (r["backend"], r["precision"], r["device"], r["batch_size"]) == (runtime, precision, "cpu", batch)
        ]
        low = min(before[runtime, batch], after[runtime, batch]) * (1 - args.tolerance)
        high = max(before[runtime, batch], after[runtime, batch]) * (1 + args.tolerance)
        inside = low <= row["median_ms"] <= high
        passed &= inside
        summary.append(
            {
                "runtime": runtime,
                "file": name,
                "batch_size": batch,
                "plain_before_ms": before[runtime, batch],
                "bench_median_ms": row["median_ms"],
                "plain_after_ms": after[runtime, batch],
                "bench_within_range": inside,
            }
        )
        print(
            f"{runtime:11s} {name:16s} batch {batch:3d}: plain before {before[runtime, batch]:8.3f} ms, bench "
            f"{row['median_ms']:8.3f} ms, plain after {after[runtime, batch]:8.3f} ms: "
            f"{'within' if inside else 'OUTSIDE'} [{low:.3f}, {high:.3f}]"
        )
    print(json.dumps({"bench_wall_s": bench_wall_s, "tolerance": args.tolerance, "rows": summary}, indent=1))
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dir", type=Path, required=True, help="artifact directory with model.onnx and model.int8.onnx"
    )
    parser.add_argument("--batch-sizes", default="1,8", help="batch sizes compared (bench measures its own matrix)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds each plain loop measures")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--bench-args", default="", help="extra bench arguments, as one shell-quoted string")
    parser.add_argument("--loop", choices=sorted(LOOPS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop:
        path = args.dir / LOOPS[args.loop][1]
        print(plain_loop(args.loop, path, args.batch, 1.0, args.duration, args.threads))
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
