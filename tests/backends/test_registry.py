"""The backend registry: a backend registered at run time shows up in verify and bench with no other change."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from resnext_deploy.artifacts import ONNX_FILES
from resnext_deploy.backends.base import ArtifactSet, Backend, Candidate, Runner
from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner
from resnext_deploy.backends.registry import (
    backend_names,
    check_build_options,
    discover_runners,
    register,
    unregister,
)
from resnext_deploy.backends.tensorrt import BuildOptions
from resnext_deploy.backends.torch import TorchRunner
from resnext_deploy.cli import main
from resnext_deploy.errors import ExitCode

QUICK_BENCH = ["--duration", "0.05", "--warmup-ms", "0", "--min-iterations", "2", "--batch-sizes", "1"]


class EchoRunner(Runner):
    """A test-only backend: ONNX Runtime under another name, so its numbers are real and its rows are ours."""

    backend = "echo"

    def __init__(self, path: Path, precision: str) -> None:
        self.inner = OnnxRuntimeRunner(path, precision)
        self.precision, self.artifact = precision, path.name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.inner(batch)

    def close(self) -> None:
        self.inner.close()


class EchoBackend(Backend):
    name = "echo"
    description = "test-only: ONNX Runtime under another name"

    def candidates(self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None) -> list[Candidate]:
        name = ONNX_FILES["fp32"]
        opener = functools.partial(EchoRunner, artifacts.path(name), "fp32")
        return [Candidate(self.name, "fp32", "cpu", name, opener)] if "fp32" in precisions else []


@pytest.fixture
def echo() -> Iterator[EchoBackend]:
    backend = register(EchoBackend())
    yield backend
    unregister(backend.name)


def test_a_registered_backend_is_discovered(tiny_dir: Path, echo: EchoBackend) -> None:
    assert "echo" in backend_names()
    found = discover_runners(tiny_dir)
    assert ("echo", "fp32", "cpu") in [c.key for c in found.runnable]


@pytest.mark.slow  # verify and bench
def test_a_registered_backend_shows_up_in_verify_and_bench(
    tiny_dir: Path, echo: EchoBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--dir", str(tiny_dir), "--count", "4"]) == ExitCode.OK
    [row] = [r for r in json.loads((tiny_dir / "verify.json").read_text())["results"] if r["backend"] == "echo"]
    assert row["passed"] and row["n"] == 4 and row["max_abs"] < 1e-5
    assert main(["bench", "--dir", str(tiny_dir), "--backends", "torch,echo", *QUICK_BENCH]) == ExitCode.OK
    rows = json.loads((tiny_dir / "bench.json").read_text())["results"]
    assert {r["backend"] for r in rows} == {"torch", "echo"}
    [echo_row] = [r for r in rows if r["backend"] == "echo"]
    assert echo_row["iterations"] >= 2 and echo_row["median_ms"] > 0 and echo_row["speedup_vs_reference"] > 0


def test_an_unregistered_backend_is_a_usage_error(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--dir", str(tiny_dir), "--backends", "echo", *QUICK_BENCH]) != ExitCode.OK
    assert "echo" in capsys.readouterr().err


def test_a_backend_asked_for_by_name_that_cannot_run_names_its_extra(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Missing(EchoBackend):
        name, extra = "missing", "missing-extra"

        def unavailable(self) -> str | None:
            return f"not installed; {self.install_hint()}"

    register(Missing())
    try:
        code = main(["bench", "--dir", str(tiny_dir), "--backends", "missing", *QUICK_BENCH])
    finally:
        unregister("missing")
    assert code == ExitCode.BACKEND_UNAVAILABLE
    assert "pip install 'resnext-deploy[missing-extra]'" in capsys.readouterr().err


def test_torch_runner_restores_the_thread_count_it_changed() -> None:
    import torch

    from resnext_deploy.models import create_model

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    runner = TorchRunner(create_model("resnext_tiny"), threads=wanted)
    assert torch.get_num_threads() == wanted
    runner.close()
    assert torch.get_num_threads() == before


def test_each_building_backend_gets_its_own_build_record() -> None:
    given = BuildOptions(max_batch=64)
    assert check_build_options({}) == {"tensorrt": BuildOptions()}  # the only backend that builds, at its defaults
    assert check_build_options({"tensorrt": given}) == {"tensorrt": given}
    with pytest.raises(TypeError, match="tensorrt builds with BuildOptions"):
        check_build_options({"tensorrt": {"max_batch": 64}})
    with pytest.raises(TypeError, match="openvino builds with no options"):
        check_build_options({"openvino": given})
