#!/usr/bin/env bash
# One prepared check for a Linux machine with an NVIDIA GPU, its driver, and access to PyPI (docs/tensorrt.md).
#
#   scripts/gpu_check.sh [OUT]        (default OUT: artifacts/gpu-check)
#
# From a clean checkout: a venv with a CUDA build of torch and the TensorRT extra that matches it
# (.venv-gpu; PYTHON=/path/to/python uses an existing environment instead), then `pytest -m gpu`, the
# demo's whole pipeline (FP32/FP16/INT8 engines, verify, bench with CUDA-event device time), and ResNeXt-50
# (random weights: timing and engine/ONNX agreement, not accuracy) exported, built at FP32, FP16 and INT8,
# verified and benched. Every step's log is OUT/<step>.log; OUT/summary.md collects the exit codes, times,
# the environment and the tables. A failing step is recorded and the next one runs; the script exits 1
# when any step failed. Planned to finish within 8 minutes on one H100; each step has a time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-artifacts/gpu-check}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
FAILED=0
START=$(date +%s)

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it, log it, add a row to the summary
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name: $*" >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || FAILED=1
  [ "$rc" -eq 124 ] && echo "(stopped after its limit of $limit s)" >>"$OUT/$name.log"
  echo "| $name | $rc | $(($(date +%s) - t0)) s | \`$*\` |" >>"$SUMMARY"
  return 0
}

{
  echo "# resnext-deploy GPU check"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>/dev/null ||
    echo "nvidia-smi failed: no NVIDIA driver here?"
  echo '```'
  echo
  echo "| step | exit | time | command |"
  echo "| --- | --- | --- | --- |"
} >"$SUMMARY"

if [ -z "${PYTHON:-}" ]; then
  PYTHON=.venv-gpu/bin/python
  if [ ! -x "$PYTHON" ]; then
    # PyPI's Linux torch wheels are CUDA builds; the TensorRT extra must match their CUDA major.
    step install-torch 300 bash -c "python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q torch"
    CUDA_MAJOR=$("$PYTHON" -c "import torch; print((torch.version.cuda or '12').split('.')[0])" 2>/dev/null || echo 12)
    step install 300 "$PYTHON" -m pip install -q -e ".[dev,tensorrt-cu$CUDA_MAJOR]"
  fi
fi
BIN=$(dirname "$PYTHON")
RD="$BIN/resnext-deploy"

step info 60 "$RD" info
step pytest-gpu 240 "$PYTHON" -m pytest -m gpu -ra -q

DEMO="$OUT/demo"
step demo-pipeline 180 "$RD" pipeline --dir "$DEMO" --batch-sizes 1,32 --duration 1

R50="$OUT/resnext50"
CALIB="$OUT/r50-calib.npy"  # seeded N(0,1) 224x224 inputs: ResNeXt-50 here has random weights anyway
step r50-calibration-data 60 "$PYTHON" -c "import numpy as np; np.save('$CALIB', \
np.random.default_rng(0).standard_normal((96, 3, 224, 224), dtype=np.float32))"
step r50-export 120 "$RD" export --dir "$R50" --arch resnext50_32x4d
step r50-fp32 180 "$RD" build-trt --dir "$R50"
step r50-fp16 180 "$RD" build-trt --dir "$R50" --fp16 --calib-dir "$CALIB" --calib-count 64
step r50-int8 240 "$RD" build-trt --dir "$R50" --int8 --calib-dir "$CALIB" --calib-count 64
step r50-verify 180 "$RD" verify --dir "$R50" --count 32
step r50-bench 180 "$RD" bench --dir "$R50" --backends torch,tensorrt --batch-sizes 1,32 --duration 2

{
  echo
  echo "Total: $(($(date +%s) - START)) s. Logs: \`$OUT/<step>.log\`."
  for table in "$DEMO/report.md" "$R50/bench.md"; do
    if [ -f "$table" ]; then
      echo
      echo "## $table"
      echo
      cat "$table"
    fi
  done
  echo
  echo "## pytest -m gpu"
  echo
  echo '```'
  tail -n 25 "$OUT/pytest-gpu.log" 2>/dev/null
  echo '```'
} >>"$SUMMARY"
echo "wrote $SUMMARY" >&2
exit "$FAILED"
