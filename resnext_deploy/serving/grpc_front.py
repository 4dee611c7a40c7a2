"""A pass-through gRPC front for tritonserver that bounds each message's size after decompression.

The bundled tritonserver's gRPC frontend accepts messages up to 2 GB, compressed ones included: a
200 KB gzip-compressed request inflating to 201 MB took it from 38 MB to 624 MB before it refused the
request's batch size. Its shape checks come before allocation otherwise (a 12 KB request claiming
800 MB is refused with no growth). So ``serve`` binds tritonserver's gRPC port to 127.0.0.1 on a port
of its own and answers ``--grpc-port`` here: gRPC's own server refuses a message whose size, once
decompressed, passes the limit (RESOURCE_EXHAUSTED, "Decompressed message larger than max") before
any of it is handed on; everything else is forwarded byte for byte, metadata and deadline included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn

from ..errors import BadInputError

STREAM_METHODS = ("/ModelStreamInfer",)  # Triton's one bidirectional-streaming method (decoupled models)
WORKERS = 32  # concurrent calls in flight through the front; more wait in gRPC's queue
RESERVED_METADATA = ("grpc-", ":")
NO_DEADLINE_S = 1e9


class GrpcFront:
    """Forward every call on ``host:port`` to tritonserver's gRPC port on loopback, messages up to ``max_message``."""

    def __init__(
        self, host: str, port: int, upstream_port: int, max_message: int, log: Callable[[str], None] = print
    ) -> None:
        self.host, self.port, self.upstream_port, self.max_message, self.log = (
            host,
            port,
            upstream_port,
            max_message,
            log,
        )
        self._server: Any = None
        self._channel: Any = None

    def start(self) -> None:
        import grpc

        self._channel = grpc.insecure_channel(
            f"127.0.0.1:{self.upstream_port}",
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="grpc-front"),
            handlers=[_Forward(self._channel)],
            options=[
                ("grpc.max_receive_message_length", self.max_message),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            self._channel.close()
            raise BadInputError(f"cannot listen on {address}; choose another --grpc-port")
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait(5)
            self._channel.close()
            self._server = self._channel = None


def _timeout(context: Any) -> float | None:
    """The caller's deadline; none when it set none (gRPC then reports some 3e11 years, which overflows)."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < NO_DEADLINE_S else None


def _abort(context: Any, error: Any) -> NoReturn:
    """End the call with the upstream's status and details (gRPC's ``abort`` raises; it never returns)."""
    context.abort(error.code(), error.details() or "")
    raise AssertionError("grpc's ServicerContext.abort returned")


def _metadata(context: Any) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in context.invocation_metadata() if not k.startswith(RESERVED_METADATA)]


class _Forward:
    """A generic handler: every method, its request and response as bytes, handed on unchanged."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def service(self, details: Any) -> Any:
        import grpc

        method = details.method
        if method.endswith(STREAM_METHODS):
            call = self.channel.stream_stream(method)

            def stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
                try:
                    yield from call(requests, metadata=_metadata(context), timeout=_timeout(context))
                except grpc.RpcError as exc:
                    _abort(context, exc)

            return grpc.stream_stream_rpc_method_handler(stream)
        unary = self.channel.unary_unary(method)

        def forward(request: bytes, context: Any) -> bytes:
            try:
                return unary(request, metadata=_metadata(context), timeout=_timeout(context))
            except grpc.RpcError as exc:
                _abort(context, exc)

        return grpc.unary_unary_rpc_method_handler(forward)
