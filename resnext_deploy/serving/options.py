"""What ``serve`` and ``triton-repo`` are told, as validated bundles: the command line makes one from its flags.

:class:`Batching` is the part both commands share (how Triton batches requests, how many model instances run
them); :class:`ServeOptions` and :class:`TritonRepoOptions` hold it beside their own settings. Each is checked
when made, so a bad value is one line of bad input before a server starts or a file is written. The flags
themselves are declared in :mod:`resnext_deploy.cli_options`; the defaults live here alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..artifacts.precisions import ONNX_FILES
from ..backends.base import BATCH_LIMIT
from ..backends.tensorrt import BuildOptions
from ..errors import BadInputError

# ONNX models batch like an engine built with build-trt's default profile.
DEFAULT_MAX_BATCH = BuildOptions.max_batch
DEFAULT_QUEUE_DELAY_US = 100
MAX_QUEUE_DELAY_US = 60_000_000  # a minute; Triton's field is a uint64, and larger values only stall clients
MAX_INSTANCES = 1024
ONNX_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
MAX_REQUEST_MB = 2047  # gRPC's message limit is a 32-bit int


@dataclass(frozen=True)
class Batching:
    """How Triton batches requests to a model and how many instances of it run them.

    ``max_batch_size`` None: the engine profile's maximum, or :data:`DEFAULT_MAX_BATCH` for an ONNX file;
    1 switches batching off.
    """

    max_batch_size: int | None = None
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size is not None and not 1 <= self.max_batch_size <= BATCH_LIMIT:
            raise BadInputError(f"--max-batch-size must be between 1 and {BATCH_LIMIT}, got {self.max_batch_size}")
        if not 0 <= self.max_queue_delay_us <= MAX_QUEUE_DELAY_US:
            raise BadInputError(
                f"--max-queue-delay-us must be between 0 and {MAX_QUEUE_DELAY_US}, got {self.max_queue_delay_us}"
            )
        if not 1 <= self.instances <= MAX_INSTANCES:
            raise BadInputError(f"--instances must be between 1 and {MAX_INSTANCES}, got {self.instances}")


@dataclass(frozen=True)
class ServeOptions:
    """How ``serve`` serves DIR's ONNX file: which file on which CPU runner, where it listens, how it batches.

    ``grpc_port`` and ``metrics_port`` default to ``port`` + 1 and + 2; ``max_request_mb`` None: twice the
    largest batch in binary form, at least 8 MiB (:func:`~resnext_deploy.serving.front.default_body_limit`).
    """

    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    metrics_port: int | None = None
    batching: Batching = Batching(DEFAULT_MAX_BATCH)
    threads: int | None = None
    name: str | None = None
    backend: str = "onnxruntime"
    restarts: int = 0
    http: bool = True
    max_request_mb: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in ONNX_FILES:
            raise BadInputError(f"unknown precision {self.precision!r}; use one of {', '.join(ONNX_FILES)}")
        if len(set(self.ports)) < 3:
            http, grpc, metrics = self.ports
            raise BadInputError(f"HTTP, gRPC and metrics need three different ports, got {http}, {grpc}, {metrics}")
        if self.restarts < 0:
            raise BadInputError(f"--restarts must be 0 or more, got {self.restarts}")
        if self.max_request_mb is not None and not 0 < self.max_request_mb <= MAX_REQUEST_MB:
            raise BadInputError(
                f"--max-request-mb must be more than 0 and at most {MAX_REQUEST_MB}, got {self.max_request_mb:g}"
            )
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise BadInputError(f"--host must be an IP address (or localhost), got {self.host!r}") from None

    @property
    def ports(self) -> tuple[int, int, int]:
        """HTTP, gRPC and metrics ports, the defaults resolved."""
        grpc = self.port + 1 if self.grpc_port is None else self.grpc_port
        return self.port, grpc, self.port + 2 if self.metrics_port is None else self.metrics_port

    @property
    def address(self) -> str:
        """The IP address to bind (``localhost`` is loopback's)."""
        return "127.0.0.1" if self.host == "localhost" else self.host

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size or DEFAULT_MAX_BATCH

    @property
    def max_request(self) -> int | None:
        """The largest request in bytes, or None for the default."""
        return None if self.max_request_mb is None else max(1, int(self.max_request_mb * 2**20))


@dataclass(frozen=True)
class TritonRepoOptions:
    """How ``triton-repo`` writes the repository: model names, batching, where ONNX models run, extra models.

    ``name`` None: the architecture recorded in DIR. ``backend_options``: the backends' knobs by backend name
    (OpenVINO's hint becomes its models' PERFORMANCE_HINT).
    """

    name: str | None = None
    batching: Batching = Batching()
    onnx_kind: Literal["auto", "gpu", "cpu"] = "auto"
    trt_accelerator: bool = False
    preprocess: bool = False
    backend_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.onnx_kind not in ONNX_KINDS:
            raise BadInputError(f"--onnx-kind must be one of {', '.join(ONNX_KINDS)}, got {self.onnx_kind!r}")
        if self.trt_accelerator and self.onnx_kind == "cpu":
            raise BadInputError("--trt-accelerator needs GPU instances; use --onnx-kind auto or gpu")
