"""NVIDIA Triton Inference Server: a model repository made from the artifact directory, and a load test.

``make_triton_repo`` writes one Triton model per artifact (``onnxruntime_onnx`` for the ONNX files,
``tensorrt_plan`` for engines). Each ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf
(shipped by ``tritonclient``) and printed in protobuf text format, so a field Triton does not know cannot
be written. ``triton_load_test`` measures a running server through ``tritonclient`` (HTTP or gRPC).
``tritonclient`` is imported where it is used: ``pip install 'resnext-deploy[triton]'``.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .artifacts import ONNX_FILES, PRECISIONS, Manifest, atomic_path, engine_file, now_iso, write_json, write_text
from .engine import BuildOptions, read_engine_manifest
from .errors import BackendUnavailableError, BadInputError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

INSTALL_HINT = "pip install 'resnext-deploy[triton]'"
# ONNX models batch like an engine built with build-trt's default profile.
DEFAULT_MAX_BATCH = BuildOptions.max_batch
DEFAULT_OPT_BATCH = BuildOptions.opt_batch
DEFAULT_QUEUE_DELAY_US = 100
ONNX_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
TRT_WORKSPACE_BYTES = 1 << 30
REPO_FILE_MODE = 0o644  # a repository is shipped: tritonserver often runs as another user than its author
# Graph I/O types the artifacts can have (onnx.TensorProto names) -> Triton data types.
ONNX_TO_TRITON = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16"}
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def model_config_pb2() -> ModuleType:
    """Triton's ModelConfig protobuf module, as ``tritonclient`` ships it."""
    try:
        from tritonclient.grpc import model_config_pb2 as module
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Triton support needs tritonclient[grpc] ({exc.name} is missing); {INSTALL_HINT}"
        ) from None
    return module


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``dims`` include the batch dimension, -1 where it is dynamic."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def onnx_io(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph inputs and outputs of an ONNX file, with Triton data types."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - onnx raises untyped decode errors
        raise BadInputError(f"cannot read {path} as ONNX: {str(exc).strip()[:200]}") from None
    initializers = {init.name for init in graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        type_name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        if type_name not in ONNX_TO_TRITON:
            raise BadInputError(f"{path}: tensor {value.name!r} has type {type_name}, which Triton cannot serve")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(value.name, ONNX_TO_TRITON[type_name], dims)

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


@dataclass(frozen=True)
class RepoModel:
    """One model of the repository: where it came from and how Triton should batch it."""

    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan
    artifact: Path
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int  # 0: the graph has a fixed batch and Triton must not batch
    preferred_batch_sizes: tuple[int, ...]
    sha256: str

    @property
    def model_file(self) -> str:
        return "model.plan" if self.platform == "tensorrt_plan" else "model.onnx"


def build_model_config(
    model: RepoModel,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    onnx_kind: str = "auto",
    trt_accelerator: bool = False,
) -> ModelConfig:
    """The ``ModelConfig`` message for one model.

    Engines run on ``KIND_GPU``. ONNX models default to ``KIND_AUTO``, which Triton resolves to the GPU
    where it has one and to the CPU elsewhere, so one repository serves on both kinds of host. The
    optional TensorRT accelerator for ONNX uses FP16 kernels only for the FP16 and INT8 files, whose
    graphs already compute in FP16: precision is decided in the graph, not here.
    """
    pb = model_config_pb2()
    batched = model.max_batch_size > 0

    def tensor(spec: TensorSpec, cls):
        dims = spec.dims[1:] if batched else spec.dims
        return cls(name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=list(dims))

    config = pb.ModelConfig(
        name=model.name,
        platform=model.platform,
        max_batch_size=model.max_batch_size,
        input=[tensor(s, pb.ModelInput) for s in model.inputs],
        output=[tensor(s, pb.ModelOutput) for s in model.outputs],
        default_model_filename=model.model_file,
    )
    if batched:
        config.dynamic_batching.preferred_batch_size.extend(model.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    kind = "KIND_GPU" if model.platform == "tensorrt_plan" else ONNX_KINDS[onnx_kind]
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    if trt_accelerator and model.platform == "onnxruntime_onnx":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP32" if model.precision == "fp32" else "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(TRT_WORKSPACE_BYTES)
    return config


def config_text(model: RepoModel, config: ModelConfig) -> str:
    """``config.pbtxt``: a comment naming the artifact it serves, then the message in text format."""
    from google.protobuf import text_format

    header = (
        f"# Generated by resnext-deploy triton-repo from {model.artifact.name} ({model.precision}, "
        f"sha256 {model.sha256}).\n"
    )
    if any(group.kind == group.KIND_AUTO for group in config.instance_group):
        header += "# instance_group kind is KIND_AUTO (the default, so not printed): the GPU where there is one.\n"
    return header + text_format.MessageToString(config)


def _batch_plan(
    dims: tuple[int, ...], source: str, requested: int | None, limit: int | None, opt: int
) -> tuple[int, tuple[int, ...]]:
    """max_batch_size and preferred batch sizes for a graph whose leading dimension is ``dims[0]``."""
    if dims[0] != -1:
        return 0, ()  # a fixed batch: Triton passes requests through whole
    if requested is not None and requested < 1:
        raise BadInputError(f"--max-batch-size must be at least 1, got {requested}")
    if requested is not None and limit is not None and requested > limit:
        raise BadInputError(f"--max-batch-size {requested} exceeds {source}'s optimization profile maximum {limit}")
    max_batch = requested or limit or DEFAULT_MAX_BATCH
    return max_batch, tuple(sorted({min(opt, max_batch), max_batch}))


def collect_models(
    directory: str | Path, name: str | None = None, max_batch_size: int | None = None
) -> list[RepoModel]:
    """One :class:`RepoModel` per ONNX file and engine that exists and still matches the manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInputError(f"--dir {directory} is not a directory; run `resnext-deploy export --dir {directory}`")
    manifest = Manifest(directory)
    base = name or model_base_name(directory)
    if not MODEL_NAME_RE.match(base):
        raise BadInputError(f"--name {base!r} may hold only letters, digits, '_', '-' and '.'")

    def sha256(path: Path) -> str:
        if manifest.entry(path.name) is None:
            raise BadInputError(f"{path} is not recorded in {manifest.path}; remake it with resnext-deploy")
        return manifest.require(path.name, "remake it with resnext-deploy")["sha256"]

    models = []
    for precision, file_name in ONNX_FILES.items():
        path = directory / file_name
        if path.exists():
            sha = sha256(path)
            inputs, outputs = onnx_io(path)
            batch = _batch_plan(inputs[0].dims, file_name, max_batch_size, None, DEFAULT_OPT_BATCH)
            model_name = f"{base}_onnx_{precision}"  # default_model_name() when no --name
            models.append(RepoModel(model_name, "onnxruntime_onnx", path, precision, inputs, outputs, *batch, sha))
    for precision in PRECISIONS:
        path = directory / engine_file(precision)
        if path.exists():
            sha = sha256(path)
            body = read_engine_manifest(path)
            profile = body["profile"]
            inputs, outputs = onnx_io(directory / body["source_onnx"])  # the engine has its ONNX file's I/O
            if [s.name for s in inputs] != [profile["input"]]:
                raise BadInputError(f"{path}'s profile is for input {profile['input']!r}, its ONNX file's is not")
            limit, opt = int(profile["max"][0]), int(profile["opt"][0])
            batch = _batch_plan(inputs[0].dims, path.name, max_batch_size, limit, opt)
            model_name = f"{base}_trt_{precision}"
            models.append(RepoModel(model_name, "tensorrt_plan", path, precision, inputs, outputs, *batch, sha))
    if not models:
        raise BadInputError(f"{directory} holds no ONNX file or engine; run `resnext-deploy export --dir {directory}`")
    return models


def model_base_name(directory: str | Path) -> str:
    """The architecture recorded in the manifest: the default model-name prefix of ``triton-repo`` and ``serve``."""
    entry = Manifest(directory).entry(ONNX_FILES["fp32"]) or {}
    return entry.get("options", {}).get("source", {}).get("arch") or "resnext"


def default_model_name(directory: str | Path, precision: str = "fp32") -> str:
    """What ``serve`` and ``triton-repo`` call DIR's ONNX model of ``precision``, e.g. ``resnext_tiny_onnx_fp32``."""
    return f"{model_base_name(directory)}_onnx_{precision}"


def make_triton_repo(
    directory: str | Path,
    out: str | Path,
    name: str | None = None,
    max_batch_size: int | None = None,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    onnx_kind: str = "auto",
    trt_accelerator: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Write a Triton model repository under ``out``: per model ``config.pbtxt`` and ``1/model.{onnx,plan}``.

    Files are written atomically; models of other names already in ``out`` are left alone.
    """
    if max_queue_delay_us < 0:
        raise BadInputError(f"--max-queue-delay-us must be 0 or more, got {max_queue_delay_us}")
    if instances < 1:
        raise BadInputError(f"--instances must be at least 1, got {instances}")
    if onnx_kind not in ONNX_KINDS:
        raise BadInputError(f"--onnx-kind must be one of {', '.join(ONNX_KINDS)}, got {onnx_kind!r}")
    if trt_accelerator and onnx_kind == "cpu":
        raise BadInputError("--trt-accelerator needs GPU instances; use --onnx-kind auto or gpu")
    model_config_pb2()  # fail before writing anything when tritonclient is missing
    models = collect_models(directory, name, max_batch_size)
    out = Path(out)
    written = []
    for model in models:
        config = build_model_config(model, max_queue_delay_us, instances, onnx_kind, trt_accelerator)
        model_dir = out / model.name
        version_dir = model_dir / "1"
        try:
            version_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(
                f"cannot create {version_dir}: {exc.strerror or exc}; choose a writable --out"
            ) from None
        with atomic_path(version_dir / model.model_file) as tmp:
            shutil.copyfile(model.artifact, tmp)
            tmp.chmod(REPO_FILE_MODE)
        with atomic_path(model_dir / "config.pbtxt") as tmp:
            tmp.write_text(config_text(model, config), encoding="utf-8")
            tmp.chmod(REPO_FILE_MODE)
        batching = (
            f"max batch {model.max_batch_size}, preferred {list(model.preferred_batch_sizes)}, "
            f"queue delay {max_queue_delay_us} us"
            if model.max_batch_size
            else "fixed batch, no dynamic batching"
        )
        log(f"wrote {model_dir} ({model.platform} from {model.artifact.name}; {batching})")
        written.append(model_dir)
    log(f"serve it with: tritonserver --model-repository {out.resolve()}")
    return written


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the Triton load test needs tritonclient[{protocol}] ({exc.name} is missing); {INSTALL_HINT}"
            ) from None
        self.module = module
        self.protocol = protocol
        self.timeout_s = timeout_s

    def metadata(self, model: str) -> tuple[str, list[int], str, str]:
        """Input name, input shape (-1 for the batch), input datatype, output name."""
        if self.protocol == "grpc":
            meta = self.client.get_model_metadata(model, as_json=True)
        else:
            meta = self.client.get_model_metadata(model)
        if len(meta["inputs"]) != 1 or not meta["outputs"]:
            raise BadInputError(f"model {model} must have one input and an output; it has {meta['inputs']}")
        first = meta["inputs"][0]
        return first["name"], [int(d) for d in first["shape"]], first["datatype"], meta["outputs"][0]["name"]

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


def _ready_check(client: _Client, address: str, model: str) -> None:
    try:
        live = client.client.is_server_live()
    except Exception as exc:  # noqa: BLE001 - connection errors differ by protocol and version
        raise BadInputError(f"cannot reach a Triton server at {address}: {str(exc).strip()[:200]}") from None
    if not live or not client.client.is_model_ready(model):
        raise BadInputError(f"the Triton server at {address} has no ready model {model!r}")


def triton_load_test(
    url: str,
    model_name: str,
    concurrency_levels: Sequence[int] = (1, 4, 16),
    duration_s: float = 3.0,
    batch_size: int = 1,
    protocol: str | None = None,
    warmup_s: float = 0.2,
    max_requests: int = 100_000,
    timeout_s: float = 30.0,
    log: Callable[[str], None] = print,
) -> list[LoadRow]:
    """Closed-loop load: per level, ``concurrency`` threads each keep one request in flight.

    A request counts when it finishes inside the measured window (after ``warmup_s``, for ``duration_s``).
    Each level ends after the window or ``max_requests`` requests, whichever comes first, plus at most one
    request timeout. Failed requests are counted, not raised; the first error's text is kept.
    """
    if not concurrency_levels or any(c < 1 for c in concurrency_levels):
        raise BadInputError(f"concurrency levels must be 1 or more, got {list(concurrency_levels)}")
    if duration_s <= 0 or batch_size < 1 or max_requests < 1:
        raise BadInputError("duration must be positive, and batch size and max requests at least 1")
    address, protocol = _split_url(url, protocol)
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
    for concurrency in concurrency_levels:
        row = _run_level(
            url, protocol, address, model_name, request, concurrency, duration_s, warmup_s, max_requests, timeout_s
        )
        log(
            f"triton {model_name} c={concurrency}: {row.requests_per_s:.1f} req/s, {row.images_per_s:.1f} img/s, "
            f"p50 {_ms(row.p50_ms)}, p99 {_ms(row.p99_ms)} ms, {row.errors} errors"
        )
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


def write_triton_bench(rows: Sequence[LoadRow], directory: str | Path) -> tuple[Path, Path]:
    """``DIR/bench_triton.json`` and ``DIR/bench_triton.md``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "bench_triton.json", directory / "bench_triton.md"
    write_json(json_path, {"created": now_iso(), "rows": [row.to_dict() for row in rows]})
    lines = [
        "# Triton load test",
        "",
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
    errors = [r for r in rows if r.first_error]
    if errors:
        lines += ["", f"First error ({errors[0].model}, concurrency {errors[0].concurrency}): {errors[0].first_error}"]
    write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path
