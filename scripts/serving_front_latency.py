"""What serve's fronts cost: the same served model through the HTTP and gRPC fronts and straight to tritonserver.

Starts ``resnext-deploy serve --dir DIR`` (Triton environment), reads the loopback ports tritonserver's
own HTTP and gRPC frontends listen on from its command line, and runs bench-triton's closed-loop load
test (``resnext_deploy.serving.load_test``) against the four ports, interleaved round by round so that
machine drift hits all alike, at each batch size and concurrency. Prints
the machine, the commit, and per case the median of the rounds' p50 and mean latencies and the
front's added time; ``--json PATH`` also writes them. Writes nothing in DIR but serve's server log.

    .venv-triton/bin/python scripts/serving_front_latency.py --dir artifacts/demo [--batch-sizes 1,8]
        [--concurrency 1,4] [--rounds 5] [--duration 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tritonserver_ports(session: int, timeout_s: float = 120.0) -> dict[str, int]:
    """The HTTP and gRPC ports on the command line of the tritonserver in ``session`` (serve's own, on loopback)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if os.getsid(int(entry.name)) != session or (entry / "comm").read_text().strip() != "tritonserver":
                    continue
                args = (entry / "cmdline").read_bytes().decode().split("\0")
            except (OSError, ProcessLookupError):
                continue
            return {protocol: int(args[args.index(f"--{protocol}-port") + 1]) for protocol in ("http", "grpc")}
        time.sleep(0.5)
    raise SystemExit("tritonserver did not start")


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "") if done.returncode == 0 else "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round and case")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from resnext_deploy.evaluate.machine import load_average, machine_record
    from resnext_deploy.serde import encode
    from resnext_deploy.serving.load_test import LoadTestSettings, background_load, served_model, triton_load_test

    port, grpc_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "resnext_deploy", "serve", "--dir", str(args.dir), "--port", str(port)]
    command += ["--grpc-port", str(grpc_port), "--metrics-port", str(_free_port())]
    server = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        direct = _tritonserver_ports(server.pid)
        urls = {
            "http front": f"http://127.0.0.1:{port}",
            "http direct": f"http://127.0.0.1:{direct['http']}",
            "grpc front": f"grpc://127.0.0.1:{grpc_port}",
            "grpc direct": f"grpc://127.0.0.1:{direct['grpc']}",
        }
        deadline = time.monotonic() + 120
        while True:
            try:
                model = served_model(urls["http front"], args.dir, log=lambda _m: None)
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        other_cpu = background_load(1.0)
        cases = [(int(b), int(c)) for b in args.batch_sizes.split(",") for c in args.concurrency.split(",")]
        samples: dict[tuple[int, int, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for batch, concurrency in cases:
                for path, url in urls.items():
                    settings = LoadTestSettings((concurrency,), batch, args.duration, warmup_s=0.3)
                    (row,) = triton_load_test(url, model, settings, log=lambda _m: None)
                    if row.errors or row.p50_ms is None or row.mean_ms is None:
                        raise SystemExit(f"{path} batch {batch}: {row.errors} errors ({row.first_error})")
                    samples.setdefault((batch, concurrency, path), []).append((row.p50_ms, row.mean_ms))
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(60)

    machine = machine_record(None)
    print(f"machine: {machine.cpu}, {machine.cpu_cores} cores; load average {load_average()}")
    print(
        f"other processes' share of the CPU before the runs: {other_cpu if other_cpu is None else f'{other_cpu:.0%}'}"
    )
    print(f"commit: {_commit()}; model {model}; {args.rounds} interleaved rounds of {args.duration:g} s per case")
    columns = ["protocol", "batch", "concurrency", "p50 direct ms", "p50 front ms", "added p50 ms"]
    print("| " + " | ".join([*columns, "mean direct ms", "mean front ms"]) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    results = []
    for protocol in ("http", "grpc"):
        for batch, concurrency in cases:
            median = {
                path: [
                    statistics.median(s[i] for s in samples[(batch, concurrency, f"{protocol} {path}")]) for i in (0, 1)
                ]
                for path in ("direct", "front")
            }
            added = median["front"][0] - median["direct"][0]
            print(
                f"| {protocol} | {batch} | {concurrency} | {median['direct'][0]:.2f} | {median['front'][0]:.2f} | "
                f"{added:+.2f} | {median['direct'][1]:.2f} | {median['front'][1]:.2f} |"
            )
            results.append(
                {
                    "protocol": protocol,
                    "batch": batch,
                    "concurrency": concurrency,
                    "p50_mean_ms": median,
                    "added_p50_ms": added,
                }
            )
    if args.json:
        record = {
            "commit": _commit(),
            "machine": encode(machine),
            "other_cpu": other_cpu,
            "model": model,
            "cases": results,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
