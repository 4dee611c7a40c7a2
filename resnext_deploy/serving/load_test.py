"""A closed-loop load test of a running Triton server through ``tritonclient`` (HTTP or gRPC)."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import MANIFEST_NAME, ONNX_FILES, Manifest, now_iso, read_json, write_json, write_text
from ..errors import BackendUnavailableError, BadInputError, one_line
from ..evaluate.machine import DISTURBED_CPU, LoadMonitor, MachineRecord, machine_record
from ..schemas import SCHEMA_VERSION
from ..serde import RecordError, decode, encode
from .triton_repo import INSTALL_HINT, default_model_name, model_base_name

TRITON_BENCH_JSON = "bench_triton.json"
MAX_REQUEST_BYTES = 256 << 20  # one request's images; 32 images of 3x224x224 take 18 MiB


@dataclass
class LoadRow:
    """One concurrency level of a load test; latencies are per request, client side, in milliseconds."""

    url: str
    protocol: str
    model: str
    concurrency: int
    batch_size: int
    duration_s: float
    requests: int
    errors: int
    requests_per_s: float
    images_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    first_error: str | None = None
    warning: str | None = None


@dataclass(frozen=True)
class ServedFiles:
    """sha256 of every artifact in DIR, and which of its files each load-tested model name is (None: not DIR's)."""

    artifacts: dict[str, str]
    models: dict[str, str | None]


@dataclass(frozen=True)
class BackgroundLoad:
    """The share of the CPU other processes used just before the test, and the warning it gave (None: quiet)."""

    other_cpu: float | None = None
    warning: str | None = None


@dataclass
class TritonBenchRecord:
    """``DIR/bench_triton.json`` (``schemas/bench_triton.json``): the rows, and what DIR held when they ran.

    ``artifacts`` and ``models`` are :class:`ServedFiles`' fields, kept at the top of the file.
    """

    schema_version: int
    created: str
    machine: MachineRecord
    artifacts: dict[str, str]
    models: dict[str, str | None]
    rows: list[LoadRow]
    load: BackgroundLoad = field(default_factory=BackgroundLoad)

    @property
    def served(self) -> ServedFiles:
        return ServedFiles(self.artifacts, self.models)


def _split_url(url: str, protocol: str | None) -> tuple[str, str]:
    """``host:port`` and the protocol; a ``grpc://`` or ``http://`` prefix decides the protocol."""
    match = re.match(r"^(https?|grpc)://", url)
    if match:
        scheme = "grpc" if match.group(1) == "grpc" else "http"
        if protocol is not None and protocol != scheme:
            raise BadInputError(f"--protocol {protocol} contradicts the URL {url}")
        return url[match.end() :].rstrip("/"), scheme
    protocol = protocol or "http"
    if protocol not in ("http", "grpc"):
        raise BadInputError(f"protocol must be http or grpc, got {protocol!r}")
    return url.rstrip("/"), protocol


def check_url(url: str, protocol: str | None = None) -> None:
    """Refuse a URL the load test could not use, before anything else runs (exit 3)."""
    _check_address(_split_url(url, protocol)[0])


def _check_address(address: str) -> None:
    """``host:port`` with a port tritonclient can use, refused before a client object is half made."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadInputError(
            f"cannot use {address!r} as a Triton address: give host:port with a port from 1 to 65535 "
            "(e.g. 127.0.0.1:8000)"
        )


def _discard_quietly(exc: BaseException) -> None:
    """Free the half-made client a failed constructor left in ``exc``'s frames, with its ``__del__`` silenced.

    tritonclient's ``__del__`` calls ``close()`` on an object whose ``__init__`` failed, which prints an
    AttributeError traceback ("Exception ignored in ...") whenever the object is finally collected.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _unraisable: None
    try:
        traceback.clear_frames(exc.__traceback__)
        gc.collect()
    finally:
        sys.unraisablehook = hook


class _Client:
    """The same few calls over tritonclient's HTTP and gRPC clients; one per thread."""

    def __init__(self, protocol: str, address: str, timeout_s: float) -> None:
        try:
            if protocol == "http":
                import tritonclient.http as module

                self.client = module.InferenceServerClient(
                    address, connection_timeout=timeout_s, network_timeout=timeout_s
                )
            else:
                import tritonclient.grpc as module

                self.client = module.InferenceServerClient(address)
        except (ImportError, RuntimeError) as exc:  # RuntimeError: tritonclient installed without this protocol
            missing = f"{exc.name} is missing" if isinstance(exc, ImportError) else "installed without it"
            raise BackendUnavailableError(
                f"the Triton load test needs tritonclient[{protocol}] ({missing}); {INSTALL_HINT}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - tritonclient checks the address in its own ways
            message = one_line(exc, 200)
            _discard_quietly(exc)
            raise BadInputError(f"cannot use {address!r} as a Triton address: {message}") from None
        self.module = module
        self.protocol = protocol
        self.timeout_s = timeout_s

    def metadata(self, model: str) -> tuple[str, list[int], str, str]:
        """Input name, input shape (-1 for the batch), input datatype, output name."""
        try:
            if self.protocol == "grpc":
                meta = self.client.get_model_metadata(model, as_json=True)
            else:
                meta = self.client.get_model_metadata(model)
        except Exception as exc:  # noqa: BLE001 - tritonclient's, transport and parser errors (deep JSON) alike
            raise BadInputError(f"cannot read the metadata of model {model}: {one_line(exc, 160)}") from None
        try:
            inputs, outputs = meta["inputs"], meta["outputs"]
            if len(inputs) != 1 or not outputs:
                raise BadInputError(f"model {model} must have one input and an output; it has {str(inputs)[:200]}")
            first = inputs[0]
            return (
                str(first["name"]),
                [int(d) for d in first["shape"]],
                str(first["datatype"]),
                str(outputs[0]["name"]),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # not what a Triton server answers
            raise BadInputError(f"the metadata of model {model} is not Triton's: {one_line(exc, 120)}") from None

    def request(self, input_name: str, batch: np.ndarray, datatype: str, output_name: str):
        tensor = self.module.InferInput(input_name, list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch)
        return [tensor], [self.module.InferRequestedOutput(output_name)]

    def infer(self, model: str, inputs, outputs):
        if self.protocol == "grpc":
            return self.client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout_s)
        return self.client.infer(model, inputs, outputs=outputs)

    def close(self) -> None:
        self.client.close()

    def ready_models(self, candidates: Sequence[str]) -> list[str]:
        """The models the server says are ready: its repository index where it shows one, else among ``candidates``.

        PyTriton's tritonserver keeps the repository API behind a token, so ``candidates`` (the names DIR's
        files are served as) are asked one by one as well.
        """
        ready: set[str] = set()
        with contextlib.suppress(Exception):
            index = self.client.get_model_repository_index(**({"as_json": True} if self.protocol == "grpc" else {}))
            entries = index.get("models", []) if isinstance(index, dict) else index
            ready |= {str(e["name"]) for e in entries if isinstance(e, dict) and e.get("state") == "READY"}
        for name in candidates:
            with contextlib.suppress(Exception):
                if name not in ready and self.client.is_model_ready(name):
                    ready.add(name)
        return sorted(ready)


def _ready_check(client: _Client, address: str, model: str | None) -> None:
    """The server answers, and (``model`` given) has it ready; else exit 3 listing the models it has ready."""
    try:
        live = client.client.is_server_live()
        ready = live and (model is None or client.client.is_model_ready(model))
    except Exception as exc:  # noqa: BLE001 - connection errors differ by protocol and version
        raise BadInputError(f"cannot reach a Triton server at {address}: {str(exc).strip()[:200]}") from None
    if not ready and model is None:
        raise BadInputError(f"the Triton server at {address} is not live; check the server and its log")
    if not ready:
        listed = ", ".join(client.ready_models(())) if live else ""
        raise BadInputError(
            f"the Triton server at {address} has no ready model {model!r}" + (f"; ready: {listed}" if listed else "")
        )


def candidate_models(directory: Path) -> list[str]:
    """The names DIR's files are served under, by ``serve`` and by ``triton-repo``'s ONNX and engine models."""
    names = [
        default_model_name(directory, precision, backend)
        for precision in ONNX_FILES
        for backend in ("onnxruntime", "openvino")
    ]
    return names + [f"{model_base_name(directory)}_trt_{precision}" for precision in ONNX_FILES]


def served_model(url: str, directory: Path, protocol: str | None = None, log: Callable[[str], None] = print) -> str:
    """The model to load-test when none is named: the one of DIR's names the server has ready.

    ``serve`` serves one model; a ``triton-repo`` server may serve several of DIR's files, and then the
    choice is the user's: the message lists the ready models.
    """
    address, protocol = _split_url(url, protocol)
    _check_address(address)
    probe = _Client(protocol, address, 10.0)
    try:
        _ready_check(probe, address, None)
        ready = probe.ready_models(candidate_models(directory))
    finally:
        probe.close()
    ours = [name for name in candidate_models(directory) if name in ready]
    if len(ours) == 1:
        log(f"bench-triton: model {ours[0]} (the one of {directory}'s models this server has ready)")
        return ours[0]
    listed = ", ".join(ready) if ready else "none that it shows"
    why = "several of its models are ready" if ours else f"none of {directory}'s models is ready there"
    raise BadInputError(f"cannot tell which model to load-test at {address}: {why}; ready: {listed}. Pass --model NAME")


def background_load(seconds: float = 0.5) -> float | None:
    """The share of the machine's CPU other processes used over ``seconds`` before the test (None: cannot look)."""
    monitor = LoadMonitor()
    before = monitor.sample(os.getpid())
    time.sleep(seconds)
    others = monitor.others(before, monitor.sample(os.getpid()))
    return None if others is None or not others[1] else others[0] / others[1]


@dataclass(frozen=True)
class LoadTestSettings:
    """The load's shape, validated when made: concurrency levels, images per request, and the time window.

    Each level ends after the window or ``max_requests`` requests, whichever comes first, plus at most
    one request timeout.
    """

    levels: tuple[int, ...] = (1, 4, 16)
    batch_size: int = 1
    duration_s: float = 3.0
    warmup_s: float = 0.2
    max_requests: int = 100_000
    timeout_s: float = 30.0
    min_requests: int = 100  # fewer requests than this in a level: its p99 is the slowest one or two, said so

    def __post_init__(self) -> None:
        if not self.levels or any(c < 1 for c in self.levels):
            raise BadInputError(f"concurrency levels must be 1 or more, got {list(self.levels)}")
        if not 0 < self.duration_s <= 3600:
            raise BadInputError(f"--duration must be more than 0 and at most 3600 seconds, got {self.duration_s:g}")
        if self.batch_size < 1 or self.max_requests < 1:
            raise BadInputError("batch size and max requests must be at least 1")


def triton_load_test(
    url: str,
    model_name: str,
    settings: LoadTestSettings | None = None,
    protocol: str | None = None,
    log: Callable[[str], None] = print,
) -> list[LoadRow]:
    """Closed-loop load: per level, ``concurrency`` threads each keep one request in flight.

    A request counts when it finishes inside the measured window (after the warm-up, for the duration).
    Failed requests are counted, not raised; the first error's text is kept.
    """
    settings = settings or LoadTestSettings()
    batch_size, duration_s, warmup_s = settings.batch_size, settings.duration_s, settings.warmup_s
    max_requests, timeout_s = settings.max_requests, settings.timeout_s
    address, protocol = _split_url(url, protocol)
    _check_address(address)
    probe = _Client(protocol, address, timeout_s)
    try:
        _ready_check(probe, address, model_name)
        input_name, shape, datatype, output_name = probe.metadata(model_name)
        if shape[0] == -1:
            shape[0] = batch_size
        elif shape[0] != batch_size:
            raise BadInputError(f"model {model_name} takes a fixed batch of {shape[0]}; use --batch-size {shape[0]}")
        if any(d < 1 for d in shape):
            raise BadInputError(f"model {model_name} has input shape {shape}; the load test needs fixed image sizes")
        if datatype != "FP32":
            raise BadInputError(f"model {model_name} takes {datatype}; the load test sends FP32 images")
        if math.prod(shape) * 4 > MAX_REQUEST_BYTES:  # the shape is the server's word: bound it before allocating
            raise BadInputError(
                f"model {model_name} declares input shape {shape}: {math.prod(shape) * 4 / 2**20:.0f} MiB per "
                f"request, more than the load test's {MAX_REQUEST_BYTES >> 20} MiB; use a smaller --batch-size or "
                "check the server"
            )
        batch = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        try:
            probe.infer(model_name, *probe.request(input_name, batch, datatype, output_name))
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and transport errors
            raise BadInputError(
                f"model {model_name} at {address} rejected a request: {str(exc).strip()[:300]}"
            ) from None
    finally:
        probe.close()

    rows = []
    request = (input_name, batch, datatype, output_name)
    for concurrency in settings.levels:
        row = _run_level(
            url, protocol, address, model_name, request, concurrency, duration_s, warmup_s, max_requests, timeout_s
        )
        if row.requests < settings.min_requests:
            row.warning = (
                f"only {row.requests} requests at concurrency {concurrency}: percentiles need at least "
                f"{settings.min_requests} (p99 of fewer is the slowest one or two); give a longer --duration"
            )
        log(
            f"triton {model_name} c={concurrency}: {row.requests_per_s:.1f} req/s, {row.images_per_s:.1f} img/s, "
            f"p50 {_ms(row.p50_ms)}, p99 {_ms(row.p99_ms)} ms, {row.errors} errors"
        )
        if row.warning:
            log(f"warning: {row.warning}")
        rows.append(row)
    return rows


def _run_level(
    url: str,
    protocol: str,
    address: str,
    model: str,
    request: tuple[str, np.ndarray, str, str],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
    timeout_s: float,
) -> LoadRow:
    input_name, batch, datatype, output_name = request
    per_worker = max(1, -(-max_requests // concurrency))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    clients = [_Client(protocol, address, timeout_s) for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    window: list[float] = []

    def worker(index: int) -> None:
        client = clients[index]
        inputs, outputs = client.request(input_name, batch, datatype, output_name)
        barrier.wait()
        start, end = window
        for _ in range(per_worker):
            begin = time.perf_counter()
            if begin >= end:
                break
            try:
                client.infer(model, inputs, outputs)
                ok = True
            except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
                ok = False
                if not first_error:
                    first_error.append(str(exc).strip()[:300])
            finished = time.perf_counter()
            if start <= finished <= end:
                if ok:
                    latencies[index].append((finished - begin) * 1e3)
                else:
                    errors[index] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    window.extend((now + warmup_s, now + warmup_s + duration_s))
    barrier.wait()
    for thread in threads:
        thread.join(warmup_s + duration_s + timeout_s + 5)
    for client in clients:
        client.close()
    done = np.array([ms for worker_ms in latencies for ms in worker_ms])
    count = len(done)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(done, q)), 3) if count else None

    return LoadRow(
        url=url,
        protocol=protocol,
        model=model,
        concurrency=concurrency,
        batch_size=int(batch.shape[0]),
        duration_s=duration_s,
        requests=count,
        errors=sum(errors),
        requests_per_s=round(count / duration_s, 2),
        images_per_s=round(count * batch.shape[0] / duration_s, 2),
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        mean_ms=round(float(done.mean()), 3) if count else None,
        max_ms=round(float(done.max()), 3) if count else None,
        first_error=first_error[0] if first_error else None,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_triton_bench(
    rows: Sequence[LoadRow], directory: str | Path, other_cpu: float | None = None
) -> tuple[Path, Path]:
    """``DIR/bench_triton.json`` and ``DIR/bench_triton.md``; returns both paths.

    ``other_cpu``: the share of the CPU other processes used just before the test (:func:`background_load`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / TRITON_BENCH_JSON, directory / "bench_triton.md"
    served = served_files(directory, {row.model for row in rows})
    record = TritonBenchRecord(
        schema_version=SCHEMA_VERSION,
        created=now_iso(),
        machine=machine_record(None),
        artifacts=served.artifacts,
        models=served.models,
        rows=list(rows),
        load=BackgroundLoad(other_cpu, busy_warning(other_cpu)),
    )
    write_json(json_path, encode(record))
    lines = ["# Triton load test", "", *triton_bench_markdown(rows, other_cpu)]
    write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path


def triton_bench_markdown(rows: Sequence[LoadRow], other_cpu: float | None) -> list[str]:
    """The load test's table and warnings, as bench_triton.md and report.md show them."""
    lines = [
        "Closed loop: each of `concurrency` clients keeps one request in flight; latency is client side.",
        "",
        "| model | protocol | concurrency | batch | requests/s | images/s | p50 ms | p90 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.protocol} | {r.concurrency} | {r.batch_size} | {r.requests_per_s:.1f} | "
            f"{r.images_per_s:.1f} | {_ms(r.p50_ms)} | {_ms(r.p90_ms)} | {_ms(r.p99_ms)} | {r.errors} |"
        )
    lines += [f"\nWarning: {r.warning}." for r in rows if r.warning]
    if busy := busy_warning(other_cpu):
        lines += ["", f"Warning: {busy}."]
    errors = [r for r in rows if r.first_error]
    if errors:
        lines += ["", f"First error ({errors[0].model}, concurrency {errors[0].concurrency}): {errors[0].first_error}"]
    return lines


def triton_report_lines(directory: str | Path) -> list[str]:
    """What report.md says of DIR/bench_triton.json: its table, and whether the files it measured changed since.

    Empty when bench-triton has not run. A hand-edited file is exit 3 naming it.
    """
    path = Path(directory) / TRITON_BENCH_JSON
    if not path.exists():
        return []
    record = read_triton_bench(path)
    now = served_files(Path(directory), set(record.models)).artifacts
    lines = triton_bench_markdown(record.rows, record.load.other_cpu)
    for model, file in sorted(record.models.items()):
        if file is not None and record.artifacts.get(file) != now.get(file):
            lines += ["", f"**Out of date:** {file} (model {model}) changed since this load test; rerun bench-triton."]
    return lines


def read_triton_bench(path: Path) -> TritonBenchRecord:
    """``bench_triton.json`` as its record; a file edited into another shape is exit 3 naming the field."""
    try:
        return decode(TritonBenchRecord, read_json(path))
    except RecordError as exc:
        raise BadInputError(f"{path} is malformed ({one_line(exc, 160)}); run bench-triton again") from None


def busy_warning(other_cpu: float | None) -> str | None:
    """What to say when other processes kept the machine busy before the test (see evaluate/machine.py)."""
    if other_cpu is None or other_cpu <= DISTURBED_CPU:
        return None
    return (
        f"the machine was busy: other processes used {other_cpu:.0%} of its CPU just before the load test, "
        "so these figures are noisy; rerun on an idle machine"
    )


def served_files(directory: Path, models: set[str]) -> ServedFiles:
    """sha256 of every artifact in DIR, and which file each load-tested model name is (where DIR names it).

    The server may serve anything under a name; this records what DIR held, so a result can be tied to
    the file it was meant to measure (and told stale when that file changes).
    """
    if not (directory / MANIFEST_NAME).exists():
        return ServedFiles({}, {model: None for model in models})
    manifest = Manifest(directory)
    artifacts = {name: entry.sha256 for name, entry in manifest.artifacts.items()}
    names = {
        default_model_name(directory, precision, backend): ONNX_FILES[precision]
        for precision in ONNX_FILES
        for backend in ("onnxruntime", "openvino")
    }
    return ServedFiles(artifacts, {model: names.get(model) for model in models})
