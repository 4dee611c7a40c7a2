"""bench's workers seen from inside and from outside: library-default threading, their own memory, what OpenVINO
ran, and a bench that survives a worker that is stopped or killed mid-measure."""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_dir

from resnext_deploy.artifacts import Manifest
from resnext_deploy.backends import onnxruntime as ort_backend
from resnext_deploy.backends.base import ArtifactSet, Backend, Candidate, Runner
from resnext_deploy.backends.openvino import OpenVINORunner, precision_summary
from resnext_deploy.backends.registry import register, unregister
from resnext_deploy.cli import main
from resnext_deploy.environment import usable_cpus
from resnext_deploy.errors import ExitCode
from resnext_deploy.evaluate import worker as worker_module
from resnext_deploy.evaluate.bench import reply_margin
from resnext_deploy.evaluate.machine import process_cpu_ns, quiet_after
from resnext_deploy.evaluate.settings import BenchSettings
from resnext_deploy.evaluate.worker import RunnerProcess, WorkerSpec

SHORT = ["--warmup-ms", "10", "--min-iterations", "2", "--batch-sizes", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def art(low_precision_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_dir(low_precision_template, tmp_path_factory.mktemp("workers") / "tiny")


def _worker(directory: Path, backend: str, artifact: str | None, passive: bool) -> RunnerProcess:
    return RunnerProcess(WorkerSpec(str(directory), backend, "fp32", "cpu", artifact, None, 32, passive=passive))


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("passive", [False, True])
def test_a_worker_runs_its_library_with_the_defaults_unless_passive_pools(
    art: Path, passive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside real workers: no OMP_WAIT_POLICY and ONNX Runtime spinning by default; both set when passive."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    fresh = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True
    )
    torch_default = int(fresh.stdout)
    workers = [_worker(art, "onnxruntime", "model.onnx", passive), _worker(art, "torch", None, passive)]
    try:
        infos = []
        for worker in workers:
            opened = worker.open(timeout_s=120)
            worker.run(1, 0.01, 1, timeout_s=60)
            infos.append((opened, worker.describe(timeout_s=30)))
    finally:
        for worker in workers:
            worker.kill()
    (ort_opened, ort_info), (torch_opened, torch_info) = infos
    for info in (ort_info, torch_info):
        assert info.environment.get("OMP_WAIT_POLICY") == ("PASSIVE" if passive else None)
        assert info.usable_cpus == usable_cpus()
    # read back from the live session's config entries, not from what was asked for
    assert ort_info.runner_options["allow_spinning"] is (not passive)
    assert ort_info.runner_options["intra_op_threads"] == (ort_backend.default_threads() or "default")
    assert torch_info.runner_options["threads"] == torch_default <= usable_cpus()  # torch's own default


def test_onnxruntime_sessions_cap_the_default_threads_at_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime sizes its pool by the machine's cores, ignoring the affinity mask: the options cap it."""
    import resnext_deploy.environment as environment

    monkeypatch.setattr(ort_backend, "physical_cores", lambda: 4)
    monkeypatch.setattr(environment, "usable_cpus", lambda: 1)
    capped = ort_backend.session_options()
    assert capped.intra_op_num_threads == 1 and ort_backend.spinning_of(capped)
    monkeypatch.setattr(environment, "usable_cpus", lambda: 4)
    assert ort_backend.session_options().intra_op_num_threads == 0  # ONNX Runtime's own default
    assert ort_backend.session_options(3).intra_op_num_threads == 3
    assert not ort_backend.spinning_of(ort_backend.session_options(allow_spinning=False))


def test_quiet_after_measures_how_long_a_process_keeps_a_cpu_busy() -> None:
    """What the wait after each slice rests on: a process that spins for 0.4 s of CPU, then sleeps, is busy until
    it has had that time (however busy the machine), and quiet at once when asleep."""
    code = "import time\nwhile time.process_time() < 0.4: pass\ntime.sleep(30)"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        while (process_cpu_ns(spinner.pid) or 0) < 0.1e9:  # spinning: past the interpreter's start-up
            time.sleep(0.005)
        quiet = quiet_after(spinner.pid, 20.0)
        assert quiet is not None and 0.2 < quiet < 20.0  # the rest of its 0.4 s of CPU, at least, in wall time
        assert process_cpu_ns(spinner.pid) >= 0.4e9  # it had spun all its time when called quiet
        time.sleep(0.2)
        assert quiet_after(spinner.pid, 1.0) < 0.001  # asleep: quiet at once
    finally:
        spinner.kill()
        spinner.wait()
    assert quiet_after(spinner.pid, 1.0) is None  # gone: nothing to read


class BallastRunner(Runner):
    """A test-only runner that holds ``megabytes`` of touched memory while open: a known size to measure."""

    backend = "ballast"

    def __init__(self, megabytes: int) -> None:
        self.ballast = np.ones(megabytes * 2**20 // 8, dtype=np.float64)  # every page written
        self.options = {"megabytes": megabytes}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 10), dtype=np.float32) + float(self.ballast[0])

    def close(self) -> None:
        self.ballast = None


class BallastBackend(Backend):
    name = "ballast"
    description = "test-only: a runner that allocates a known size"

    def candidates(self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None) -> list[Candidate]:
        return [Candidate(self.name, "fp32", "cpu", None, functools.partial(BallastRunner, 200))]


@pytest.fixture
def ballast() -> Iterator[BallastBackend]:
    backend = register(BallastBackend())
    yield backend
    unregister(backend.name)


class SlowOpenRunner(BallastRunner):
    """A test-only runner that takes ``seconds`` to open, as OpenVINO compiling a large INT8 graph on a busy CPU."""

    def __init__(self, seconds: float) -> None:
        time.sleep(seconds)
        super().__init__(1)


class SlowOpenBackend(BallastBackend):
    name = "slowopen"
    description = "test-only: a runner that opens slowly"

    def candidates(self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None) -> list[Candidate]:
        return [Candidate(self.name, "fp32", "cpu", None, functools.partial(SlowOpenRunner, 5.0))]


@pytest.mark.slow  # bench's worker processes
def test_a_runner_slow_to_open_is_measured_not_failed(art: Path, tmp_path: Path) -> None:
    """Opening is not timed: a runner that opens after the budget's margin (2 s here) is waited for, not killed."""
    backend = register(SlowOpenBackend())
    try:
        directory = copy_dir(art, tmp_path / "d")
        args = ["bench", "--dir", str(directory), "--backends", "slowopen", "--duration", "0.05", "--budget", "1"]
        assert main([*args, *SHORT]) == ExitCode.OK
        data = json.loads((directory / "bench.json").read_text())
        assert data["failed"] == [] and [row["backend"] for row in data["results"]] == ["slowopen"]
    finally:
        unregister(backend.name)


@pytest.mark.slow  # bench's worker processes
def test_peak_memory_is_the_workers_own_not_the_parents(art: Path, tmp_path: Path, ballast: BallastBackend) -> None:
    """The parent's high-water mark is pushed to 600 MB first; a worker that allocates 200 MB reports ~200 MB."""
    big = np.ones(600 * 2**20 // 8)  # touched: the parent's ru_maxrss is now over 600 MB
    del big
    parent_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert parent_peak_mb > 600
    directory = copy_dir(art, tmp_path / "d")
    args = ["bench", "--dir", str(directory), "--backends", "ballast", "--duration", "0.05", "--budget", "60"]
    assert main([*args, *SHORT]) == ExitCode.OK
    [row] = json.loads((directory / "bench.json").read_text())["results"]
    assert row["runner_rss_mb"] == pytest.approx(200, abs=30)  # what the runner allocated, and no more
    assert row["peak_rss_mb"] < parent_peak_mb - 200  # not the parent's mark


def test_openvino_reports_what_it_ran_per_layer_type(art: Path) -> None:
    int8 = OpenVINORunner(art / "model.int8.onnx", "int8")
    fp32 = OpenVINORunner(art / "model.onnx", "fp32")
    try:
        layers = int8.options["runtime_precision"]
        # every convolution in 8 bits: i8 on VNNI/AMX CPUs, u8 (activations shifted by 128) on AVX2-only ones
        [(kind, count)] = layers["Convolution"].items()
        assert kind in ("i8", "u8") and count == sum(layers["Convolution"].values())
        assert int8.compute_precision.startswith(f"{kind} Convolution") and "rest:" in int8.compute_precision
        assert fp32.compute_precision == "f32"
    finally:
        int8.close()
        fp32.close()


def test_the_precision_summary_names_the_main_layers_and_sums_the_rest() -> None:
    layers = {"Convolution": {"i8": 52, "f32": 1}, "FullyConnected": {"f32": 1}, "Eltwise": {"f32": 3, "i8": 9}}
    assert (
        precision_summary(layers)
        == "i8 Convolution 52/53, f32 Convolution 1/53, f32 FullyConnected 1/1; rest: i8 9, f32 3"
    )
    assert precision_summary({"Convolution": {"f32": 3}, "Pooling": {"f32": 1}}) == "f32"
    assert precision_summary({}) is None


@pytest.mark.slow  # bench's worker processes
@pytest.mark.parametrize("signum", [signal.SIGSTOP, signal.SIGKILL], ids=["SIGSTOP", "SIGKILL"])
def test_bench_survives_a_worker_stopped_or_killed_mid_measure(
    art: Path,
    tmp_path: Path,
    signum: signal.Signals,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The ONNX Runtime worker (found from the parent's side) is signalled during its third measured slice: bench
    ends within its budget plus the reply margin, records the row as failed with the reason, keeps torch's row
    and exits 1."""
    directory = copy_dir(art, tmp_path / "d")
    budget = 25.0
    signalled: list[int] = []
    original = RunnerProcess.run

    def run(self: RunnerProcess, batch_size: int, seconds: float, min_calls: int, timeout_s: float | None = None):
        if self.spec.backend == "onnxruntime":
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 4 and not signalled:  # warm-up, then the third slice of the measurement
                signalled.append(self.pid)
                threading.Timer(seconds / 2, os.kill, (self.pid, signum)).start()
        return original(self, batch_size, seconds, min_calls, timeout_s)

    monkeypatch.setattr(worker_module.RunnerProcess, "run", run)
    args = ["bench", "--dir", str(directory), "--backends", "torch,onnxruntime", "--precisions", "fp32"]
    args += ["--duration", "2", "--budget", str(budget), *SHORT]
    start = time.monotonic()
    code = main(args)
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert signalled and code == ExitCode.VERIFY_FAILED
    assert elapsed <= budget + reply_margin(BenchSettings(budget_s=budget))
    data = json.loads((directory / "bench.json").read_text())
    assert [r["backend"] for r in data["results"]] == ["torch"]  # the row measured beside it is kept
    [failed] = data["failed"]
    assert (failed["backend"], failed["batch_size"], failed["stage"]) == ("onnxruntime", 1, "measure")
    assert failed["rounds_measured"] == 2
    if signum == signal.SIGKILL:
        assert failed["signal"] == "SIGKILL" and "killed by SIGKILL" in failed["reason"]
    else:
        assert failed["timed_out"] and "stopped" in failed["reason"]
    with pytest.raises(ProcessLookupError):  # the worker was ended, not left stopped
        os.kill(signalled[0], 0)
    assert "FAILED onnxruntime-cpu:fp32 batch 1" in err
    assert err.strip().splitlines()[-1].startswith("error: bench: 1 row(s) failed")
    assert "Failed (not measured)" in (directory / "bench.md").read_text()
    # The failure is recorded in the manifest: report derives a failed status from the directory.
    [step] = [step for step in Manifest(directory).skipped if step.step == "bench"]
    assert step.failed and "1 row(s) failed" in step.reason
    assert main(["report", "--dir", str(directory)]) == ExitCode.VERIFY_FAILED
