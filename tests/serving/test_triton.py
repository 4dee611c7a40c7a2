"""Triton: the repository's configs parse into Triton's own ModelConfig, and a real PyTriton server on
loopback answers like the ONNX Runtime runner, under a short bounded load test.

The config tests need ``tritonclient`` and the server test ``nvidia-pytriton`` (the ``triton`` extra);
each skips with the reason where its package is missing. The engine here is a stand-in file with a
real engine manifest: it tests the ``tensorrt_plan`` config, not TensorRT.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from helpers import digit_jpeg, stand_in_engine_manifest

from resnext_deploy.artifacts import EngineProfile, Manifest, engine_file, write_json
from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner
from resnext_deploy.backends.tensorrt.manifest import engine_manifest_path
from resnext_deploy.backends.tensorrt.options import BuildOptions
from resnext_deploy.data import open_dataset, take
from resnext_deploy.errors import BackendUnavailableError, BadInputError, ExitCode
from resnext_deploy.schemas import load_schema
from resnext_deploy.serde import encode
from resnext_deploy.serving.load_test import LoadTestSettings, triton_load_test, write_triton_bench
from resnext_deploy.serving.options import Batching, ServeOptions, TritonRepoOptions
from resnext_deploy.serving.pytriton import SERVER_LOG
from resnext_deploy.serving.triton_repo import make_triton_repo
from resnext_deploy.source import recorded_source

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "resnext_tiny_onnx_fp32"
EXTRA = "pip install 'resnext-deploy[triton]'"
has_tritonclient = importlib.util.find_spec("tritonclient") is not None and importlib.util.find_spec("grpc") is not None
needs_tritonclient = pytest.mark.skipif(not has_tritonclient, reason=f"needs tritonclient[grpc]: {EXTRA}")
needs_pytriton = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None or not has_tritonclient, reason=f"needs nvidia-pytriton: {EXTRA}"
)


def _parse(model_dir: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _add_fp16_onnx(directory: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(directory / "model.onnx")), keep_io_types=True)
    onnx.save(model, str(directory / "model.fp16.onnx"))
    Manifest(directory).record("model.fp16.onnx", "fp16", options={"fixture": "convert_float_to_float16"})


def _add_stand_in_engine(
    directory: Path, min_batch: int = 1, opt_batch: int = 4, max_batch: int = 16, version_compatible: bool = False
) -> Path:
    """Plan bytes that are not a plan, with a manifest of the shape build-trt writes."""
    path = directory / engine_file("fp16")
    path.write_bytes(b"stand-in plan bytes")
    batches = {"min": min_batch, "opt": opt_batch, "max": max_batch}
    profile = EngineProfile("input", *((batches[k], 3, 32, 32) for k in ("min", "opt", "max")))
    options = BuildOptions(
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, version_compatible=version_compatible
    )
    body = stand_in_engine_manifest(path, "fp16", profile=profile, build_options=options)
    write_json(engine_manifest_path(path), encode(body))
    Manifest(directory).record(path.name, "fp16", options={"fixture": "stand-in engine"}, profile=profile)
    return path


@pytest.fixture
def full_dir(tiny_dir: Path) -> Path:
    _add_fp16_onnx(tiny_dir)
    _add_stand_in_engine(tiny_dir)
    return tiny_dir


@needs_tritonclient
def test_repository_configs_parse_into_triton_model_config(full_dir: Path, tmp_path: Path):
    from tritonclient.grpc import model_config_pb2 as pb

    out = tmp_path / "repo"
    messages: list[str] = []
    written = make_triton_repo(full_dir, out, TritonRepoOptions(trt_accelerator=True), log=messages.append)
    assert sorted(p.name for p in written) == [
        "resnext_tiny_onnx_fp16",
        "resnext_tiny_onnx_fp32",
        "resnext_tiny_openvino_fp16",
        "resnext_tiny_openvino_fp32",
        "resnext_tiny_trt_fp16",
    ]
    assert "tritonserver --model-repository" in messages[-1]

    for precision in ("fp32", "fp16"):
        config = _parse(out / f"resnext_tiny_onnx_{precision}")
        assert config.name == f"resnext_tiny_onnx_{precision}"
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 32
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input", pb.TYPE_FP32, [3, 32, 32])]
        assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", pb.TYPE_FP32, [10])]
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_AUTO)]
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt"
        # FP16 kernels only where the graph already computes in FP16: the repository makes no precision choice.
        assert accelerator.parameters["precision_mode"] == ("FP32" if precision == "fp32" else "FP16")
    onnx_name = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}
    for precision, name in onnx_name.items():
        copied = out / f"resnext_tiny_onnx_{precision}" / "1" / "model.onnx"
        assert copied.read_bytes() == (full_dir / name).read_bytes()
        assert copied.stat().st_mode & 0o777 == 0o644

    for precision, name in onnx_name.items():
        model_dir = out / f"resnext_tiny_openvino_{precision}"
        ov = _parse(model_dir)
        assert (ov.name, ov.backend, ov.platform) == (model_dir.name, "openvino", "")
        assert ov.default_model_filename == "model.onnx"
        assert (model_dir / "1" / "model.onnx").read_bytes() == (full_dir / name).read_bytes()
        assert ov.max_batch_size == 32 and list(ov.dynamic_batching.preferred_batch_size) == [8, 32]
        assert [(i.name, i.data_type, list(i.dims)) for i in ov.input] == [("input", pb.TYPE_FP32, [3, 32, 32])]
        assert [(g.count, g.kind) for g in ov.instance_group] == [(1, pb.ModelInstanceGroup.KIND_CPU)]
        assert ov.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
        assert not ov.optimization.execution_accelerators.gpu_execution_accelerator  # no GPU accelerator on CPU

    plan = _parse(out / "resnext_tiny_trt_fp16")
    assert plan.platform == "tensorrt_plan"
    assert plan.default_model_filename == "model.plan"
    assert plan.max_batch_size == 16  # the engine profile's maximum
    assert list(plan.dynamic_batching.preferred_batch_size) == [4, 16]  # its opt and max
    assert [(i.name, list(i.dims)) for i in plan.input] == [("input", [3, 32, 32])]
    assert [(g.count, g.kind) for g in plan.instance_group] == [(1, pb.ModelInstanceGroup.KIND_GPU)]
    assert not plan.optimization.execution_accelerators.gpu_execution_accelerator
    assert (out / "resnext_tiny_trt_fp16" / "1" / "model.plan").read_bytes() == b"stand-in plan bytes"


@needs_tritonclient
def test_a_plain_engine_is_served_with_a_warning_about_tensorrt_versions(full_dir: Path, tmp_path: Path):
    messages: list[str] = []
    make_triton_repo(full_dir, tmp_path / "repo", log=messages.append)
    config = (tmp_path / "repo" / "resnext_tiny_trt_fp16" / "config.pbtxt").read_text()
    assert "# model.fp16.engine was built with TensorRT 10.13.3.9" in config and "exactly 10.13.3.9" in config
    (warning,) = [m for m in messages if m.startswith("warning:")]
    assert "model.fp16.engine" in warning and "exactly 10.13.3.9" in warning
    assert messages[-1].startswith("serve it with: tritonserver") and "version-compatible" not in messages[-1]


@needs_tritonclient
def test_a_version_compatible_engine_needs_the_backend_config_flag(tiny_dir: Path, tmp_path: Path):
    _add_fp16_onnx(tiny_dir)
    _add_stand_in_engine(tiny_dir, version_compatible=True)
    messages: list[str] = []
    make_triton_repo(tiny_dir, tmp_path / "repo", log=messages.append)
    flag = "--backend-config=tensorrt,version-compatible=true"
    assert messages[-1].endswith(flag)
    assert flag in (tmp_path / "repo" / "resnext_tiny_trt_fp16" / "config.pbtxt").read_text()
    assert not [m for m in messages if m.startswith("warning:")]


@needs_tritonclient
def test_an_engine_whose_profile_starts_above_1_is_refused(tiny_dir: Path, tmp_path: Path):
    _add_fp16_onnx(tiny_dir)
    _add_stand_in_engine(tiny_dir, min_batch=4, opt_batch=8)
    with pytest.raises(BadInputError, match=r"starts at batch 4.*batches from 1.*--fp16 --min-batch 1"):
        make_triton_repo(tiny_dir, tmp_path / "repo", log=lambda _m: None)
    assert not (tmp_path / "repo").exists()


@needs_tritonclient
def test_repository_flags_shape_batching_and_placement(full_dir: Path, tmp_path: Path):
    from tritonclient.grpc import model_config_pb2 as pb

    out = tmp_path / "repo"
    options = TritonRepoOptions(name="digits", batching=Batching(8, max_queue_delay_us=0, instances=2), onnx_kind="cpu")
    make_triton_repo(full_dir, out, options, log=lambda _m: None)
    config = _parse(out / "digits_onnx_fp32")
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
    assert not config.HasField("optimization")
    assert _parse(out / "digits_trt_fp16").max_batch_size == 8  # a smaller batch than the profile allows is fine

    with pytest.raises(BadInputError, match="exceeds model.fp16.engine's optimization profile maximum 16"):
        make_triton_repo(full_dir, tmp_path / "r2", TritonRepoOptions(batching=Batching(64)), log=lambda _m: None)
    with pytest.raises(BadInputError, match="needs GPU instances"):
        TritonRepoOptions(onnx_kind="cpu", trt_accelerator=True)


@needs_tritonclient
def test_a_fixed_batch_graph_is_served_without_batching(tiny_dir: Path, tmp_path: Path):
    model = onnx.load(str(tiny_dir / "model.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(model, str(tiny_dir / "model.onnx"))
    manifest = Manifest(tiny_dir)
    manifest.record("model.onnx", "fp32", options=manifest.entry("model.onnx").options)
    make_triton_repo(tiny_dir, tmp_path / "repo", log=lambda _m: None)
    config = _parse(tmp_path / "repo" / MODEL)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [2, 3, 32, 32]
    assert not config.HasField("dynamic_batching")


@needs_tritonclient
def test_repository_refuses_an_artifact_changed_after_the_manifest(tiny_dir: Path, tmp_path: Path):
    with open(tiny_dir / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BadInputError, match="sha256 differs"):
        make_triton_repo(tiny_dir, tmp_path / "repo", log=lambda _m: None)
    assert not (tmp_path / "repo").exists()


def test_missing_tritonclient_says_how_to_reinstall(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """tritonclient[grpc] is a core dependency (triton-repo only writes files): the hint is a reinstall."""
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    with pytest.raises(BackendUnavailableError, match=r"`make setup`.*`pip install resnext_deploy-\*\.whl`"):
        make_triton_repo(tiny_dir, tmp_path / "repo", log=lambda _m: None)


def test_missing_pytriton_names_commands_for_a_checkout_and_a_wheel(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from resnext_deploy.serving.pytriton import serve

    monkeypatch.setitem(sys.modules, "pytriton", None)
    monkeypatch.setitem(sys.modules, "pytriton.decorators", None)
    with pytest.raises(BackendUnavailableError, match=r"`make setup-triton`.*resnext-deploy\[triton\]") as caught:
        http, grpc, metrics = _free_ports(3)
        serve(tiny_dir, ServeOptions(port=http, grpc_port=grpc, metrics_port=metrics))
    assert "numpy < 2" in str(caught.value)
    done = subprocess.run(["make", "-n", "-B", "setup-triton"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "constraints-triton.txt" in done.stdout  # the named target exists


def _export_with_class_names(directory: Path, names: list[str]) -> None:
    from resnext_deploy.cli import main

    names_file = directory.parent / "classes.txt"
    names_file.write_text("\n".join(names) + "\n")
    assert main(["export", "--arch", "resnext_tiny", "--dir", str(directory), "--class-names", str(names_file)]) == 0


@needs_tritonclient
def test_repository_models_carry_triton_labels(tmp_path: Path):
    names = [f"class-{i}" for i in range(10)]
    _export_with_class_names(tmp_path / "d", names)
    written = make_triton_repo(tmp_path / "d", tmp_path / "repo", log=lambda _m: None)
    for model_dir in written:
        assert (model_dir / "labels.txt").read_text().splitlines() == names
        assert [o.label_filename for o in _parse(model_dir).output] == ["labels.txt"]


@needs_tritonclient
def test_repository_without_class_names_has_no_labels(tiny_dir: Path, tmp_path: Path):
    for model_dir in make_triton_repo(tiny_dir, tmp_path / "repo", log=lambda _m: None):
        assert not (model_dir / "labels.txt").exists()
        assert [o.label_filename for o in _parse(model_dir).output] == [""]


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now on loopback (held together so that they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _listen_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the sockets listening on ``port``, from the kernel's tables."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state != "0A" or int(local_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
            found.append(ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip)
    return found


class Server:
    """``resnext-deploy serve`` in a subprocess on free loopback ports; ``stop`` sends Ctrl-C."""

    def __init__(self, directory: Path, log_path: Path, backend: str = "onnxruntime", model: str = MODEL) -> None:
        self.http, self.grpc, self.metrics = _free_ports(3)
        self.model = model
        self.log_path = log_path
        self.stdout_path = log_path.with_suffix(".stdout")
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._stdout = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "resnext_deploy", "serve", "--dir", str(directory), "--threads", "1"]
        command += ["--port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        command += ["--backend", backend]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._stdout, stderr=self._log)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        import tritonclient.http as http

        client = http.InferenceServerClient(f"127.0.0.1:{self.http}", connection_timeout=2, network_timeout=2)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"serve exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.is_model_ready(self.model):
                        return
                except Exception:
                    pass
                time.sleep(0.5)
        finally:
            client.close()
        pytest.fail(f"serve was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        self._stdout.close()
        return self.process.returncode


@pytest.fixture
def server(tiny_dir: Path, tmp_path: Path):
    running = Server(tiny_dir, tmp_path / "serve.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@needs_pytriton
def test_served_logits_match_onnx_runtime_and_survive_a_load_test(server: Server, tiny_dir: Path, tmp_path: Path):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    for port in (server.http, server.grpc, server.metrics):
        addresses = _listen_addresses(port)
        assert addresses and all(a.is_loopback for a in addresses), (port, addresses)

    x = np.random.default_rng(3).standard_normal((3, 3, 32, 32), dtype=np.float32)
    expected = OnnxRuntimeRunner(tiny_dir / "model.onnx")(x)
    for module, port in ((http, server.http), (grpc, server.grpc)):
        client = module.InferenceServerClient(f"127.0.0.1:{port}")
        request = module.InferInput("input", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        logits = client.infer(MODEL, [request]).as_numpy("logits")
        client.close()
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)

    started = time.monotonic()
    rows = triton_load_test(
        f"http://127.0.0.1:{server.http}",
        MODEL,
        LoadTestSettings((1, 4), duration_s=1.0, warmup_s=0.2),
        log=lambda _m: None,
    )
    rows += triton_load_test(
        f"grpc://127.0.0.1:{server.grpc}",
        MODEL,
        LoadTestSettings((2,), duration_s=0.5, warmup_s=0.1),
        log=lambda _m: None,
    )
    assert time.monotonic() - started < 30  # bounded: 2.9 s of windows plus setup
    assert [(r.protocol, r.concurrency) for r in rows] == [("http", 1), ("http", 4), ("grpc", 2)]
    for row in rows:
        assert row.errors == 0 and row.first_error is None
        assert row.requests > 0 and row.images_per_s == row.requests_per_s > 0
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms <= row.max_ms
        # Percentiles of fewer than 100 requests are said to be so, with the count.
        assert (row.warning is not None) == (row.requests < 100)
        if row.warning:
            assert f"only {row.requests} requests at concurrency {row.concurrency}" in row.warning

    with pytest.raises(BadInputError, match="no ready model 'nope'"):
        triton_load_test(f"127.0.0.1:{server.http}", "nope", LoadTestSettings((1,), duration_s=0.1), log=print)

    json_path, md_path = write_triton_bench(rows, tmp_path / "out")
    record = json.loads(json_path.read_text())
    jsonschema.validate(record, load_schema("bench_triton"))
    assert [r["concurrency"] for r in record["rows"]] == [1, 4, 2]
    assert f"| {MODEL} | http | 4 | 1 |" in md_path.read_text()

    from resnext_deploy.cli import main

    url = f"http://127.0.0.1:{server.http}"
    args = ["bench-triton", "--dir", str(tiny_dir), "--url", url, "--concurrency", "2", "--duration", "0.5"]
    assert main([*args, "--batch-size", "2"]) == 0  # the CLI names the served model from the directory
    cli_record = json.loads((tiny_dir / "bench_triton.json").read_text())
    cli_rows = cli_record["rows"]
    assert [(r["concurrency"], r["batch_size"], r["errors"]) for r in cli_rows] == [(2, 2, 0)]
    # The record ties the numbers to the file DIR held under that model name, and to the machine.
    manifest = Manifest(tiny_dir)
    assert cli_record["models"] == {MODEL: "model.onnx"}
    assert cli_record["artifacts"]["model.onnx"] == manifest.entry("model.onnx").sha256
    assert cli_record["machine"]["cpu"] and "cpu flags" in cli_record["machine"]

    assert server.stop() == ExitCode.INTERRUPTED, server.log_tail()  # Ctrl-C: 130
    assert "server stopped" in server.log_tail()
    assert server.stdout_path.read_bytes() == b""  # the server's own log is never on stdout
    assert (tiny_dir / SERVER_LOG).stat().st_size > 0
    assert not _listen_addresses(server.http)


@needs_pytriton
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs OpenVINO: the openvino extra")
def test_serve_on_openvino_answers_like_onnx_runtime(tiny_dir: Path, tmp_path: Path):
    import tritonclient.http as http

    running = Server(tiny_dir, tmp_path / "serve.log", backend="openvino", model="resnext_tiny_openvino_fp32")
    try:
        running.wait_ready()
        x = np.random.default_rng(4).standard_normal((3, 3, 32, 32), dtype=np.float32)
        client = http.InferenceServerClient(f"127.0.0.1:{running.http}")
        request = http.InferInput("input", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        logits = client.infer(running.model, [request]).as_numpy("logits")
        client.close()
    finally:
        code = running.stop()
    np.testing.assert_allclose(logits, OnnxRuntimeRunner(tiny_dir / "model.onnx")(x), rtol=1e-4, atol=1e-5)
    assert code == ExitCode.INTERRUPTED and "on openvino" in running.log_tail()


@needs_pytriton
def test_serve_says_ready_only_when_the_model_is_and_classification_returns_class_names(tmp_path: Path):
    import tritonclient.http as http

    names = ["cat", "dog", "fox", "owl", "eel", "bee", "ant", "yak", "emu", "gnu"]
    directory = tmp_path / "d"
    _export_with_class_names(directory, names)
    running = Server(directory, tmp_path / "serve.log")
    client = http.InferenceServerClient(f"127.0.0.1:{running.http}")
    try:
        deadline = time.monotonic() + 90
        while "serving model.onnx" not in running.log_tail() and running.process.poll() is None:
            assert time.monotonic() < deadline, running.log_tail()
            time.sleep(0.05)
        assert client.is_model_ready(MODEL), "serve said it was serving before the model was ready"
        x = np.random.default_rng(5).standard_normal((2, 3, 32, 32), dtype=np.float32)
        request = http.InferInput("input", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        wanted = http.InferRequestedOutput("logits", class_count=3)
        top3 = client.infer(MODEL, [request], outputs=[wanted]).as_numpy("logits")
    finally:
        client.close()
        running.stop()
    expected = OnnxRuntimeRunner(directory / "model.onnx")(x)
    assert top3.shape == (2, 3)
    for row, logits in zip(top3, expected, strict=True):
        entries = [entry.decode().split(":") for entry in row]  # Triton's classification: score:index:label
        assert [int(index) for _, index, _ in entries] == list(np.argsort(-logits)[:3])
        assert [label for _, _, label in entries] == [names[int(index)] for _, index, _ in entries]


def _has_http_client() -> bool:
    """tritonclient[http]; the core install has tritonclient[grpc] only, whose http module refuses at import."""
    try:
        import tritonclient.http  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


def test_the_load_test_names_a_missing_http_client(monkeypatch: pytest.MonkeyPatch):
    if _has_http_client():
        monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(BackendUnavailableError, match=r"tritonclient\[http\].*`make setup-triton`"):
        triton_load_test("127.0.0.1:1", MODEL, LoadTestSettings((1,), duration_s=0.1), log=lambda _m: None)


@pytest.mark.skipif(not _has_http_client(), reason=f"needs tritonclient[http]: {EXTRA}")
def test_load_test_says_when_nothing_listens():
    (port,) = _free_ports(1)
    with pytest.raises(BadInputError, match=f"cannot reach a Triton server at 127.0.0.1:{port}"):
        settings = LoadTestSettings((1,), duration_s=0.1, timeout_s=2)
        triton_load_test(f"127.0.0.1:{port}", MODEL, settings, log=lambda _m: None)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` and the bytes of its files: what a refused run must leave as it was."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@needs_tritonclient
def test_a_rerun_removes_the_models_it_wrote_before_and_no_longer_writes(full_dir: Path, tmp_path: Path):
    out = tmp_path / "repo"
    make_triton_repo(full_dir, out, log=lambda _m: None)
    (out / "notes.txt").write_text("mine")
    (out / "someone_else").mkdir()
    (out / "someone_else" / "config.pbtxt").write_text('name: "someone_else"\n')
    for name in ("model.fp16.onnx", "model.fp16.engine"):  # as after a re-export that made FP32 alone
        (full_dir / name).unlink()
    messages: list[str] = []
    written = make_triton_repo(full_dir, out, log=messages.append)
    assert sorted(p.name for p in written) == [MODEL, "resnext_tiny_openvino_fp32"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [MODEL, "resnext_tiny_openvino_fp32", "someone_else"]
    assert (out / "notes.txt").read_text() == "mine"  # what it did not write stays
    assert (out / "someone_else" / "config.pbtxt").exists()
    removed = [m for m in messages if m.startswith("removed ")]
    assert len(removed) == 3 and all("no longer makes it" in m for m in removed)
    assert json.loads((out / ".resnext-deploy-repo.json").read_text())["models"] == [
        MODEL,
        "resnext_tiny_openvino_fp32",
    ]


@needs_tritonclient
@pytest.mark.parametrize("planted", ["2", "notes.md"])
def test_a_model_folder_holding_what_triton_repo_did_not_write_is_refused_untouched(
    tiny_dir: Path, tmp_path: Path, planted: str
):
    out = tmp_path / "repo"
    make_triton_repo(tiny_dir, out, log=lambda _m: None)
    target = out / MODEL / planted
    if planted.isdigit():  # the user's own version: Triton would serve it, not the new 1/
        target.mkdir()
        (target / "model.onnx").write_bytes(b"user's model")
    else:
        target.write_text("user's notes")
    before = _tree(out)
    expected = "version folder.*did not write" if planted.isdigit() else "not written by triton-repo"
    with pytest.raises(BadInputError, match=expected) as caught:
        make_triton_repo(tiny_dir, out, log=lambda _m: None)
    assert str(target) in str(caught.value)
    assert _tree(out) == before


@needs_tritonclient
def test_a_model_of_the_same_name_written_by_someone_else_is_refused(tiny_dir: Path, tmp_path: Path):
    out = tmp_path / "repo"
    (out / MODEL / "1").mkdir(parents=True)
    (out / MODEL / "config.pbtxt").write_text(f'name: "{MODEL}"\nplatform: "onnxruntime_onnx"\n')
    before = _tree(out)
    with pytest.raises(BadInputError, match="holds a model triton-repo did not write"):
        make_triton_repo(tiny_dir, out, log=lambda _m: None)
    assert _tree(out) == before


@needs_tritonclient
def test_each_model_folder_is_written_whole_or_not_at_all(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A failure while a model folder is written leaves no folder without its config, and no staging folder."""
    from resnext_deploy.serving import triton_repo

    out = tmp_path / "repo"

    def fail(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(triton_repo, "config_text", fail)  # after 1/model.onnx is copied
    with pytest.raises(OSError):
        make_triton_repo(tiny_dir, out, log=lambda _m: None)
    assert [p.name for p in out.iterdir()] == [".resnext-deploy-repo.json"]
    monkeypatch.undo()
    make_triton_repo(tiny_dir, out, log=lambda _m: None)
    first = (out / MODEL / "config.pbtxt").read_bytes()
    monkeypatch.setattr(triton_repo, "config_text", fail)
    with pytest.raises(OSError):
        make_triton_repo(tiny_dir, out, log=lambda _m: None)
    assert (out / MODEL / "config.pbtxt").read_bytes() == first  # the folder written before is kept whole
    assert sorted(p.name for p in out.iterdir()) == [".resnext-deploy-repo.json", MODEL, "resnext_tiny_openvino_fp32"]


@pytest.mark.slow
@needs_pytriton
def test_serve_answers_a_jpeg_with_verifys_top1_class_name_over_http_and_grpc(demo_dir: Path, tmp_path: Path):
    """serve's image model: a real JPEG's bytes in over HTTP and gRPC, the class name of verify's top-1 out."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    source = recorded_source(Manifest(demo_dir))
    image = digit_jpeg(tmp_path / "images")
    checked = take(open_dataset(image.parent.parent, source.preprocessing), 1).images  # verify's data loading
    expected = OnnxRuntimeRunner(demo_dir / "model.onnx")(checked)
    top1 = source.class_names[int(np.argmax(expected[0]))]
    running = Server(demo_dir, tmp_path / "serve.log", model=f"{source.arch}_onnx_fp32_image")
    try:
        running.wait_ready()
        encoded = np.array([[image.read_bytes()]], dtype=np.object_)
        for module, port in ((http, running.http), (grpc, running.grpc)):
            client = module.InferenceServerClient(f"127.0.0.1:{port}")
            request = module.InferInput("IMAGE", [1, 1], "BYTES")
            request.set_data_from_numpy(encoded)
            outputs = [module.InferRequestedOutput("CLASS"), module.InferRequestedOutput("logits", class_count=1)]
            result = client.infer(running.model, [request], outputs=outputs)
            client.close()
            assert result.as_numpy("CLASS").tolist() == [[top1.encode()]], module.__name__
            _score, index, label = result.as_numpy("logits")[0][0].decode().split(":")  # Triton's classification
            assert (int(index), label) == (int(np.argmax(expected[0])), top1), module.__name__
    finally:
        assert running.stop() == ExitCode.INTERRUPTED, running.log_tail()
