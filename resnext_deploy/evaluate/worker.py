"""One runner in its own process, driven by bench one time slice at a time.

The thread pools of torch (OpenMP), ONNX Runtime and OpenVINO (TBB) must not meet: a pool that
spins after its call takes the cores from the next runner. Each runner therefore lives in a spawned
process of its own; bench sends it "run batch B for S seconds" and gets the call times back, so
only one runner computes at any moment. A worker opens its runner only when told to, so load and
compile times are measured one at a time too.

A worker runs its library as users get it by default (OpenMP's and ONNX Runtime's wait policies
untouched); ``WorkerSpec.passive`` puts idle pools to sleep instead (``OMP_WAIT_POLICY=PASSIVE``, ONNX
Runtime's ``allow_spinning=0``). Its memory figures are its own (``VmHWM`` of its process, reset before
the runner opens), never the parent's high-water mark that ``ru_maxrss`` inherits across exec.

Every reply is awaited for a bounded time (:meth:`RunnerProcess.run`'s ``timeout_s``): a worker that
dies or stops answering raises :class:`WorkerError` with kind ``died`` or ``timeout`` and the reason
(the signal that ended it, or the wait), and a stopped worker is killed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import Backend, OptionValue, Runner, RunnerOptions
from ..errors import BackendUnavailableError, BadInputError, DeployError, one_line

NOISE_PROBE = "noise-probe"  # the backend name of the fixed workload that measures the machine's own noise
# Environment of a worker in the passive mode (--passive-pools): OpenMP threads (torch) sleep as soon as a
# parallel region ends. The default mode leaves the environment as the user has it.
QUIET_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
# The environment variables that shape a runtime's threads, reported by a worker as it sees them.
THREAD_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS")
SPINNING = "allow_spinning"  # the backend knob that lets idle thread pools spin (ONNX Runtime's)
REPLY_TIMEOUT_S = 900.0  # the default wait for one reply, where the caller gives none
POLL_S = 0.05  # how often a wait looks whether the worker is still alive
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
    options: Mapping[str, OptionValue] = field(default_factory=dict)  # its backend's knobs, as the candidate's
    extra_backends: tuple[Backend, ...] = ()
    passive: bool = False  # idle thread pools sleep (QUIET_ENV, no ONNX Runtime spinning); default: the libraries'


@dataclass(frozen=True)
class Opened:
    """What a worker reports once its runner is open."""

    load_s: float
    options: RunnerOptions  # what the runner says it runs with (backend-specific, recorded in the rows)
    compute_precision: str | None
    rss_before_open_mb: float
    peak_reset: bool = False  # VmHWM was reset before opening: the peak is the runner's process while it ran


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker sees from inside: its environment's thread variables, CPUs, memory and runner options.

    For tests and ``inspect``: the proof that a worker runs its library with the settings bench says.
    """

    pid: int
    environment: dict[str, str]
    usable_cpus: int
    rss_mb: float | None
    peak_rss_mb: float | None
    runner_options: RunnerOptions


@dataclass(frozen=True)
class SliceTimes:
    """The calls of one time slice: wall time of each call, and device time where the runner measures it."""

    times_ms: list[float]
    device_ms: list[float]


class WorkerError(DeployError):
    """The worker could not open or run its runner.

    ``kind``: unavailable, broken (the runner reported an error), died (the process ended: ``signal`` names
    the signal that killed it, if one did), or timeout (no reply in time; the worker was killed).
    Bench skips a runner that is unavailable or broken, and records one that died or timed out as failed.
    """

    def __init__(self, kind: str, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.signal = signal_name

    @property
    def lost(self) -> bool:
        """The worker is gone (died or was ended for not answering): nothing more can be asked of it."""
        return self.kind in ("died", "timeout")


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
        with _environment(QUIET_ENV if spec.passive else {}):
            self._process.start()
        child.close()

    @property
    def pid(self) -> int:
        return int(self._process.pid or 0)

    def _ask(self, *message: Any, timeout_s: float | None = None) -> Any:
        try:
            self._conn.send(message)
        except (OSError, ValueError):  # the pipe is closed: the worker is gone
            raise self._died() from None
        return self._reply(timeout_s)

    def _died(self) -> WorkerError:
        self._process.join(1)
        code = self._process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return WorkerError("died", f"the runner process was killed by {name}", name)
        return WorkerError("died", f"the runner process died (exit code {code})")

    def _reply(self, timeout_s: float | None = None) -> Any:
        """The worker's next reply, awaited at most ``timeout_s`` (``REPLY_TIMEOUT_S`` when None)."""
        wait_s = REPLY_TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        while not self._conn.poll(min(POLL_S, max(deadline - time.monotonic(), 0.0))):
            if not self._process.is_alive():
                raise self._died()
            if time.monotonic() >= deadline:
                state = _process_state(self.pid)
                self.kill()
                how = " (it was stopped: state T)" if state in ("T", "t") else ""
                raise WorkerError("timeout", f"the runner process did not answer in {wait_s:.1f} s{how}; ended it")
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if reply[0] == "error":
            raise WorkerError(reply[1], reply[2])
        return reply[1]

    def open(self, timeout_s: float | None = None) -> Opened:
        """Open the runner (the worker has imported its libraries by then); time only the opening.

        ``timeout_s`` bounds each of the two waits: the imports, then the opening.
        """
        self._reply(timeout_s)  # imports done
        return self._ask("open", timeout_s=timeout_s)

    def run(self, batch_size: int, seconds: float, min_calls: int, timeout_s: float | None = None) -> SliceTimes:
        """Call the runner on a batch of ``batch_size`` until ``seconds`` passed and ``min_calls`` calls were made.

        A reply not back within ``timeout_s`` ends the worker (:class:`WorkerError` ``timeout``).
        """
        return self._ask("run", batch_size, seconds, min_calls, timeout_s=timeout_s)

    def describe(self, timeout_s: float | None = None) -> WorkerInfo:
        """What the worker sees from inside (:class:`WorkerInfo`); after :meth:`open`."""
        return self._ask("describe", timeout_s=timeout_s)

    def close(self, timeout_s: float | None = 10.0) -> float | None:
        """Close the runner and end the worker; its own peak resident memory in MB, or None if unknown or dead."""
        try:
            peak = self._ask("close", timeout_s=timeout_s)
        except (WorkerError, OSError, BrokenPipeError):
            peak = None
        self._process.join(10)
        self.kill()
        return peak

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()


def _process_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T for stopped...), from /proc; None where it cannot be read."""
    try:
        text = open(f"/proc/{pid}/stat", encoding="ascii", errors="replace").read()  # noqa: SIM115
        return text[text.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        return None


def _status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB: this process's own, None where unreadable.

    ``VmHWM`` is the process's own high-water mark (reset by exec and by :func:`_reset_peak`), unlike
    ``ru_maxrss``, which a spawned worker inherits from its parent's peak across exec.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (``5`` to /proc/self/clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_mb() -> float:
    """Resident memory of this process now (0 where it cannot be read)."""
    return _status_mb("VmRSS") or 0.0


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
        reset = _reset_peak()
        rss = _rss_mb()
        start = time.perf_counter()
        runner = _open(spec)
        opened = Opened(time.perf_counter() - start, dict(runner.options or {}), runner.compute_precision, rss, reset)
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
            conn.send(("closed", _status_mb("VmHWM")))
            return
        if message[0] == "describe":
            conn.send(("info", _describe(runner)))
            continue
        _, batch_size, seconds, min_calls = message
        if batch_size not in inputs:
            rng = np.random.default_rng(INPUT_SEED)
            inputs[batch_size] = rng.standard_normal((batch_size, 3, size, size), dtype=np.float32)
        try:
            conn.send(("times", _timed_calls(runner, inputs[batch_size], seconds, min_calls)))
        except Exception as exc:  # noqa: BLE001 - a runner that fails on this batch is reported, never timed
            conn.send(("error", "broken", one_line(exc)))


def _describe(runner: Runner) -> WorkerInfo:
    from ..environment import usable_cpus

    environment = {name: os.environ[name] for name in THREAD_ENV if name in os.environ}
    return WorkerInfo(
        os.getpid(), environment, usable_cpus(), _status_mb("VmRSS"), _status_mb("VmHWM"), dict(runner.options or {})
    )


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
        return NoiseProbe(spec.threads, allow_spinning=not spec.passive)
    from ..backends.registry import discover_runners, get_backend

    options = dict(spec.options)
    if spec.passive and any(option.name == SPINNING for option in get_backend(spec.backend).options):
        options[SPINNING] = False  # idle pools sleep at once (ONNX Runtime's allow_spinning=0)
    found = discover_runners(
        spec.directory, [spec.backend], [spec.precision], spec.threads, (), {spec.backend: options}
    )
    for candidate in found.candidates:
        if (candidate.key, candidate.artifact) == ((spec.backend, spec.precision, spec.device), spec.artifact):
            if candidate.open is None:
                raise BackendUnavailableError(candidate.skipped or "cannot run here")
            return candidate.open()
    raise BadInputError(f"{spec.backend}-{spec.device}:{spec.precision} is no longer offered by {spec.directory}")


class NoiseProbe(Runner):
    """A fixed small workload (four 3x3 convolutions in ONNX Runtime, made in memory) that measures the machine.

    It runs with the runners' thread settings and wait policy, so its spread across rounds is the noise the machine
    itself adds to any row: timer, scheduler and the hypervisor, with nothing of the model in it.
    """

    backend = NOISE_PROBE

    def __init__(self, threads: int | None, allow_spinning: bool) -> None:
        from onnx import TensorProto, helper, numpy_helper

        from ..backends.onnxruntime import open_session

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
        self.session = open_session(model, threads=threads, allow_spinning=allow_spinning)
        self.input = rng.standard_normal(shape).astype(np.float32)
        self.options = {
            "workload": f"{layers} conv3x3 {channels}ch 28x28 in ONNX Runtime",
            "threads": threads,
            "allow_spinning": allow_spinning,
        }

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {"x": self.input})[0])

    def close(self) -> None:
        self.session = None
