"""A backend is one module and one registry line, its knob included: this test-only one shows it.

``shift`` is ONNX Runtime under another name with one knob, ``--shift-by``, added to every logit, so
the knob is observable: verify fails with it and passes without it, bench records it in the row, and
pipeline and triton-repo pick the backend up; nothing outside this module is edited for it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resnext_deploy.artifacts import ONNX_FILES
from resnext_deploy.backends.base import ArtifactSet, Backend, BackendOption, Candidate, Runner, TritonModel
from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner
from resnext_deploy.backends.registry import discover_runners, register, unregister
from resnext_deploy.cli import main
from resnext_deploy.demo import DEMO_CALIB
from resnext_deploy.errors import BadInputError, ExitCode

QUICK_BENCH = ["--duration", "0.05", "--warmup-ms", "0", "--min-iterations", "2", "--batch-sizes", "1"]


class ShiftRunner(Runner):
    backend = "shift"

    def __init__(self, path: Path, shift: float) -> None:
        self.inner = OnnxRuntimeRunner(path)
        self.artifact, self.shift = path.name, shift

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.inner(batch) + np.float32(self.shift)

    def close(self) -> None:
        self.inner.close()


class ShiftBackend(Backend):
    name = "shift"
    description = "test-only: ONNX Runtime with every logit shifted"
    options = (BackendOption("shift", 0.0, "Added to every logit.", flag="--shift-by"),)
    int8_note = {"cpu": "shift runs no int8 kernel"}

    def candidates(
        self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None, shift: float
    ) -> list[Candidate]:
        name = ONNX_FILES["fp32"]
        opener = functools.partial(ShiftRunner, artifacts.path(name), shift)
        return [Candidate(self.name, "fp32", "cpu", name, opener)] if "fp32" in precisions else []

    def triton_models(
        self, directory: Path, options: Mapping[str, Any], usable: Callable[[str], bool]
    ) -> list[TritonModel]:
        name = ONNX_FILES["fp32"]
        shift = {"SHIFT": str(options["shift"])}
        return [TritonModel(name, "fp32", self.name, "onnxruntime_onnx", parameters=shift)] if usable(name) else []


BACKEND = ShiftBackend()


@pytest.fixture
def shift() -> Iterator[ShiftBackend]:
    register(BACKEND)
    yield BACKEND
    unregister(BACKEND.name)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [row for row in json.loads(path.read_text())["results"] if row["backend"] == "shift"]


def test_the_knob_is_checked_and_reaches_the_candidates(tiny_dir: Path, shift: ShiftBackend) -> None:
    [candidate] = discover_runners(tiny_dir, ["shift"], options={"shift": {"shift": 2}}).candidates
    assert candidate.options == {"shift": 2.0}
    with candidate.open() as runner:  # type: ignore[misc]
        assert isinstance(runner, ShiftRunner) and runner.shift == 2.0
    with pytest.raises(BadInputError, match="--shift-by takes a float"):
        discover_runners(tiny_dir, ["shift"], options={"shift": {"shift": "far"}})
    with pytest.raises(BadInputError, match="has no option scale"):
        discover_runners(tiny_dir, ["shift"], options={"shift": {"scale": 1.0}})


def test_the_knob_is_a_flag_of_verify(tiny_dir: Path, shift: ShiftBackend) -> None:
    base = ["--dir", str(tiny_dir), "--backends", "shift"]
    assert main(["verify", *base, "--count", "4"]) == ExitCode.OK
    assert main(["verify", *base, "--count", "4", "--shift-by", "3"]) == ExitCode.VERIFY_FAILED
    [row] = _rows(tiny_dir / "verify.json")
    assert not row["passed"] and row["max_abs"] == pytest.approx(3.0, abs=1e-4)


@pytest.mark.slow  # bench opens each runner in a process of its own
def test_the_knob_is_a_flag_of_bench(tiny_dir: Path, shift: ShiftBackend, capsys) -> None:
    assert main(["bench", "--dir", str(tiny_dir), "--backends", "torch,shift", "--shift-by", "0.5", *QUICK_BENCH]) == 0
    [row] = _rows(tiny_dir / "bench.json")
    assert row["options"]["shift"] == 0.5 and row["median_ms"] > 0
    assert json.loads((tiny_dir / "bench.json").read_text())["settings"]["backend_options"]["shift"] == {"shift": 0.5}
    assert main(["bench", "--dir", str(tiny_dir), "--shift-by", "far"]) == ExitCode.USAGE
    assert "--shift-by" in capsys.readouterr().err


@pytest.mark.slow  # a pipeline: export, verify, bench in child processes
def test_pipeline_builds_verifies_and_benches_with_the_knob(tmp_path: Path, shift: ShiftBackend) -> None:
    directory = tmp_path / "run"
    args = ["--arch", "resnext_tiny", "--calib-dir", str(DEMO_CALIB), "--calib-count", "32", "--count", "32"]
    quick = ["--backends", "torch,shift", "--precisions", "fp32", "--no-search", *QUICK_BENCH]
    assert main(["pipeline", "--dir", str(directory), *args, *quick, "--shift-by", "4"]) == ExitCode.VERIFY_FAILED
    [verified] = _rows(directory / "verify.json")
    assert not verified["passed"] and verified["max_abs"] == pytest.approx(4.0, abs=1e-4)
    [benched] = _rows(directory / "bench.json")
    assert benched["options"]["shift"] == 4.0


def test_triton_repo_writes_the_backends_models(tiny_dir: Path, tmp_path: Path, shift: ShiftBackend) -> None:
    out = tmp_path / "repo"
    assert main(["triton-repo", "--dir", str(tiny_dir), "--out", str(out), "--shift-by", "1.5"]) == ExitCode.OK
    config = (out / "resnext_tiny_shift_fp32" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and '"SHIFT"' in config and '"1.5"' in config
    assert main(["triton-repo", "--dir", str(tiny_dir), "--out", str(tmp_path / "ov"), "--ov-hint", "throughput"]) == 0
    assert '"THROUGHPUT"' in (tmp_path / "ov" / "resnext_tiny_openvino_fp32" / "config.pbtxt").read_text()


def test_an_unregistered_backends_flag_is_gone(tiny_dir: Path, capsys) -> None:
    assert main(["verify", "--dir", str(tiny_dir), "--shift-by", "1"]) == ExitCode.USAGE
    assert "--shift-by" in capsys.readouterr().err
