"""A real Triton Inference Server on this machine, via PyTriton, serving a CPU runner from the backend registry.

PyTriton's wheel ships ``tritonserver`` and its Python backend. Triton batches concurrent requests
(dynamic batching) and hands each batch to a runner (ONNX Runtime by default, or OpenVINO) opened
through :mod:`resnext_deploy.backends.registry` in this process. tritonserver's own HTTP and gRPC ports
are on 127.0.0.1; the ports clients reach (loopback unless told otherwise) are answered by checking fronts
(:mod:`.front`, :mod:`.grpc_front`) that refuse what this tritonserver cannot take. It needs PyTriton,
which needs numpy < 2: ``make setup-triton`` (a checkout) or the ``triton`` extra in an environment of
its own.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import stat
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from ..artifacts import ONNX_FILES, Manifest
from ..backends.base import Runner
from ..backends.registry import discover_runners
from ..errors import BackendUnavailableError, BadInputError
from ..patches import pytriton_labels
from ..source import recorded_source
from .front import HttpFront, default_body_limit, free_loopback_ports
from .grpc_front import GrpcFront
from .image_input import CLASS_OUTPUT, IMAGE_INPUT, image_model_name, make_image_infer
from .options import ServeOptions
from .repo_model import LABELS_FILE, labels_text, onnx_io
from .triton_repo import INSTALL_HINT, MODEL_NAME_RE, default_model_name

if TYPE_CHECKING:
    from pytriton.triton import Triton

SERVER_LOG = "triton_server.log"  # tritonserver's own log, in the artifact directory unless --verbose
EXIT_TIMEOUT_S = 5  # in-flight requests get this long at shutdown; open client connections do not hold it up
WORKSPACE_PREFIX = "resnext-deploy-serve-"
ALIVE_CHECK_S = 1.0  # how often serve checks that tritonserver still runs
# serve's own readiness question; a tritonserver killed meanwhile can leave its port accepting but never answering
READY_TIMEOUT_S = 10.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _workspace() -> Iterator[Path]:
    """PyTriton's workspace in a temporary folder named after this process, removed when serving ends.

    PyTriton's default, a folder under the home cache, outlives a SIGKILLed server; here the
    workspaces of ``serve`` processes that no longer exist are removed before a new one is made.
    """
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{WORKSPACE_PREFIX}*"):
        pid = stale.name[len(WORKSPACE_PREFIX) :].split("-", 1)[0]
        with contextlib.suppress(OSError):
            mine = stat.S_ISDIR(stale.lstat().st_mode) and stale.lstat().st_uid == os.getuid()
            if mine and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
    base = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-"))
    try:
        yield base / "workspace"  # PyTriton creates this folder itself and refuses an existing one
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _check_numpy() -> None:
    """Refuse a NumPy that PyTriton does not declare support for.

    Observed with PyTriton 0.7.0 (``numpy<2``) under NumPy 2.x: the model loads, and every response
    carries an empty output tensor. Pip never installs that pair; a hand-made environment can.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    for text in metadata.requires("nvidia-pytriton") or []:
        requirement = Requirement(text)
        if requirement.name == "numpy" and not requirement.specifier.contains(np.__version__, prereleases=True):
            raise BackendUnavailableError(
                f"PyTriton {metadata.version('nvidia-pytriton')} needs numpy{requirement.specifier}, but numpy "
                f"{np.__version__} is installed (its Python backend then answers with empty outputs); {INSTALL_HINT}"
            )


@contextlib.contextmanager
def interpreter_libpython_first(log: Callable[[str], None] = print) -> Iterator[None]:
    """Put this interpreter's ``libpython`` ahead of the system's for the server that starts inside the block.

    Triton's Python backend stub links ``libpython3.X.so.1.0`` dynamically; without help the loader
    takes the system's copy (e.g. Debian's 3.11.2), whose ABI can differ from the running interpreter's
    (3.11.7 here), and the model fails to start (``'_thread.RLock' object has no attribute
    '_recursion_count'``). PyTriton copies ``os.environ`` when it launches ``tritonserver``, and the stubs
    inherit the server's environment, so the variable is set only while the server starts.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and soname and (Path(libdir) / soname).exists()):
        log(
            "warning: this Python has no shared libpython; Triton's Python backend will load the system's "
            f"{soname or 'libpython'}, which must be the same Python version"
        )
        yield
        return
    before = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{before}" if before else libdir
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = before


def _check_port(flag: str, host: str, port: int) -> None:
    """Refuse a port that is taken now: tritonserver would exit, and PyTriton wait two minutes to say so."""
    if not 1 <= port <= 65535:
        raise BadInputError(f"{flag} must be between 1 and 65535, got {port}")
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BadInputError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another {flag}") from None


def _load_error(exc: Exception) -> str:
    """The first line of a Triton load error and, from the traceback inside it, the line naming the cause."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    causes = [line for line in lines[1:] if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return lines[0][:200] + (f" ... {causes[-1][:200]}" if causes else "")


def serve(
    directory: str | Path,
    options: ServeOptions = ServeOptions(),
    log: Callable[[str], None] = print,
    server_log: str | Path | None = None,
) -> None:
    """Serve ``DIR``'s ONNX file of ``options.precision`` on its backend's CPU runner until Ctrl-C or SIGTERM.

    HTTP on ``port``, gRPC on ``grpc_port`` (default port+1), metrics on ``metrics_port`` (default
    port+2). The model is named like the ``triton-repo`` model of the same file
    (``<arch>_onnx_<precision>``, ``<arch>_openvino_<precision>``), so clients and load tests address both
    alike. A ``max_batch_size`` of 1 switches batching off; ``max_queue_delay_us`` is how long Triton may hold
    a request to fill a batch.
    tritonserver's own log goes to ``server_log``, or to stderr when it is None; never to stdout.
    A server that dies is restarted at most ``restarts`` times (opt-in); then serve fails (exit 4), never exit 0.
    ``http`` False serves gRPC alone. tritonserver listens on loopback ports of its own; ``port`` is
    answered by :class:`~resnext_deploy.serving.front.HttpFront`, which refuses a body over ``max_request``
    bytes (default: :func:`~resnext_deploy.serving.front.default_body_limit`), a gzip body inflating past it
    and a shape the body does not fill, and ``grpc_port`` by
    :class:`~resnext_deploy.serving.grpc_front.GrpcFront`, which refuses a message over the same limit once
    decompressed; neither reaches tritonserver.
    Beside it, ``<model>_image`` takes encoded JPEG or PNG bytes (``IMAGE``) and returns the logits and the top
    class's name (``CLASS``), preprocessed as ``verify`` does (:mod:`.image_input`).
    """
    directory = Path(directory)
    file_name = ONNX_FILES[options.precision]
    model_name = _checked_model_name(directory, options, file_name, log)
    try:  # every module serve uses, before any work
        for module in ("decorators", "exceptions", "model_config", "triton"):
            importlib.import_module(f"pytriton.{module}")
        importlib.import_module("tritonclient.utils")
    except ImportError as exc:
        raise BackendUnavailableError(f"serve needs PyTriton ({exc.name} is missing); {INSTALL_HINT}") from None
    _check_numpy()
    found = discover_runners(
        directory, (options.backend,), (options.precision,), options.threads, required=(options.backend,)
    )
    usable = [c for c in found.candidates if c.device == "cpu" and c.artifact == file_name]
    if not usable:
        raise BadInputError(
            f"backend {options.backend} does not run {file_name} on the CPU; use onnxruntime or openvino"
        )
    if usable[0].open is None:
        raise BackendUnavailableError(f"backend {options.backend} cannot serve {file_name}: {usable[0].skipped}")
    open_runner = usable[0].open
    runners: list[Runner] = []
    try:
        runners += [open_runner() for _ in range(options.batching.instances)]
        _Server(directory, options, file_name, model_name, runners, log, server_log).run()
    finally:
        for runner in runners:
            runner.close()


def _checked_model_name(directory: Path, options: ServeOptions, file_name: str, log: Callable[[str], None]) -> str:
    """The served model's name, once DIR's file is current and every port is free; bad input otherwise."""
    precision = options.precision
    hint = "run `resnext-deploy export` first" if precision == "fp32" else f"make the {precision} ONNX file first"
    manifest = Manifest(directory)
    manifest.require(file_name, hint)
    if stale := manifest.stale_reason(file_name):
        raise BadInputError(f"{directory / file_name} is stale: {stale}; {hint}")
    model_name = options.name or default_model_name(directory, precision, options.backend)
    if not MODEL_NAME_RE.match(model_name):
        raise BadInputError(f"--name {model_name!r} may hold only letters, digits, '_', '-' and '.'")
    if not ipaddress.ip_address(options.address).is_loopback:
        log(f"warning: binding to {options.address}: anyone who can reach this address can send requests")
    for flag, value in zip(("--port", "--grpc-port", "--metrics-port"), options.ports, strict=True):
        _check_port(flag, options.address, value)
    return model_name


class _Server:
    """One ``serve`` run: the checking fronts, and each tritonserver started behind them with both models bound.

    A runner serves the tensor and the image model alike; each has its lock, since OpenVINO's is not thread-safe.
    """

    def __init__(
        self,
        directory: Path,
        options: ServeOptions,
        file_name: str,
        model_name: str,
        runners: list[Runner],
        log: Callable[[str], None],
        server_log: str | Path | None,
    ) -> None:
        self.options, self.file_name, self.model_name, self.log = options, file_name, model_name, log
        self.server_log = server_log
        self.runners = [(runner, threading.Lock()) for runner in runners]
        (self.image,), (self.logits,) = onnx_io(directory / file_name)
        self.source = recorded_source(Manifest(directory))
        self.image_name = image_model_name(model_name)
        self.body_limit = options.max_request or default_body_limit(options.max_batch_size, self.image.dims[1:])
        # tritonserver's own HTTP and gRPC ports, behind the fronts on --port and --grpc-port
        self.triton_http_port, self.triton_grpc_port = free_loopback_ports(2, avoid=options.ports)

    def run(self) -> None:
        """Serve until stopped, restarting a server that dies at most ``restarts`` times; then exit 4."""
        from pytriton.exceptions import PyTritonError
        from tritonclient.utils import InferenceServerException

        options, log = self.options, self.log
        if self.server_log is not None:
            log(f"Triton server log: {self.server_log}")
        _, grpc_port, _ = options.ports
        fronts: list[HttpFront | GrpcFront] = [
            GrpcFront(options.address, grpc_port, self.triton_grpc_port, self.body_limit, log)
        ]
        if options.http:
            fronts.append(HttpFront(options.address, options.port, self.triton_http_port, self.body_limit, log))
        limit_mb = self.body_limit / 2**20
        log(f"requests are checked before Triton reads them: messages up to {limit_mb:.1f} MiB (decompressed)")
        stop = _StopSignals()
        try:
            for front in fronts:
                front.start()
            for attempt in range(options.restarts + 1):
                if attempt:
                    log(f"warning: the Triton server died; restarting it ({attempt} of {options.restarts})")
                self._serve_once()
                stop.settle()  # a Ctrl-C to the process group also stops tritonserver: that is no crash
            where = self.server_log if self.server_log is not None else "its log above"
            raise BackendUnavailableError(
                f"the Triton server died (see {where}); serving stopped"
                + ("" if options.restarts else " (--restarts N restarts it up to N times)")
            )
        except KeyboardInterrupt:
            pass
        except (PyTritonError, InferenceServerException) as exc:
            if stop.received is None:
                raise BackendUnavailableError(
                    f"Triton could not serve {self.file_name}: {_load_error(exc)} (the server log has the details)"
                ) from None
        finally:
            stop.restore()
            for front in fronts:
                front.stop()
        log("server stopped")
        if stop.received == signal.SIGINT:
            raise KeyboardInterrupt  # exit 130, as for any command stopped by Ctrl-C

    def _serve_once(self) -> None:
        """Start tritonserver, bind the models, and return when the server is gone; Ctrl-C raises through."""
        from pytriton.triton import Triton, TritonConfig
        from tritonclient.utils import InferenceServerException

        options, log = self.options, self.log
        http_port, grpc_port, metrics_port = options.ports
        config = TritonConfig(
            http_address="127.0.0.1",
            http_port=self.triton_http_port,
            grpc_address="127.0.0.1",
            grpc_port=self.triton_grpc_port,
            metrics_address=options.address,
            metrics_port=metrics_port,
            allow_http=options.http,
            exit_timeout_secs=EXIT_TIMEOUT_S,
            log_file=None if self.server_log is None else Path(self.server_log).absolute(),
        )
        # PyTriton prints what tritonserver writes on its stdout and stderr ("Error: Failed to initialize NVML" on
        # a machine without a GPU) on this process's stdout; results alone belong there. It goes to the server log
        # (beside Triton's own lines), or to stderr with -v.
        with (
            _server_output(self.server_log) as output,
            contextlib.redirect_stdout(output),
            interpreter_libpython_first(log),
            _workspace() as workspace,
            self._labels(),
            Triton(config=config, workspace=workspace) as triton,
        ):
            self._bind(triton)
            triton.run()  # starts tritonserver and loads the model, so that "serving" below means ready
            ready_port = http_port if options.http else grpc_port  # with --no-http, only gRPC answers
            host = f"[{options.address}]" if ":" in options.address else options.address
            try:
                for served in (self.model_name, self.image_name):
                    _require_ready(f"{host}:{ready_port}", served, options.http)
            except (OSError, InferenceServerException):
                if triton.is_alive():
                    raise
                return  # it died while starting: reported (or restarted) like any other death
            self._say_serving()
            # Not triton.serve(): it swallows Ctrl-C and returns the same way as when the server dies.
            triton.run()
            while triton.is_alive():
                time.sleep(ALIVE_CHECK_S)

    def _labels(self) -> contextlib.AbstractContextManager[None]:
        """Triton's labels.txt for both models, as triton-repo writes it, so classification requests return names."""
        labels = self.source.class_names
        if not labels or self.logits.dims[-1] != len(labels):
            return contextlib.nullcontext()
        return pytriton_labels((self.model_name, self.image_name), self.logits.name, LABELS_FILE, labels_text(labels))

    def _bind(self, triton: Triton) -> None:
        """The image model, then the tensor model: PyTriton loads them in this order, so the one clients and load
        tests wait for is ready last."""
        from pytriton.decorators import batch
        from pytriton.exceptions import PyTritonValidationError
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

        image, logits, pre = self.image, self.logits, self.source.preprocessing  # what verify applies to DIR's images
        batching = self.options.batching
        model_config = ModelConfig(
            max_batch_size=self.options.max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=batching.max_queue_delay_us),
        )

        def make_infer(runner: Runner, lock: threading.Lock):
            @batch
            def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
                images = inputs[image.name]
                if not np.isfinite(images).all():  # the client gets an error, not HTTP 200 with NaN logits
                    raise PyTritonValidationError(f"{image.name} holds NaN or Inf values; send finite pixels")
                with lock:
                    return {logits.name: runner(images)}

            return infer

        triton.bind(
            model_name=self.image_name,
            infer_func=[
                make_image_infer(runner, lock, pre, self.source.class_names, logits.name, PyTritonValidationError)
                for runner, lock in self.runners
            ],
            inputs=[Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(1,))],
            outputs=[
                Tensor(name=logits.name, dtype=np.float32, shape=logits.dims[1:]),
                Tensor(name=CLASS_OUTPUT, dtype=np.bytes_, shape=(1,)),
            ],
            config=model_config,
            strict=True,
        )
        triton.bind(
            model_name=self.model_name,
            infer_func=[make_infer(runner, lock) for runner, lock in self.runners],
            inputs=[Tensor(name=image.name, dtype=np.float32, shape=image.dims[1:])],
            outputs=[Tensor(name=logits.name, dtype=np.float32, shape=logits.dims[1:])],
            config=model_config,
            strict=True,
        )

    def _say_serving(self) -> None:
        options, batching = self.options, self.options.batching
        http_port, grpc_port, _ = options.ports
        host = options.address
        endpoints = (f"http://{host}:{http_port} and " if options.http else "") + f"grpc://{host}:{grpc_port}"
        batched = (
            f"dynamic batching up to {options.max_batch_size}, queue delay {batching.max_queue_delay_us} us"
            if options.max_batch_size > 1
            else "no batching"
        )
        self.log(
            f"serving {self.file_name} on {options.backend} as model {self.model_name!r} ({batched}, "
            f"{batching.instances} instance(s)) at {endpoints}; Ctrl-C stops"
        )
        self.log(f"and as {self.image_name!r}: JPEG or PNG bytes in {IMAGE_INPUT!r}, class names in {CLASS_OUTPUT!r}")


def _require_ready(url: str, model_name: str, http: bool = True) -> None:
    """Ask the server itself whether the model is ready: PyTriton only warns when its own wait times out.

    Over HTTP where it is open, else over gRPC (``serve --no-http``).
    """
    if http:
        from tritonclient.http import InferenceServerClient

        client = InferenceServerClient(url, connection_timeout=READY_TIMEOUT_S, network_timeout=READY_TIMEOUT_S)
        ready = functools.partial(client.is_model_ready, model_name)
    else:
        from tritonclient.grpc import InferenceServerClient as GrpcClient

        client = GrpcClient(url)
        ready = functools.partial(client.is_model_ready, model_name, client_timeout=READY_TIMEOUT_S)
    with contextlib.closing(client):
        if not ready():
            raise BackendUnavailableError(f"Triton started but model {model_name!r} is not ready (see the server log)")


@contextlib.contextmanager
def _server_output(path: str | Path | None) -> Iterator[TextIO]:
    """Where PyTriton's copy of tritonserver's own output goes: appended to ``path``, or stderr when None."""
    if path is None:
        yield sys.stderr
        return
    with open(path, "a", encoding="utf-8", errors="replace") as handle:
        yield handle


class _StopSignals:
    """SIGINT and SIGTERM stop serve, remembered by number, so a stop is never taken for a crash.

    Ctrl-C reaches the whole process group, tritonserver included, which may exit before this process
    handles the signal; and PyTriton may swallow the KeyboardInterrupt. The number recorded here decides:
    a stopped server is not restarted, SIGINT exits 130 and SIGTERM 0. Both stop the server the same way
    (PyTriton stops tritonserver and cleans its workspace).
    """

    SETTLE_S = 0.5  # how long a dead server's signal may take to reach this process's handler

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        raise KeyboardInterrupt

    def settle(self) -> None:
        """Raise KeyboardInterrupt when the server went because serve was told to stop."""
        if self.received is None:
            time.sleep(self.SETTLE_S)  # a pending handler runs here and raises
        if self.received is not None:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
