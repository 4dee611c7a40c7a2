"""Do bench's numbers match what users measure themselves? PyTorch, ONNX Runtime FP32 and OpenVINO INT8, each with
its library's defaults, in plain loops before and after bench.

Runs, each in a process of its own and one at a time:

1. a plain loop per (runtime, batch size), each library as users get it by default: PyTorch eager
   (the model DIR's manifest records, ``torch.inference_mode``), an ONNX Runtime ``InferenceSession``
   on DIR/model.onnx (default session options), an OpenVINO model compiled from DIR/model.int8.onnx
   with the latency hint (nothing else set), timed with ``time.perf_counter``;
2. ``resnext-deploy bench --dir DIR`` (the three rows above at ``--batch-sizes``, or ``--bench-args``);
3. the same plain loops again.

The machine drifts between the two ends (5-10% a minute apart on a 2-core VM), so bench's median
passes when it lies within the range of the two plain medians widened by ``--tolerance`` (5%) of it.
Prints a table and a JSON summary (with the commit, the CPU's flags and the load average before and
after) on stdout; writes nothing but what bench writes in DIR (and DIR itself with ``--make``).

    .venv/bin/python scripts/bench_vs_plain_loop.py --dir out [--batch-sizes 1,8] [--duration 5]
    .venv/bin/python scripts/bench_vs_plain_loop.py --dir /tmp/r50 --make resnext50   # ResNeXt-50, random weights
    .venv/bin/python scripts/bench_vs_plain_loop.py --dir /tmp/demo --make demo       # the bundled demo model
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOPS = {"torch": ("fp32", None), "onnxruntime": ("fp32", "model.onnx"), "openvino": ("int8", "model.int8.onnx")}
# --make: the commands that make DIR (export, then the INT8 file checked on the CPU). ResNeXt-50 has random weights
# and no bundled images: it calibrates on CALIB_COUNT seeded N(0,1) arrays written to DIR/calib.npy.
CALIB_COUNT = 64
MAKE = {
    "resnext50": [
        ["export", "--arch", "resnext50_32x4d"],
        ["build-trt", "--int8", "--onnx-only", "--calib-dir", "{calib}"],
    ],
    "demo": [["export"], ["build-trt", "--int8", "--onnx-only"]],
}


def plain_loop(
    runtime: str, directory: Path, batch: int, warmup_s: float, duration_s: float, threads: int | None
) -> float:
    """The median of plain calls on a seeded N(0,1) batch, after a warm-up; nothing between the timer and the call."""
    import numpy as np

    onnx_file = LOOPS[runtime][1]
    path = directory / onnx_file if onnx_file else None
    if runtime == "torch":
        import torch

        from resnext_deploy.artifacts import Manifest
        from resnext_deploy.source import recorded_source

        source = recorded_source(Manifest(directory))
        model = source.build().eval()
        if threads:
            torch.set_num_threads(threads)
        shape = [None, 3, source.preprocessing.image_size, source.preprocessing.image_size]

        def call(x: np.ndarray) -> object:
            with torch.inference_mode():
                return model(torch.from_numpy(x))

    elif runtime == "onnxruntime":
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

        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
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


def _environment() -> dict[str, str]:
    """This checkout first on the path, so the script measures the code beside it."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _loop_in_process(args: argparse.Namespace, runtime: str, batch: int) -> float:
    command = [sys.executable, __file__, "--loop", runtime, "--dir", str(args.dir), "--batch", str(batch)]
    command += ["--duration", str(args.duration)] + (["--threads", str(args.threads)] if args.threads else [])
    return float(subprocess.run(command, check=True, capture_output=True, text=True, env=_environment()).stdout)


def _tool(*arguments: str) -> None:
    command = [sys.executable, "-m", "resnext_deploy", *arguments]
    print("$ " + shlex.join(command), file=sys.stderr)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=_environment())


def _commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return (done.stdout.strip() or "unknown") + (" (with local changes)" if dirty.stdout.strip() else "")


def compare(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    from resnext_deploy.environment import usable_cpus
    from resnext_deploy.evaluate.machine import cpu_flags, load_average

    if args.make and not (args.dir / "model.int8.onnx").exists():
        calib = args.dir / "calib.npy"
        for step in MAKE[args.make]:
            if "{calib}" in step and not calib.exists():
                import numpy as np

                args.dir.mkdir(parents=True, exist_ok=True)
                np.save(calib, np.random.default_rng(0).standard_normal((CALIB_COUNT, 3, 224, 224)).astype(np.float32))
            _tool(*[str(calib) if word == "{calib}" else word for word in step], "--dir", str(args.dir))
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    pairs = [(runtime, batch) for runtime in LOOPS for batch in batch_sizes]
    load_before = load_average()
    before = {pair: _loop_in_process(args, *pair) for pair in pairs}
    bench_args = shlex.split(args.bench_args) or [
        "--backends", "torch,onnxruntime,openvino", "--precisions", "fp32,int8", "--batch-sizes", args.batch_sizes,
    ]  # fmt: skip
    bench = [sys.executable, "-m", "resnext_deploy", "bench", "--dir", str(args.dir), *bench_args]
    bench += ["--threads", str(args.threads)] if args.threads else []
    print("$ " + shlex.join(bench), file=sys.stderr)
    started = time.monotonic()
    subprocess.run(bench, check=True, stdout=subprocess.DEVNULL, env=_environment())
    bench_wall_s = time.monotonic() - started
    after = {pair: _loop_in_process(args, *pair) for pair in pairs}
    load_after = load_average()
    data = json.loads((args.dir / "bench.json").read_text())
    rows = data["results"]
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
        name = name or "PyTorch eager"
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
    flags = cpu_flags()
    record = {
        "commit": _commit(),
        "machine": data.get("machine", {}).get("cpu"),
        "cpu_flags": " ".join(flags) if flags is not None else "unknown",
        "usable_cpus": usable_cpus(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "bench_load": data.get("load"),
        "bench_isolation": data.get("settings", {}).get("isolation"),
        "bench_wall_s": bench_wall_s,
        "tolerance": args.tolerance,
        "rows": summary,
    }
    print(json.dumps(record, indent=1))
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dir", type=Path, required=True, help="artifact directory with model.onnx and model.int8.onnx"
    )
    parser.add_argument("--make", choices=sorted(MAKE), help="make DIR first (unless it has model.int8.onnx)")
    parser.add_argument("--batch-sizes", default="1,8", help="batch sizes compared (bench measures its own matrix)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds each plain loop measures")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tolerance", type=float, default=0.05, help="the plain loops' range widened by this share")
    parser.add_argument("--bench-args", default="", help="bench arguments instead of the three rows, shell-quoted")
    parser.add_argument("--loop", choices=sorted(LOOPS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop:
        sys.path.insert(0, str(ROOT))
        print(plain_loop(args.loop, args.dir, args.batch, 1.0, args.duration, args.threads))
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
