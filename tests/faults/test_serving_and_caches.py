"""Hostile requests to the served endpoint, stale and tampered caches, resources, protected files, offline runs.

Like the first two batteries (test_faults.py, test_hostile_inputs.py), every case asserts the
documented exit code, one ``error:`` line and no traceback, and that nothing is written outside ``--dir``;
where memory is the point, the case runs in a child process whose peak RSS is bounded. Cases that need
PyTriton live in tests/serving (they run in the Triton environment).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.util
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import (
    INT8_ONLY,
    MEMORY_BOUND,
    QUICK_BENCH,
    QUICK_PIPELINE,
    TINY,
    cli,
    fails,
    measured,
    snapshot,
    unchanged,
)
from PIL import Image

from resnext_deploy.artifacts import CALIBRATION_NAME, MANIFEST_NAME
from resnext_deploy.backends.openvino import CACHE_DIR, CACHE_SEAL
from resnext_deploy.cli import main
from resnext_deploy.data import ImageDataset, ImageFolder
from resnext_deploy.environment import cap_threads, usable_cpus
from resnext_deploy.errors import BadInputError, ExitCode
from resnext_deploy.export import export_onnx
from resnext_deploy.precision.search import SEARCH_FORMAT, SEARCH_NAME, CheckData, SearchKey, _key_json, _load_scores
from resnext_deploy.source import SourceOptions, resolve_source

REPO = Path(__file__).resolve().parents[2]


def child_env(home: Path) -> dict[str, str]:
    """A fresh process's environment: this checkout first on the path, HOME a folder the test watches."""
    return {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO), "RESNEXT_DEPLOY_DEBUG": ""}


# ----------------------------------------------------------------------------------------------
# Offline by default


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("strace"),
    reason="needs root (a network namespace) and strace",
)
def test_verify_makes_no_lookup_and_writes_nothing_under_home(tiny_dir: Path, tmp_path: Path) -> None:
    """In a namespace without a network, strace sees no resolver read and no internet socket; HOME stays empty."""
    home = tmp_path / "home"
    home.mkdir()
    trace = tmp_path / "trace.txt"
    command = ["unshare", "-n", "strace", "-f", "-qq", "-e", "trace=connect,openat", "-o", str(trace)]
    command += [sys.executable, "-m", "resnext_deploy", "verify", "--dir", str(tiny_dir), "--count", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env(home), cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    lines = trace.read_text().splitlines()
    lookups = [line for line in lines if "resolv.conf" in line or "AF_INET" in line]
    assert lookups == [], lookups[:5]
    assert list(home.rglob("*")) == []


@pytest.mark.slow
def test_bench_writes_nothing_under_home(tiny_dir: Path, tmp_path: Path) -> None:
    """bench draws its plot with matplotlib, whose font cache would otherwise go to ~/.cache/matplotlib."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in child_env(home).items() if k != "MPLCONFIGDIR"}
    command = [sys.executable, "-m", "resnext_deploy", "bench", "--dir", str(tiny_dir), "--backends", "onnxruntime"]
    command += ["--precisions", "fp32", *QUICK_BENCH]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tiny_dir / "bench.png").exists() and list(home.rglob("*")) == []


# ----------------------------------------------------------------------------------------------
# Protected files and the tool's own temporary files


@pytest.mark.parametrize(
    ("command", "target"),
    [
        (["verify", "--count", "2"], MANIFEST_NAME),
        (["verify", "--count", "2"], "model.onnx"),
        (["bench", "--backends", "onnxruntime", "--precisions", "fp32", *QUICK_BENCH], "model.onnx"),
        (["bench", "--backends", "onnxruntime", "--precisions", "fp32", *QUICK_BENCH], "verify.json"),
        (["verify", "--count", "2"], "report.md"),
    ],
)
def test_json_never_replaces_a_file_the_tool_owns(capsys, tiny_dir: Path, command: list[str], target: str) -> None:
    before = snapshot(tiny_dir)
    outcome = cli(capsys, command[0], "--dir", tiny_dir, *command[1:], "--json", tiny_dir / target)
    fails(outcome, ExitCode.BAD_INPUT, "owns", target)
    unchanged(tiny_dir, before)


def test_json_may_go_to_another_name_in_the_directory(capsys, tiny_dir: Path) -> None:
    outcome = cli(capsys, "verify", "--dir", tiny_dir, "--count", "2", "--json", tiny_dir / "mine.json")
    assert outcome.code in (ExitCode.OK, ExitCode.VERIFY_FAILED), outcome.err
    assert json.loads((tiny_dir / "mine.json").read_text())


# ----------------------------------------------------------------------------------------------
# Special files, cycles and deep nesting in recorded paths and manifests


def _record_checkpoint(directory: Path, checkpoint: Path) -> None:
    """The manifest now says model.onnx came from ``checkpoint`` (as a hostile or careless edit would)."""
    data = json.loads((directory / MANIFEST_NAME).read_text())
    source = data["artifacts"]["model.onnx"]["options"]["source"]
    source["checkpoint"], source["checkpoint_sha256"] = str(checkpoint), "0" * 64
    (directory / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize("kind", ["device", "fifo"])
@pytest.mark.parametrize(
    "command",
    [["verify", "--count", "2"], pytest.param(["bench", "--backends", "torch", *QUICK_BENCH], marks=pytest.mark.slow)],
)
def test_a_recorded_checkpoint_that_is_a_special_file_is_refused(
    capsys, tiny_dir: Path, tmp_path: Path, kind: str, command: list[str]
) -> None:
    special = Path("/dev/zero")
    if kind == "fifo":
        special = tmp_path / "weights.pth"
        os.mkfifo(special)
    _record_checkpoint(tiny_dir, special)
    outcome = cli(capsys, command[0], "--dir", tiny_dir, *command[1:])
    assert outcome.code in (ExitCode.BAD_INPUT, ExitCode.VERIFY_FAILED, ExitCode.OK), outcome.err
    assert "not a regular file" in outcome.err + outcome.out
    assert "Traceback" not in outcome.err


def test_manifest_parents_in_a_cycle_are_refused(capsys, tmp_path: Path, low_precision_template: Path) -> None:
    directory = tmp_path / "tiny"
    shutil.copytree(low_precision_template, directory)
    data = json.loads((directory / MANIFEST_NAME).read_text())
    fp16, int8 = data["artifacts"]["model.fp16.onnx"], data["artifacts"]["model.int8.onnx"]
    fp16["parent_sha256"], int8["parent_sha256"] = int8["sha256"], fp16["sha256"]
    (directory / MANIFEST_NAME).write_text(json.dumps(data))
    fails(cli(capsys, "verify", "--dir", directory, "--count", "2"), ExitCode.BAD_INPUT, "cycle", MANIFEST_NAME)


def test_a_deeply_nested_manifest_is_refused(capsys, tiny_dir: Path) -> None:
    (tiny_dir / MANIFEST_NAME).write_text("[" * 200_000 + "]" * 200_000)
    fails(cli(capsys, "verify", "--dir", tiny_dir, "--count", "2"), ExitCode.BAD_INPUT, "nested too deeply")


# ----------------------------------------------------------------------------------------------
# Numbers: non-finite and upper bounds


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["build-trt", "--int8", "--onnx-only", "--search-minutes", "nan"], "--search-minutes"),
        (["build-trt", "--int8", "--onnx-only", "--search-minutes", "inf"], "--search-minutes"),
        (["build-trt", "--max-batch", "1000000"], "--max-batch"),
        (["build-trt", "--trt-major", "1000"], "--trt-major"),
    ],
)
def test_out_of_range_numbers_are_refused_before_any_work(capsys, tiny_dir: Path, args: list[str], fragment: str):
    before = snapshot(tiny_dir)
    fails(cli(capsys, args[0], "--dir", tiny_dir, *args[1:]), ExitCode.BAD_INPUT, fragment)
    unchanged(tiny_dir, before)


def test_a_huge_static_batch_is_refused_before_the_directory_is_made(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "export", "--dir", tmp_path / "d", *TINY, "--static-batch", "1000000")
    fails(outcome, ExitCode.BAD_INPUT, "--static-batch")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------
# --threads


def test_threads_are_capped_at_the_usable_cpus_with_a_warning() -> None:
    said: list[str] = []
    assert cap_threads(10_000, said.append) == usable_cpus()
    assert len(said) == 1 and "--threads 10000" in said[0]
    assert cap_threads(1, said.append) == 1 and cap_threads(None, said.append) is None and len(said) == 1


@pytest.mark.slow  # a bench run
def test_bench_warns_and_runs_with_too_many_threads(capsys, tiny_dir: Path) -> None:
    args = ["--backends", "onnxruntime", "--precisions", "fp32", *QUICK_BENCH, "--threads", "400"]
    outcome = cli(capsys, "bench", "--dir", tiny_dir, *args)
    assert outcome.code == ExitCode.OK, outcome.err
    assert f"using {usable_cpus()}" in outcome.err


# ----------------------------------------------------------------------------------------------
# The served endpoint (Triton environment: `make test-triton`)

needs_pytriton = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None,
    reason="needs nvidia-pytriton: pip install 'resnext-deploy[triton]'",
)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _children(pid: int) -> list[int]:
    """Descendant process ids of ``pid``, from /proc."""
    parents = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(status.parent.name)] = int(status.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        todo += kids
    return found


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


class Served:
    """``resnext-deploy serve`` in a child process on free loopback ports, with its tritonserver's memory."""

    def __init__(self, directory: Path, tmp_path: Path, *extra: str) -> None:
        self.http, self.grpc, self.metrics = _free_ports(3)
        self.log = tmp_path / "serve.log"
        command = [sys.executable, "-m", "resnext_deploy", "serve", "--dir", str(directory), "--threads", "1"]
        command += ["--port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(  # a session of its own: a test can Ctrl-C its whole process group
                [*command, *extra], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
            )
        self.model = "resnext_tiny_onnx_fp32"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        import tritonclient.grpc as grpc

        client = grpc.InferenceServerClient(f"127.0.0.1:{self.grpc}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            with contextlib.suppress(Exception):
                if client.is_model_ready(self.model):
                    client.close()
                    return
            time.sleep(0.5)
        pytest.fail(f"serve was not ready after {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}")

    def server_pid(self) -> int:
        pids = [p for p in _children(self.process.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "tritonserver"]
        assert len(pids) == 1, pids
        return pids[0]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@pytest.fixture
def served(tiny_dir: Path, tmp_path: Path):
    running = Served(tiny_dir, tmp_path)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _http_infer(port: int, model: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """POST a raw inference request; the status and the start of the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")[:4000]
    finally:
        connection.close()


def _json_request(shape: list[int], data: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}).encode()


@needs_pytriton
@pytest.mark.slow
def test_serve_rejects_nan_inputs_on_both_protocols(served: Served) -> None:
    import numpy as np
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    status, text = _http_infer(served.http, served.model, _json_request([1, 3, 32, 32], [float("nan")] * 3072))
    assert status >= 400 and "NaN" in text, (status, text)
    client = grpc.InferenceServerClient(f"127.0.0.1:{served.grpc}")
    request = grpc.InferInput("input", [1, 3, 32, 32], "FP32")
    request.set_data_from_numpy(np.full((1, 3, 32, 32), np.inf, np.float32))
    with pytest.raises(InferenceServerException, match="NaN or Inf"):
        client.infer(served.model, [request])
    request.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    assert np.isfinite(client.infer(served.model, [request]).as_numpy("logits")).all()  # still up
    client.close()


@needs_pytriton
@pytest.mark.slow
def test_serve_exits_4_when_the_server_dies(served: Served) -> None:
    os.kill(served.server_pid(), signal.SIGKILL)
    assert served.process.wait(60) == ExitCode.BACKEND_UNAVAILABLE
    errors = [line for line in served.log.read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the Triton server died") and "--restarts" in errors[0]


@needs_pytriton
@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="known flake, seen in 1 of 3 runs: after the SIGKILL, the restarted PyTriton sometimes reports its "
    "tritonserver missing from the new workspace (CommandNotFound); not yet understood",
)
def test_serve_restarts_a_dead_server_only_when_asked(tiny_dir: Path, tmp_path: Path) -> None:
    running = Served(tiny_dir, tmp_path, "--restarts", "1")
    try:
        running.wait_ready()
        os.kill(running.server_pid(), signal.SIGKILL)
        time.sleep(2)
        running.wait_ready()
        assert "restarting it (1 of 1)" in running.log.read_text()
        os.kill(running.server_pid(), signal.SIGKILL)
        assert running.process.wait(60) == ExitCode.BACKEND_UNAVAILABLE
    finally:
        running.stop()


def _grpc_shape_claim(port: int, model: str, shape: list[int]) -> str:
    """A raw gRPC request claiming ``shape`` with 12 KB of data (the client library would refuse to send it)."""
    import numpy as np
    import tritonclient.grpc as grpc
    from tritonclient.grpc import service_pb2

    client = grpc.InferenceServerClient(f"127.0.0.1:{port}")
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend(shape)
    request.raw_input_contents.append(np.zeros(3072, np.float32).tobytes())
    try:
        client._client_stub.ModelInfer(request, timeout=30)
        return "accepted"
    except Exception as exc:  # noqa: BLE001 - grpc's RpcError carries the server's reason
        return exc.details() if hasattr(exc, "details") else str(exc)
    finally:
        client.close()


def _gzip_bomb(inflated_mib: int) -> bytes:
    """A gzip body of JSON-like text that inflates to ``inflated_mib`` MiB, made a MiB at a time."""
    squeezer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(squeezer.compress(b"0," * (1 << 19)) for _ in range(inflated_mib)) + squeezer.flush()


@needs_pytriton
@pytest.mark.slow
def test_the_http_front_refuses_what_tritonserver_cannot_take(served: Served) -> None:
    """Each of these took tritonserver 0.5 to 1 GB, or killed it, when its HTTP port was open (README, Serving)."""
    import numpy as np

    pid = served.server_pid()
    idle = _status_kb(pid, "VmHWM")
    zeros = [0.0] * 3072
    bomb = _gzip_bomb(512)
    assert len(bomb) < 600_000
    binary = np.zeros(3072, np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [2**31, 3, 32, 32], "datatype": "FP32"}
                | {"parameters": {"binary_data_size": len(binary)}}
            ]
        }
    ).encode()
    hostile = [
        (_json_request([2**31, 3, 16, 16], zeros), {}, 400, "claims"),
        (_json_request([2**19, 3, 16, 16], zeros), {}, 400, "claims"),
        (header + binary, {"Inference-Header-Content-Length": str(len(header))}, 400, "bytes of FP32"),
        (bomb, {"Content-Encoding": "gzip"}, 413, "inflates past"),
        (b"0" * (9 << 20), {}, 413, "takes at most"),
    ]
    for body, headers, status, fragment in hostile:
        answer = _http_infer(served.http, served.model, body, headers)
        assert answer[0] == status and fragment in answer[1], answer
        valid = _http_infer(served.http, served.model, _json_request([1, 3, 32, 32], zeros))
        assert valid[0] == 200 and len(json.loads(valid[1])["outputs"][0]["data"]) == 10  # still answering
    assert served.process.poll() is None and served.server_pid() == pid
    assert (_status_kb(pid, "VmHWM") - idle) < 100 * 1024  # kB: peak RSS within 100 MB of idle


@needs_pytriton
@pytest.mark.slow
def test_the_grpc_front_refuses_a_message_that_inflates_past_the_limit(served: Served) -> None:
    """tritonserver's gRPC frontend inflated such a message whole before refusing its batch size."""
    import grpc
    import numpy as np
    import tritonclient.grpc as triton_grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    pid = served.server_pid()
    idle = _status_kb(pid, "VmHWM")
    request = service_pb2.ModelInferRequest(model_name=served.model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend([2**13 // 2, 3, 32, 32])  # 48 MiB of zeros filling the shape: only the size is wrong
    request.raw_input_contents.append(bytes(2**12 * 3072 * 4))
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc}", options=options) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=120, compression=grpc.Compression.Gzip)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{served.grpc}")
    valid = triton_grpc.InferInput("input", [1, 3, 32, 32], "FP32")
    valid.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    assert client.infer(served.model, [valid]).as_numpy("logits").shape == (1, 10)  # still answering
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer(served.model, [valid])  # the streaming method goes through the front as a stream
    result, error = answers.get(timeout=60)
    client.stop_stream()
    client.close()
    assert error is None and result.as_numpy("logits").shape == (1, 10)
    assert (_status_kb(pid, "VmHWM") - idle) < 100 * 1024


@needs_pytriton
@pytest.mark.slow
def test_ctrl_c_to_the_process_group_exits_130_and_is_never_restarted(tiny_dir: Path, tmp_path: Path) -> None:
    running = Served(tiny_dir, tmp_path, "--restarts", "2")
    try:
        running.wait_ready()
        pid = running.server_pid()
        os.killpg(running.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert running.process.wait(60) == ExitCode.INTERRUPTED
    finally:
        running.stop()
    log = running.log.read_text()
    assert "restarting" not in log and "died" not in log, log[-2000:]
    assert "server stopped" in log
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    # Without -v, what tritonserver writes itself (NVML on a machine without a GPU) goes to its log, not here.
    assert "NVML" not in log and "Signal (2)" not in log, log[-2000:]


@needs_pytriton
@pytest.mark.slow
def test_no_http_leaves_grpc_which_checks_the_shape_before_allocating(tiny_dir: Path, tmp_path: Path) -> None:
    """With --no-http a 12 KB request claiming 800 MB is refused by batch size, and the server's peak stays put."""
    running = Served(tiny_dir, tmp_path, "--no-http")
    try:
        running.wait_ready()
        pid = running.server_pid()
        before = _status_kb(pid, "VmHWM")
        with pytest.raises(ConnectionRefusedError):
            _http_infer(running.http, running.model, _json_request([1, 3, 32, 32], [0.0] * 3072))
        assert "batch-size must be <= 32" in _grpc_shape_claim(running.grpc, running.model, [2**16, 3, 32, 32])
        assert _status_kb(pid, "VmHWM") - before < 50 * 1024  # kB: 800 MB if the claim were allocated
    finally:
        assert running.stop() == ExitCode.INTERRUPTED


# ----------------------------------------------------------------------------------------------
# Stale files, planted symlinks and huge numbers: serve and triton-repo

needs_tritonclient = pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="needs tritonclient: pip install 'resnext-deploy[triton]'"
)


def _has_http_client() -> bool:
    """tritonclient's HTTP client: only in the Triton environment (the core install has its gRPC part alone)."""
    try:
        return (
            importlib.util.find_spec("tritonclient.http") is not None and importlib.util.find_spec("gevent") is not None
        )
    except ImportError:
        return False


needs_http_client = pytest.mark.skipif(
    not _has_http_client(), reason="needs tritonclient[http]: the Triton environment (make setup-triton)"
)


@pytest.fixture
def stale_fp16_dir(tmp_path: Path, low_precision_template: Path) -> Path:
    """The tiny model with FP16 and INT8 files, then model.onnx re-exported from other weights (both now stale)."""
    directory = tmp_path / "tiny"
    shutil.copytree(low_precision_template, directory)
    data = json.loads((directory / MANIFEST_NAME).read_text())
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        data["artifacts"][name]["parent_sha256"] = "1" * 64  # made from a model.onnx that is gone
    (directory / MANIFEST_NAME).write_text(json.dumps(data))
    return directory


def test_serve_refuses_a_stale_file_as_bad_input(capsys, stale_fp16_dir: Path) -> None:
    outcome = cli(capsys, "serve", "--dir", stale_fp16_dir, "--precision", "fp16", "--port", str(_free_ports(1)[0]))
    fails(outcome, ExitCode.BAD_INPUT, "model.fp16.onnx is stale")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-batch-size", "1000000"), ("--restarts", "-1"), ("--max-request-mb", "0"), ("--max-request-mb", "nan")],
)
def test_serve_refuses_out_of_range_numbers_as_bad_input(capsys, tiny_dir: Path, flag: str, value: str) -> None:
    fails(cli(capsys, "serve", "--dir", tiny_dir, flag, value), ExitCode.BAD_INPUT, flag)


@needs_tritonclient
def test_triton_repo_skips_stale_files_with_the_reason(capsys, stale_fp16_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    outcome = cli(capsys, "triton-repo", "--dir", stale_fp16_dir, "--out", out)
    assert outcome.code == ExitCode.OK, outcome.err
    assert "skipped model.fp16.onnx: stale" in outcome.err and "skipped model.int8.onnx: stale" in outcome.err
    models = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert models == ["resnext_tiny_onnx_fp32", "resnext_tiny_openvino_fp32"]


@needs_tritonclient
def test_triton_repo_never_writes_through_a_symlink_planted_in_out(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "resnext_tiny_onnx_fp32").symlink_to(elsewhere)
    outcome = cli(capsys, "triton-repo", "--dir", tiny_dir, "--out", out)
    fails(outcome, ExitCode.BAD_INPUT, "is a symlink")
    assert list(elsewhere.iterdir()) == []


@needs_tritonclient
@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-batch-size", str(2**70)), ("--max-queue-delay-us", str(2**70)), ("--instances", str(2**40))],
)
def test_triton_repo_refuses_huge_numbers(capsys, tiny_dir: Path, tmp_path: Path, flag: str, value: str) -> None:
    fails(cli(capsys, "triton-repo", "--dir", tiny_dir, "--out", tmp_path / "repo", flag, value), ExitCode.BAD_INPUT)
    assert not (tmp_path / "repo").exists()


@needs_tritonclient
def test_the_printed_tritonserver_line_is_shell_quoted(capsys, tmp_path: Path, tiny_export_template: Path) -> None:
    directory = tmp_path / "my dir; rm -rf x"
    shutil.copytree(tiny_export_template, directory)
    out = tmp_path / "repo $HOME"
    outcome = cli(capsys, "triton-repo", "--dir", directory, "--out", out)
    assert outcome.code == ExitCode.OK, outcome.err
    line = next(line for line in outcome.err.splitlines() if line.startswith("serve it with: "))
    assert shlex.split(line.removeprefix("serve it with: ")) == ["tritonserver", "--model-repository", str(out)]


# ----------------------------------------------------------------------------------------------
# Images and paths: extreme aspect ratios, Latin-1 names, non-UTF-8 arguments, long components


def _image_folder(root: Path) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 60, 80, 120)).save(root / label / f"{i}.png")
    return root


@pytest.mark.slow  # the tool in a child process, its memory measured
def test_a_one_pixel_high_png_is_skipped_in_bounded_memory(tiny_dir: Path, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data")
    Image.new("L", (1_000_000, 1)).save(data / "a" / "wide.png")  # 3 KB; 32 x 32,000,000 once resized
    assert (data / "a" / "wide.png").stat().st_size < 10_000
    code, err, peak = measured(tmp_path, "verify", "--dir", tiny_dir, "--data", data, "--backends", "onnxruntime")
    assert code == ExitCode.OK, err
    assert "wide.png: 1000000x1 is more than 100:1" in err
    assert peak < MEMORY_BOUND


def test_a_latin1_file_name_in_the_data_folder_is_read(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data")
    (data / "a" / "0.png").rename(data / "a" / os.fsdecode(b"caf\xe9.png"))
    outcome = cli(capsys, "verify", "--dir", tiny_dir, "--data", data, "--backends", "onnxruntime")
    assert outcome.code == ExitCode.OK, outcome.err
    assert json.loads((tiny_dir / "verify.json").read_text())["results"][0]["n"] == 6


def test_calibration_fingerprint_follows_file_contents(tmp_path: Path) -> None:
    """An image rewritten in place with the same name and size is other data."""
    data = _image_folder(tmp_path / "data")
    pre = resolve_source(SourceOptions("resnext_tiny")).preprocessing
    before = ImageDataset(ImageFolder.scan(data), pre, None, seed=0).fingerprint
    image = data / "a" / "1.png"
    size = image.stat().st_size
    Image.new("RGB", (40, 40), (61, 80, 120)).save(image)
    assert image.stat().st_size == size
    assert ImageDataset(ImageFolder.scan(data), pre, None, seed=0).fingerprint != before


def test_a_non_utf8_dir_is_refused_before_any_work(capsys, tmp_path: Path) -> None:
    directory = tmp_path / os.fsdecode(b"d\xe9")
    fails(cli(capsys, "export", "--dir", directory, *TINY), ExitCode.BAD_INPUT, "not valid UTF-8")
    assert not directory.exists()


def test_a_non_utf8_data_folder_is_refused_before_the_pipeline_starts(capsys, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / os.fsdecode(b"donn\xe9es"))
    outcome = cli(capsys, "pipeline", *TINY, "--dir", tmp_path / "o", "--data", data, *QUICK_PIPELINE)
    fails(outcome, ExitCode.BAD_INPUT, "not valid UTF-8")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["export", *TINY], ["verify"]])
def test_a_path_component_over_255_bytes_is_bad_input(capsys, tiny_dir: Path, tmp_path: Path, command) -> None:
    long = "x" * 300
    target = tmp_path / long / "d" if command[0] == "export" else tiny_dir
    extra = [] if command[0] == "export" else ["--data", tmp_path / long]
    fails(cli(capsys, command[0], "--dir", target, *command[1:], *extra), ExitCode.BAD_INPUT, "too long")


# ----------------------------------------------------------------------------------------------
# bench-triton against servers that are not what they claim


class _FakeServer(http.server.BaseHTTPRequestHandler):
    """Answers Triton's health and metadata paths with ``routes``; anything else is a 404 HTML page."""

    routes: dict[str, tuple[int, str]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status, body = self.routes.get(self.path, (404, "<html>not found</html>"))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _fake_server(routes: dict[str, tuple[int, str]]):
    handler = type("Handler", (_FakeServer,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


_LIVE = {"/v2/health/live": (200, ""), "/v2/models/m/ready": (200, "")}


@needs_http_client
@pytest.mark.parametrize(
    ("routes", "fragment"),
    [
        ({}, "no ready model"),  # a web server that is not Triton
        ({**_LIVE, "/v2/models/m": (200, '{"inputs": "nope"}')}, "not Triton's"),
        ({**_LIVE, "/v2/models/m": (200, "[" * 100_000)}, "m"),
        (
            {
                **_LIVE,
                "/v2/models/m": (
                    200,
                    json.dumps(
                        {
                            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 30000, 30000]}],
                            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
                        }
                    ),
                ),
            },
            "MiB per request",
        ),
    ],
)
def test_bench_triton_against_a_server_that_is_not_triton(capsys, tiny_dir: Path, routes, fragment: str) -> None:
    with _fake_server(routes) as url:
        outcome = cli(capsys, "bench-triton", "--dir", tiny_dir, "--url", url, "--model", "m", "--duration", "0.1")
    fails(outcome, ExitCode.BAD_INPUT, fragment)
    assert not (tiny_dir / "bench_triton.json").exists()


@needs_http_client
@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999", "grpc://:::", "http://"])
def test_bench_triton_with_a_malformed_url(capsys, tiny_dir: Path, url: str) -> None:
    outcome = cli(capsys, "bench-triton", "--dir", tiny_dir, "--url", url, "--duration", "0.1")
    fails(outcome, ExitCode.BAD_INPUT)


@needs_http_client
def test_bench_triton_with_an_impossible_port_says_one_line_and_no_traceback(tiny_dir: Path, tmp_path: Path) -> None:
    """tritonclient's __del__ printed an AttributeError traceback after the error, at exit (fresh process)."""
    command = [sys.executable, "-m", "resnext_deploy", "bench-triton", "--dir", str(tiny_dir)]
    done = subprocess.run(
        [*command, "--url", "localhost:99999", "--duration", "0.1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stderr.splitlines() == [
        "error: cannot use 'localhost:99999' as a Triton address: give host:port with a port from 1 to 65535 "
        "(e.g. 127.0.0.1:8000)"
    ], done.stderr


def _ready_routes(*models: str) -> dict[str, tuple[int, str]]:
    return {"/v2/health/live": (200, ""), **{f"/v2/models/{m}/ready": (200, "") for m in models}}


@needs_http_client
def test_bench_triton_picks_the_one_ready_model_of_dir_or_lists_them(capsys, tiny_dir: Path) -> None:
    from resnext_deploy.serving.load_test import served_model

    said: list[str] = []
    with _fake_server(_ready_routes("resnext_tiny_onnx_int8", "unrelated")) as url:
        assert served_model(url, tiny_dir, log=said.append) == "resnext_tiny_onnx_int8"  # serve --precision int8
    assert "resnext_tiny_onnx_int8" in said[0]
    with _fake_server(_ready_routes("resnext_tiny_onnx_fp32", "resnext_tiny_openvino_fp32")) as url:
        outcome = cli(capsys, "bench-triton", "--dir", tiny_dir, "--url", url, "--duration", "0.1")
    fails(
        outcome, ExitCode.BAD_INPUT, "several", "ready: resnext_tiny_onnx_fp32, resnext_tiny_openvino_fp32", "--model"
    )
    with _fake_server(_ready_routes()) as url:
        outcome = cli(capsys, "bench-triton", "--dir", tiny_dir, "--url", url, "--duration", "0.1")
    fails(outcome, ExitCode.BAD_INPUT, "none of", "--model")
    assert not (tiny_dir / "bench_triton.json").exists()


def test_a_busy_machine_is_said_in_bench_triton_results(tmp_path: Path) -> None:
    from resnext_deploy.serving.load_test import LoadRow, busy_warning, write_triton_bench

    assert busy_warning(None) is None and busy_warning(0.05) is None
    row = LoadRow("u", "http", "m", 1, 1, 1.0, 10, 0, 10.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    json_path, md_path = write_triton_bench([row], tmp_path, other_cpu=0.6)
    record = json.loads(json_path.read_text())
    assert record["load"]["other_cpu"] == 0.6 and "60%" in record["load"]["warning"]
    assert "Warning: the machine was busy" in md_path.read_text()


# ----------------------------------------------------------------------------------------------
# pipeline: each step's error keeps its documented code


@pytest.mark.slow
def test_pipeline_with_too_few_calibration_images_is_exit_3(capsys, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "few")
    args = ["--dir", tmp_path / "o", "--calib-dir", data, *QUICK_PIPELINE, "--count", "4"]
    outcome = cli(capsys, "pipeline", *TINY, *args)
    line = fails(outcome, ExitCode.BAD_INPUT, "pipeline:", "int8 ONNX (model.int8.onnx was not made)")
    assert (tmp_path / "o" / "report.md").exists(), line


# ----------------------------------------------------------------------------------------------
# Caches: read field by field; a hand edit is exit 3 naming the file and how to drop it


@pytest.fixture(scope="module")
def calibrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with model.int8.onnx and the calibration.json it was made from (read-only: copy it)."""
    directory = tmp_path_factory.mktemp("calibrated") / "demo"
    directory.mkdir()
    export_onnx(resolve_source(), directory, log=lambda _m: None)
    assert main(["build-trt", "--dir", str(directory), *INT8_ONLY]) == ExitCode.OK
    return directory


def _nan(data: dict) -> None:
    next(iter(data["tensors"].values()))["amax"] = float("nan")


def _negative(data: dict) -> None:
    next(iter(data["tensors"].values()))["amax"] = -1.0


def _zero(data: dict) -> None:
    entry = next(entry for entry in data["tensors"].values() if max(abs(entry["min"]), abs(entry["max"])) > 0)
    entry["amax"] = 0.0


def _wrong_type(data: dict) -> None:
    data["count"] = "many"


def _nested(data: dict) -> None:
    next(iter(data["tensors"].values()))["min"] = [[[[1.0]]]]


@pytest.mark.slow
@pytest.mark.parametrize("edit", [_nan, _negative, _zero, _wrong_type, _nested])
def test_an_edited_calibration_json_is_exit_3_naming_it(capsys, calibrated_template: Path, tmp_path: Path, edit):
    directory = Path(shutil.copytree(calibrated_template, tmp_path / "demo"))
    (directory / "model.int8.onnx").unlink()  # so that the next run reads the calibration again
    path = directory / CALIBRATION_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    outcome = cli(capsys, "build-trt", "--dir", directory, *INT8_ONLY)
    fails(outcome, ExitCode.BAD_INPUT, str(path), "delete it (rm ")


def test_an_edited_search_ranking_is_exit_3_naming_it(tmp_path: Path) -> None:
    key = SearchKey("m", "c", CheckData("f", 40), 99.99)
    path = tmp_path / SEARCH_NAME
    for scores, fragment in [
        ("nope", "not an object"),
        ({"conv1": "high"}, "not a finite number"),
        ({"conv1": float("nan")}, "not a finite number"),
        ({"conv1": -1.0}, "not a finite number"),
        ({"ghost": 1.0}, "does not quantize"),
    ]:
        path.write_text(json.dumps({"format": SEARCH_FORMAT, "key": _key_json(key), "scores": scores}))
        with pytest.raises(BadInputError, match=re.escape(fragment)) as caught:
            _load_scores(path, key, ["conv1", "conv2"])
        assert str(path) in str(caught.value) and "delete it" in str(caught.value)
    path.write_text(
        json.dumps({"format": SEARCH_FORMAT, "key": _key_json(key), "scores": {"conv2": 0.5, "conv1": 0.1}})
    )
    assert _load_scores(path, key, ["conv1", "conv2"]) == {"conv2": 0.5, "conv1": 0.1}
    path.write_text(
        json.dumps({"format": SEARCH_FORMAT, "key": _key_json(replace(key, model="other")), "scores": {"x": 1}})
    )
    assert _load_scores(path, key, ["conv1", "conv2"]) == {}  # another model's ranking: measured again


# ----------------------------------------------------------------------------------------------
# OpenVINO's compiled-model cache

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs the openvino extra")
OV_VERIFY = ["--backends", "openvino", "--precisions", "fp32", "--count", "4"]


@needs_openvino
def test_a_corrupted_openvino_blob_is_recompiled_not_trusted(capsys, tiny_dir: Path) -> None:
    assert cli(capsys, "verify", "--dir", tiny_dir, *OV_VERIFY).code == ExitCode.OK
    blobs = list((tiny_dir / CACHE_DIR).rglob("*.blob"))
    assert blobs and list((tiny_dir / CACHE_DIR).rglob(CACHE_SEAL))
    for blob in blobs:  # same size, other bytes: what a bad disk or a hand edit leaves
        data = bytearray(blob.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * len(data[len(data) // 2 : len(data) // 2 + 4096])
        blob.write_bytes(bytes(data))
    outcome = cli(capsys, "verify", "--dir", tiny_dir, *OV_VERIFY)
    assert outcome.code == ExitCode.OK, outcome.err + outcome.out
    assert all(blob.read_bytes() != data for blob in blobs if blob.exists())


@needs_openvino
def test_a_symlinked_openvino_cache_is_never_followed(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tiny_dir / CACHE_DIR).symlink_to(elsewhere)
    outcome = cli(capsys, "verify", "--dir", tiny_dir, *OV_VERIFY)
    assert outcome.code == ExitCode.OK, outcome.err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_excluding_every_node_is_refused_rather_than_an_int8_file_without_int8(capsys, tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    directory.mkdir()
    export_onnx(resolve_source(), directory, log=lambda _m: None)
    outcome = cli(capsys, "build-trt", "--dir", directory, *INT8_ONLY, "--exclude", "*")
    fails(outcome, ExitCode.BAD_INPUT, "left in INT8")
    assert not (directory / "model.int8.onnx").exists()


def test_bench_triton_results_appear_in_the_report(capsys, tiny_dir: Path) -> None:
    from resnext_deploy.serving.load_test import LoadRow, write_triton_bench

    model = "resnext_tiny_onnx_fp32"
    row = LoadRow("http://127.0.0.1:8000", "http", model, 4, 8, 3.0, 300, 0, 100.0, 800.0, 9.5, 11.0, 14.25, 10.0, 20.0)
    json_path, _ = write_triton_bench([row], tiny_dir, other_cpu=0.5)
    unverified = ExitCode.VERIFY_FAILED  # no verify.json: the report is written, and its status is NOT VERIFIED
    assert cli(capsys, "report", "--dir", tiny_dir).code == unverified
    report = (tiny_dir / "report.md").read_text()
    section = report[report.index("## Triton load test") :]
    assert f"| {model} | http | 4 | 8 | 100.0 | 800.0 | 9.50 | 11.00 | 14.25 | 0 |" in section
    assert "Warning: the machine was busy" in section and "Out of date" not in section

    record = json.loads(json_path.read_text())
    record["artifacts"]["model.onnx"] = "0" * 64  # measured on another model.onnx than DIR holds now
    json_path.write_text(json.dumps(record))
    assert cli(capsys, "report", "--dir", tiny_dir).code == unverified
    assert f"model.onnx (model {model}) changed since this load test" in (tiny_dir / "report.md").read_text()

    record["rows"][0]["requests_per_s"] = "fast"
    json_path.write_text(json.dumps(record))
    fails(cli(capsys, "report", "--dir", tiny_dir), ExitCode.BAD_INPUT, str(json_path), "bench-triton again")
