"""A small HTTP/1.1 reverse proxy in front of tritonserver's HTTP port, refusing what that server cannot take.

PyTriton 0.7 bundles a tritonserver without the upstream fixes (triton-inference-server/server PRs #8174
and #8432) and without ``--http-max-input-size``: its HTTP frontend allocates the shape a JSON request
*claims* before checking it (a claim of [2^31,3,32,32] aborts it), and inflates a gzip body without
bound. ``serve`` therefore binds tritonserver's HTTP port to loopback on a port of its own and puts this
front on the public one. Each request is read whole (up to ``max_body`` bytes, after inflating a gzip or
deflate body, which is then forwarded inflated) and, on the inference path, its JSON is checked: every
input's claimed shape must hold exactly as many elements as the body carries (JSON ``data`` or
``binary_data_size`` bytes). What fails is answered 4xx here; Triton never sees it. POST is forwarded
only to inference and the repository index; model loading and shared-memory registration stay off HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import threading
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..errors import BadInputError

MAX_HEAD_BYTES = 64 << 10  # request or response line and headers
HEAD_TIMEOUT_S = 60.0  # an idle keep-alive connection, or a client that sends its headers byte by byte
BODY_TIMEOUT_S = 120.0
RELAY_CHUNK = 1 << 16
LINGER_S = 5.0  # how long a refused client may go on sending the body it was refused for
MIN_BODY_LIMIT = 8 << 20  # JSON requests of a few images always fit
# Triton's fixed-size datatypes, in bytes per element; BYTES elements carry a 4-byte length each.
ITEM_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
POST_PATHS = re.compile(r"^/v2/repository/index$")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"}
)


class Refused(Exception):
    """A request the front answers itself with ``status``; ``close`` when its body was not read."""

    def __init__(self, status: int, reason: str, close: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.close = status, reason, close


def default_body_limit(max_batch_size: int, input_dims: tuple[int, ...]) -> int:
    """Twice the largest binary request serve's model takes, and never under :data:`MIN_BODY_LIMIT`."""
    return max(MIN_BODY_LIMIT, 2 * max_batch_size * math.prod(max(d, 1) for d in input_dims) * 4)


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, inflated to at most ``limit`` bytes; past that it is refused (413)."""
    wbits = {"gzip": 31, "x-gzip": 31, "deflate": 15}[encoding]
    try:
        inflater = zlib.decompressobj(wbits)
        data = inflater.decompress(body, limit + 1)  # zlib gives all it can: nothing more waits unless it hit this
    except zlib.error as exc:
        raise Refused(400, f"the {encoding} body does not inflate: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise Refused(413, f"the {encoding} body inflates past the {limit}-byte limit of this server")
    return data


def _count(data: object) -> int:
    """Elements of a JSON ``data`` value: nested lists flattened, anything else one element."""
    count, todo = 0, [data]
    while todo:
        item = todo.pop()
        if isinstance(item, list):
            todo.extend(item)
        else:
            count += 1
    return count


def check_infer(body: bytes, header_length: str | None) -> None:
    """Refuse (400) an inference request whose inputs claim more, or fewer, elements than the body carries."""
    if header_length is None:
        head, binary = body, b""
    else:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise Refused(400, f"Inference-Header-Content-Length {header_length[:20]!r} does not fit the body")
        head, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = json.loads(head)
    except (ValueError, RecursionError):
        raise Refused(400, "the inference request is not valid JSON") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise Refused(400, "the inference request has no 'inputs' list")
    carried = 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise Refused(400, "each input must be a JSON object")
        name, shape, datatype = str(tensor.get("name"))[:64], tensor.get("shape"), tensor.get("datatype")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise Refused(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
        if datatype != "BYTES" and datatype not in ITEM_BYTES:
            raise Refused(400, f"input {name!r}: unknown datatype {str(datatype)[:20]!r}")
        elements = math.prod(shape)
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise Refused(400, f"input {name!r}: 'parameters' must be an object")
        if "shared_memory_region" in parameters:
            raise Refused(400, f"input {name!r}: shared-memory inputs are not taken over this HTTP port")
        if "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            if type(size) is not int or size < 0:
                raise Refused(400, f"input {name!r}: binary_data_size must be a non-negative integer")
            fits = elements <= size // 4 if datatype == "BYTES" else elements * ITEM_BYTES[datatype] == size
            carried += size
            what = f"{size} bytes of {datatype}"
        elif "data" in tensor:
            found = _count(tensor["data"])
            fits, what = elements == found, f"{found} elements"
        else:
            raise Refused(400, f"input {name!r} carries neither 'data' nor binary_data_size")
        if not fits:
            raise Refused(
                400, f"input {name!r}: shape {shape[:8]} claims {elements} elements but the body holds {what}"
            )
    if carried != len(binary):
        raise Refused(400, f"the inputs' binary_data_size add up to {carried} bytes, the body carries {len(binary)}")


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name]
        return values[-1] if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        return "keep-alive" in tokens if self.version == "HTTP/1.0" else "close" not in tokens


def _parse_head(head: bytes) -> _Request:
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = []
        for line in lines[1:]:
            if line:
                key, value = line.split(":", 1)
                if not key or key != key.strip():
                    raise ValueError(key)
                headers.append((key, value.strip()))
    except ValueError:
        raise Refused(400, "malformed HTTP request head", close=True) from None
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise Refused(505, f"HTTP version {version[:16]!r} is not served", close=True)
    return _Request(method, target, version, headers)


def _response(status: int, reason: str, close: bool) -> bytes:
    body = json.dumps({"error": reason}).encode()
    phrase = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 411: "Length Required"}
    phrase |= {413: "Payload Too Large", 415: "Unsupported Media Type", 431: "Request Header Fields Too Large"}
    phrase |= {502: "Bad Gateway", 505: "HTTP Version Not Supported"}
    head = [
        f"HTTP/1.1 {status} {phrase.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class HttpFront:
    """The front, serving ``host:port`` from an event loop in a thread of its own; ``upstream`` is tritonserver's."""

    def __init__(
        self, host: str, port: int, upstream_port: int, max_body: int, log: Callable[[str], None] = print
    ) -> None:
        self.host, self.port, self.upstream_port, self.max_body, self.log = host, port, upstream_port, max_body, log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> None:
        """Bind now (a taken port is exit 3 here), then serve in a daemon thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY on those
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(256)
        except OSError as exc:
            sock.close()
            raise BadInputError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror}); choose another --port"
            ) from None
        loop = self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(asyncio.start_server(self._client, sock=sock))
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="http-front", daemon=True)
        self._thread.start()
        ready.wait(30)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None:  # a response's head and body go out as written, not after a delayed ACK (Nagle)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, "request head too large", close=True))
                    return
                try:
                    request, body = await self._read_request(reader, writer, head)
                    if upstream is None:
                        upstream = await self._connect()
                    keep = await self._forward(request, body, upstream, writer)
                except Refused as refused:
                    writer.write(_response(refused.status, refused.reason, refused.close))
                    await writer.drain()
                    if refused.close:
                        await _linger(reader, writer)
                        return
                    continue
                if not keep or not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return
        finally:
            for stream in (writer, upstream[1] if upstream else None):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> tuple[_Request, bytes]:
        """The request and its body, checked; a :class:`Refused` says what to answer instead."""
        if len(head) > MAX_HEAD_BYTES:
            raise Refused(431, "request head too large", close=True)
        request = _parse_head(head[:-4])
        encoding = (request.header("transfer-encoding") or "identity").lower()
        if encoding != "identity":
            raise Refused(411, "send the body with Content-Length (chunked bodies are not taken)", close=True)
        length_text = request.header("content-length") or "0"
        if not length_text.isdigit():
            raise Refused(400, "Content-Length is not a number", close=True)
        length = int(length_text)
        if length > self.max_body:
            raise Refused(413, f"the body is {length} bytes; this server takes at most {self.max_body}", close=True)
        path = request.target.split("?", 1)[0]
        if request.method not in ("GET", "HEAD", "POST"):
            raise Refused(405, f"{request.method[:16]} is not served here", close=length > 0)
        if request.method == "POST" and not (INFER_PATH.match(path) or POST_PATHS.match(path)):
            refusal = f"POST {path[:80]} is not served over HTTP here (inference and metadata only)"
            raise Refused(403, refusal, close=length > 0)
        if length and (request.header("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT_S) if length else b""
        content_encoding = (request.header("content-encoding") or "identity").lower()
        if content_encoding in ("gzip", "x-gzip", "deflate"):
            body = inflate(body, content_encoding, self.max_body)
        elif content_encoding != "identity":
            raise Refused(415, f"Content-Encoding {content_encoding[:20]!r} is not taken; use gzip or deflate")
        if request.method == "POST" and INFER_PATH.match(path):
            check_infer(body, request.header("inference-header-content-length"))
        drop = HOP_BY_HOP | {"content-length", "content-encoding"}
        request.headers = [(k, v) for k, v in request.headers if k.lower() not in drop]
        return request, body

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection("127.0.0.1", self.upstream_port, limit=MAX_HEAD_BYTES)
        except OSError:
            raise Refused(502, "the Triton server is not answering (starting or restarting)", close=True) from None

    async def _forward(
        self,
        request: _Request,
        body: bytes,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Send the request to tritonserver and its response back; False when the connection must close."""
        up_reader, up_writer = upstream
        lines = [f"{request.method} {request.target} HTTP/1.1", *(f"{k}: {v}" for k, v in request.headers)]
        lines.append(f"Content-Length: {len(body)}")
        try:
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await up_writer.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise Refused(502, "the Triton server closed the connection", close=True) from None
        writer.write(head)
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {
            k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines if ":" in line)
        }
        if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining:
                chunk = await up_reader.read(min(remaining, RELAY_CHUNK))
                if not chunk:
                    return False
                writer.write(chunk)
                remaining -= len(chunk)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await up_reader.readuntil(b"\r\n")
                writer.write(size_line)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (line := await up_reader.readuntil(b"\r\n")) != b"\r\n":
                        writer.write(line)
                    writer.write(b"\r\n")
                    break
                writer.write(await up_reader.readexactly(size + 2))
        else:
            while chunk := await up_reader.read(RELAY_CHUNK):
                writer.write(chunk)
            await writer.drain()
            return False
        await writer.drain()
        return headers.get("connection", "").lower() != "close"


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read and drop what the client still sends, for a few seconds, so that it gets to read the refusal.

    A client sends its whole body before reading the answer; closing at once would reset the
    connection under it (it then sees a broken pipe, not the 413).
    """
    with contextlib.suppress(Exception):
        writer.write_eof()
    deadline = asyncio.get_running_loop().time() + LINGER_S
    with contextlib.suppress(Exception):
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            if not await asyncio.wait_for(reader.read(RELAY_CHUNK), left):
                break


def free_loopback_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """``count`` different ports the kernel hands out on 127.0.0.1 now, none of them in ``avoid``: tritonserver's
    own ports behind the fronts, ``avoid`` being the ones serve listens on.

    The probes stay bound until all are found: one at a time, the kernel may hand out the same port twice, and
    tritonserver then refuses to start ("cannot listen to HTTP requests and GRPC requests at the same ... port").
    """
    probes: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            probe = socket.socket()
            probes.append(probe)
            probe.bind(("127.0.0.1", 0))
            if (port := probe.getsockname()[1]) not in avoid:
                ports.append(port)
        return ports
    finally:
        for probe in probes:
            probe.close()
