"""INT8 on outlier models (issue 21): `pipeline` with default options on the demo model with outliers planted.

Usage:

    python scripts/int8_outlier_cases.py --dir /tmp/outliers [--cases shortcut,classifier,...] [--json out.json]
        [--readme README.md]

``--readme`` replaces the table between the README's ``<!-- outlier-cases:start -->`` and
``<!-- outlier-cases:end -->`` lines with this run's table and the machine, load and commit it was measured on.
``tests/precision/test_outlier_cases.py`` runs the script on two of the cases in CI's slow lane.

Each case rescales the bundled demo model's trained weights so that it computes the same function
(up to float rounding) while one or more activations get outlier channels, the way trained models
show them and the way a per-tensor INT8 scale cannot absorb:

* ``shortcut``: two channels of layer2's downsample branch shifted by +100, its main branch by -100
  (the residual Add's sum is unchanged; its shortcut input, a Q/DQ site, carries the outliers);
* ``classifier``: four channels of the last block's output (both branches) x300, the classifier's
  weights that read them /300 (ReLU and the average pool commute with a positive factor);
* ``shortcut x300`` / ``classifier x300`` (issue 26): eight channels x300 of layer2's output (read by layer3's
  conv1 and downsample) or of the classifier's input: past float16's range, so the FP16-range rule keeps
  nodes in FP32 beside the Q/DQ pairs (it renames the tensors between them);
* ``two layers`` / ``three layers``: the input of layer1's conv3 (4 channels x400) and layer2's
  grouped conv2 (3 channels x300), then also layer3's conv2 (2 channels x1000);
* ``spread``: a quarter of the channels read by every conv2 and conv3 scaled x10-30 (seeded).

Then ``resnext-deploy pipeline`` with default precision options on ``--calib-dir`` (the demo's
calibration images; the build's check takes its held-out tenth) and ``--data`` (the demo's 500
validation images, which neither calibration nor the build's check sees). Printed per case: FP32
(PyTorch, verify's reference) and INT8 accuracy on that validation set (ONNX Runtime, and OpenVINO (OV)
where installed), verify's verdict on the INT8 rows, the Q/DQ sites kept out of INT8, the remedies
the file uses, and the time. Bench runs briefly (one batch size): the point is accuracy, not speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

State = dict[str, Any]  # a state dict of torch tensors
GROUPS = 8  # the demo's cardinality: conv2 has 8 groups


def scale_bn(state: State, bn: str, factor: float, channel: int) -> None:
    """Channel ``channel`` of BatchNorm ``bn``'s output ``factor`` times larger (its scale and shift both)."""
    state[f"{bn}.weight"][channel] *= factor
    state[f"{bn}.bias"][channel] *= factor


def plant(state: State, block: str, bn: str, conv: str, channels: list[int], factor: float) -> None:
    """Channels of ``block.bn`` ``factor`` times larger, the weights of ``block.conv`` reading them as much smaller."""
    weight = state[f"{block}.{conv}.weight"]
    for channel in channels:
        scale_bn(state, f"{block}.{bn}", factor, channel)
        if conv == "conv2":  # grouped: only its own group's output channels read the input channel
            per_group, outputs = weight.shape[1], weight.shape[0] // GROUPS
            group = channel // per_group
            weight[group * outputs : (group + 1) * outputs, channel % per_group] /= factor
        else:
            weight[:, channel] /= factor


def shortcut(state: State) -> None:
    for channel in (3, 11):
        state["layer2.0.downsample.1.bias"][channel] += 100.0
        state["layer2.0.bn3.bias"][channel] -= 100.0


def block_output(state: State, block: str, readers: tuple[str, ...], channels: tuple[int, ...], factor: float) -> None:
    """Channels of ``block``'s output (both branches, so the residual Add and its ReLU too) ``factor`` times
    larger, the weights of ``readers`` that read them as much smaller (ReLU and pooling commute with it)."""
    for channel in channels:
        scale_bn(state, f"{block}.bn3", factor, channel)
        scale_bn(state, f"{block}.downsample.1", factor, channel)
        for reader in readers:
            state[f"{reader}.weight"][:, channel] /= factor


def classifier(state: State) -> None:
    block_output(state, "layer3.0", ("fc",), (2, 17, 33, 50), 300.0)


# Eight channels x300 (issue 26): activations past float16's range (512), so the FP16-range rule keeps
# nodes in FP32 beside the Q/DQ pairs, at a shortcut branch (layer2's output, read by layer3's conv1 and
# downsample) and at the classifier's input.
def shortcut_x300(state: State) -> None:
    readers = ("layer3.0.conv1", "layer3.0.downsample.0")
    block_output(state, "layer2.0", readers, (3, 11, 20, 41, 60, 77, 90, 120), 300.0)


def classifier_x300(state: State) -> None:
    block_output(state, "layer3.0", ("fc",), (2, 17, 33, 50, 101, 150, 200, 250), 300.0)


LAYERS = [
    ("layer1.0", "bn2", "conv3", [1, 9, 20, 30], 400.0),
    ("layer2.0", "bn1", "conv2", [3, 17, 40], 300.0),
    ("layer3.0", "bn1", "conv2", [5, 77], 1000.0),
]


def two_layers(state: State) -> None:
    for layer in LAYERS[:2]:
        plant(state, *layer)


def three_layers(state: State) -> None:
    for layer in LAYERS:
        plant(state, *layer)


def spread(state: State) -> None:
    rng = np.random.default_rng(0)
    for block in ("layer1.0", "layer2.0", "layer3.0"):
        for bn, conv in (("bn1", "conv2"), ("bn2", "conv3")):
            width = len(state[f"{block}.{bn}.weight"])
            chosen = rng.choice(width, width // 4, replace=False)
            for channel in chosen:
                plant(state, block, bn, conv, [int(channel)], float(rng.uniform(10.0, 30.0)))


CASES: dict[str, Callable[[State], None]] = {
    "shortcut": shortcut,
    "classifier": classifier,
    "shortcut x300": shortcut_x300,
    "classifier x300": classifier_x300,
    "two layers": two_layers,
    "three layers": three_layers,
    "spread": spread,
}


def planted_checkpoint(case: str, path: Path) -> Path:
    """The demo's weights with ``case`` planted, saved as a safetensors checkpoint at ``path``."""
    from safetensors.torch import load_file, save_file

    from resnext_deploy.demo import DEMO_WEIGHTS

    state = load_file(str(DEMO_WEIGHTS))
    CASES[case](state)
    save_file(state, str(path))
    return path


def run_case(case: str, directory: Path) -> dict[str, Any]:
    """``pipeline`` with default precision options on the planted model; what the table shows."""
    from resnext_deploy.artifacts import Manifest
    from resnext_deploy.cli import main
    from resnext_deploy.demo import DEMO_CALIB, DEMO_VAL

    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = planted_checkpoint(case, directory / "planted.safetensors")
    args = ["pipeline", "--dir", str(directory / "art"), "--arch", "resnext11_digits", "--checkpoint", str(checkpoint)]
    args += ["--calib-dir", str(DEMO_CALIB), "--data", str(DEMO_VAL)]
    args += ["--batch-sizes", "1", "--duration", "0.05", "--budget", "20"]
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # pipeline's tables are this script's log; the table is its result
        code = main(args)
    seconds = time.perf_counter() - started
    verify = json.loads((directory / "art" / "verify.json").read_text())
    int8 = {r["backend"]: r for r in verify["results"] if r["precision"] == "int8"}
    reference = next((r["reference_accuracy"] for r in verify["results"] if r.get("reference_accuracy")), None)
    entry = Manifest(directory / "art").entry("model.int8.onnx")
    search = (entry.search if entry else None) or {}
    return {
        "case": case,
        "exit": code,
        "fp32": reference,  # PyTorch FP32, verify's reference
        "int8 onnxruntime": int8.get("onnxruntime", {}).get("accuracy"),
        "int8 openvino": int8.get("openvino", {}).get("accuracy"),
        "verify": "pass" if int8 and all(r["passed"] for r in int8.values()) else "FAIL",
        "kept": search.get("kept", []),
        "remedies": list(entry.remedies) if entry else ["(no INT8 file)"],
        "seconds": round(seconds, 1),
        "search seconds": search.get("seconds"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    def shown(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{value:.1f}{unit}"

    lines = [
        "| case | FP32 | INT8 (ORT) | INT8 (OV) | verify | kept out of INT8 | remedies | INT8 search | pipeline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        kept = ", ".join(f"`{name}`" for name in row["kept"]) or "none"
        lines.append(
            f"| {row['case']} | {shown(row['fp32'], '%')} | {shown(row['int8 onnxruntime'], '%')} | "
            f"{shown(row['int8 openvino'], '%')} | {row['verify']} (exit {row['exit']}) | {kept} | "
            f"{', '.join(row['remedies']) or 'none'} | {shown(row['search seconds'], ' s')} | {row['seconds']} s |"
        )
    return "\n".join(lines)


START, END = "<!-- outlier-cases:start -->", "<!-- outlier-cases:end -->"


def provenance(commit: str) -> str:
    """The machine, its load at the end, and the commit the table was measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown CPU",
    )

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    where = f"{cpu} ({os.cpu_count()} CPUs, load average {load} at the end)"
    return f"Measured by `scripts/int8_outlier_cases.py` on {where} at commit {commit}."


def current_commit() -> str:
    """The checkout's commit when the run starts (the code measured), marked when tracked files differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def write_readme(path: Path, text: str) -> None:
    """Replace what stands between the README's markers with ``text``."""
    readme = path.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"{path} has no {START} ... {END} lines to replace")
    head, rest = readme.split(START, 1)
    path.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="working directory, one folder per case")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of: {', '.join(CASES)}")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--readme", type=Path, help="write the table and its provenance into this README's markers")
    args = parser.parse_args(argv)
    cases = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in cases if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from: {', '.join(CASES)}")
    commit = current_commit()
    rows = [run_case(case, args.dir / case.replace(" ", "-")) for case in cases]
    text = f"{table(rows)}\n\n{provenance(commit)}"
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.readme:
        write_readme(args.readme, text)
    return 0 if all(row["verify"] == "pass" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
