"""One runner in its own process, driven by bench one time slice at a time.

The thread pools of torch (OpenMP), ONNX Runtime and OpenVINO (TBB) must not meet: a pool that
spins after its call takes the cores from the next runner. Each runner therefore lives in a spawned
process of its own; bench sends it "run batch B for S seconds" and gets the call times back, so
only one runner computes at any moment. A worker opens its runner only when told to, so load and
compile times are measured one at a time too.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import Backend, Runner
from ..errors import BackendUnavailableError, BadInputError, DeployError, one_line

NOISE_PROBE = "noise-probe"  # the backend name of the fixed workload that measures the machine's own noise
# Environment of every worker: OpenMP threads (torch) sleep as soon as a parallel region ends.
QUIET_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
REPLY_TIMEOUT_S = 900.0  # a worker that says nothing for this long is taken as hung
INPUT_SEED = 0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker opens: one candidate of an artifact directory, found again by its key in the worker.

    ``extra_backends`` are backends registered at run time in the parent (not built in); they are
    pickled to the worker and registered there, so a plug-in backend is measured like a built-in one.
    """

    directory: str
    backend: str
    precision: str
    device: str
    artifact: str | None
    threads: int | None
    image_size: int
    options: Mapping[str, Any] = field(default_factory=dict)
    extra_backends: tuple[Backend, ...] = ()
    quiet: bool = True


@dataclass(frozen=True)
class Opened:
    """What a worker reports once its runner is open."""

    load_s: float
    options: dict[str, Any]
    compute_precision: str | None
    rss_before_open_mb: float


@dataclass(frozen=True)
class SliceTimes:
    """The calls of one time slice: wall time of each call, and device time where the runner measures it."""

    times_ms: list[float]
    device_ms: list[float]


class WorkerError(DeployError):
    """The worker could not open or run its runner. ``kind``: unavailable, broken (the artifact), or died.

    Opening and warm-up failures become skip records; one during measurement ends bench (exit 70).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables while a worker is spawned (it copies them), then put them back."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RunnerProcess:
    """The parent's handle on one worker: start, open, run slices, close. Every reply is checked."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, spec), daemon=True)
        with _environment(QUIET_ENV if spec.quiet else {}):
            self._process.start()
        child.close()

    @property
    def pid(self) -> int:
        return int(self._process.pid or 0)

    def _ask(self, *message: Any) -> Any:
        self._conn.send(message)
        return self._reply()

    def _reply(self) -> Any:
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not self._conn.poll(1.0):
            if not self._process.is_alive():
                raise WorkerError("died", f"the runner process died (exit code {self._process.exitcode})")
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerError("died", f"the runner process did not answer in {REPLY_TIMEOUT_S:g} s")
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            raise WorkerError("died", f"the runner process died (exit code {self._process.exitcode})") from None
        if reply[0] == "error":
            raise WorkerError(reply[1], reply[2])
        return reply[1]

    def open(self) -> Opened:
        """Open the runner (the worker has imported its libraries by then); time only the opening."""
        self._reply()  # imports done
        return self._ask("open")  # type: ignore[no-any-return]

    def run(self, batch_size: int, seconds: float, min_calls: int) -> SliceTimes:
        """Call the runner on a batch of ``batch_size`` until ``seconds`` passed and ``min_calls`` calls were made."""
        return self._ask("run", batch_size, seconds, min_calls)  # type: ignore[no-any-return]

    def close(self) -> float | None:
        """Close the runner and end the worker; its peak resident memory in MB, or None if it had died."""
        try:
            peak = self._ask("close")
        except (WorkerError, OSError, BrokenPipeError):
            peak = None
        self._process.join(10)
        self.kill()
        return peak  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()


def _rss_mb() -> float:
    """Resident memory of this process now, from /proc (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _serve(conn: Any, spec: WorkerSpec) -> None:
    """The worker's loop: import, wait for "open", then answer "run" and "close" until closed."""
    try:
        from ..backends.registry import get_backend, register

        for backend in spec.extra_backends:
            register(backend)
        if spec.backend != NOISE_PROBE:
            get_backend(spec.backend).unavailable()  # imports what the backend's probe imports
        conn.send(("ready", None))
        conn.recv()
        rss = _rss_mb()
        start = time.perf_counter()
        runner = _open(spec)
        opened = Opened(time.perf_counter() - start, dict(runner.options or {}), runner.compute_precision, rss)
    except BackendUnavailableError as exc:
        conn.send(("error", "unavailable", str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - whatever stops a runner from opening is reported as its reason
        kind = "unavailable" if isinstance(exc, BadInputError) and str(spec.artifact).endswith(".engine") else "broken"
        conn.send(("error", kind, one_line(exc)))
        return
    conn.send(("opened", opened))
    inputs: dict[int, np.ndarray] = {}
    size = spec.image_size
    while True:
        message = conn.recv()
        if message[0] == "close":
            runner.close()
            conn.send(("closed", _peak_rss_mb()))
            return
        _, batch_size, seconds, min_calls = message
        if batch_size not in inputs:
            rng = np.random.default_rng(INPUT_SEED)
            inputs[batch_size] = rng.standard_normal((batch_size, 3, size, size), dtype=np.float32)
        try:
            conn.send(("times", _timed_calls(runner, inputs[batch_size], seconds, min_calls)))
        except Exception as exc:  # noqa: BLE001 - a runner that fails on this batch is reported, never timed
            conn.send(("error", "broken", one_line(exc)))


def _timed_calls(runner: Runner, batch: np.ndarray, seconds: float, min_calls: int) -> SliceTimes:
    times, device = [], []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runner(batch)
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        if runner.last_device_ms is not None:
            device.append(runner.last_device_ms)
        if len(times) >= min_calls and t1 - start >= seconds:
            return SliceTimes(times, device)


def _open(spec: WorkerSpec) -> Runner:
    if spec.backend == NOISE_PROBE:
        return NoiseProbe(spec.threads, allow_spinning=not spec.quiet)
    from ..backends.registry import discover_runners

    found = discover_runners(
        spec.directory, [spec.backend], [spec.precision], spec.threads, (), {spec.backend: spec.options}
    )
    for candidate in found.candidates:
        if (candidate.key, candidate.artifact) == ((spec.backend, spec.precision, spec.device), spec.artifact):
            if candidate.open is None:
                raise BackendUnavailableError(candidate.skipped or "cannot run here")
            return candidate.open()
    raise BadInputError(f"{spec.backend}-{spec.device}:{spec.precision} is no longer offered by {spec.directory}")


class NoiseProbe(Runner):
    """A fixed small workload (four 3x3 convolutions in ONNX Runtime, made in memory) that measures the machine.

    It runs with the runners' thread settings, so its spread across rounds is the noise the machine
    itself adds to any row: timer, scheduler and the hypervisor, with nothing of the model in it.
    """

    backend = NOISE_PROBE

    def __init__(self, threads: int | None, allow_spinning: bool) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        from ..backends.onnxruntime import session_options

        rng = np.random.default_rng(0)
        channels, layers = 32, 4
        nodes, weights = [], []
        name = "x"
        for i in range(layers):
            weight = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
            weights.append(numpy_helper.from_array(weight, f"w{i}"))
            nodes.append(helper.make_node("Conv", [name, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
            name = f"r{i}"
        shape = [1, channels, 28, 28]
        graph = helper.make_graph(
            nodes,
            "noise_probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
            weights,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = session_options(threads, allow_spinning)
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.input = rng.standard_normal(shape).astype(np.float32)
        self.options = {"workload": f"{layers} conv3x3 {channels}ch 28x28 in ONNX Runtime", "threads": threads}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {"x": self.input})[0])

    def close(self) -> None:
        self.session = None
