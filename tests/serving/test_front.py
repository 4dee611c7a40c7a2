"""serve's HTTP front against a stand-in upstream: what it refuses, and that what it forwards arrives intact.

The stand-in answers every request with what it received, so a test sees the bytes Triton would have
seen. The same checks against a real tritonserver (memory included) are in
tests/faults/test_serving_and_caches.py.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import http.server
import json
import socket
import threading
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from resnext_deploy.serving.front import HttpFront, default_body_limit, free_loopback_ports

LIMIT = 1 << 20
INFER = "/v2/models/m/infer"


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a JSON record of the request it got (path, headers, body length and sha)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _answer(self, body: bytes) -> None:
        record = {"path": self.path, "encoding": self.headers.get("Content-Encoding"), "body": body.decode("latin-1")}
        data = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def front() -> Iterator[int]:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    (port,) = free_loopback_ports(1)
    proxy = HttpFront("127.0.0.1", port, upstream.server_address[1], LIMIT, log=lambda _m: None)
    proxy.start()
    try:
        yield port
    finally:
        proxy.stop()
        upstream.shutdown()
        upstream.server_close()


def _post(port: int, body: bytes, headers: dict[str, str] | None = None, path: str = INFER) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _json(shape: list[int], data: object) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}).encode()


def _binary(shape: list[int], payload: bytes) -> tuple[bytes, dict[str, str]]:
    """Triton's binary-data extension: a JSON header, then the raw tensor bytes."""
    parameters = {"binary_data_size": len(payload)}
    head = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "parameters": parameters}]})
    return head.encode() + payload, {"Inference-Header-Content-Length": str(len(head))}


def test_valid_requests_reach_the_server_unchanged(front: int) -> None:
    body = _json([2, 3], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert _post(front, body) == (200, {"path": INFER, "encoding": None, "body": body.decode()})
    binary, headers = _binary([1, 3, 4, 4], np.arange(48, dtype=np.float32).tobytes())
    status, seen = _post(front, binary, headers)
    assert status == 200 and seen["body"].encode("latin-1") == binary
    # A gzip body reaches the server inflated, without its Content-Encoding.
    status, seen = _post(front, gzip.compress(body), {"Content-Encoding": "gzip"})
    assert (status, seen["encoding"], seen["body"]) == (200, None, body.decode())
    status, seen = _post(front, zlib.compress(body), {"Content-Encoding": "deflate"})
    assert (status, seen["body"]) == (200, body.decode())


@pytest.mark.parametrize(
    ("shape", "data", "fragment"),
    [
        ([2**31, 3, 16, 16], [0.0] * 768, "claims 1649267441664 elements but the body holds 768 elements"),
        ([2**19, 3, 16, 16], [0.0] * 768, "claims 402653184 elements"),
        ([1, 3, 16, 16], [0.0] * 767, "holds 767 elements"),
        ([-1, 3], [0.0] * 3, "non-negative integers"),
        ([True, 3], [0.0] * 3, "non-negative integers"),
    ],
)
def test_a_shape_the_json_data_does_not_fill_is_refused(front: int, shape, data, fragment: str) -> None:
    status, answer = _post(front, _json(shape, data))
    assert status == 400 and fragment in answer["error"], answer


def test_a_shape_the_binary_data_does_not_fill_is_refused(front: int) -> None:
    body, headers = _binary([2**31, 3, 32, 32], np.zeros(3072, np.float32).tobytes())
    status, answer = _post(front, body, headers)
    assert status == 400 and "12288 bytes of FP32" in answer["error"]
    body, headers = _binary([1, 3, 32, 32], np.zeros(3072, np.float32).tobytes())
    status, answer = _post(front, body + b"extra", headers)  # more bytes than the inputs declare
    assert status == 400 and "add up to 12288 bytes" in answer["error"]
    status, answer = _post(front, body, {"Inference-Header-Content-Length": str(len(body) + 1)})
    assert status == 400 and "does not fit the body" in answer["error"]


def test_an_oversized_body_and_a_gzip_bomb_get_413(front: int) -> None:
    status, answer = _post(front, b"0" * (LIMIT + 1))
    assert status == 413 and f"at most {LIMIT}" in answer["error"]
    squeezer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(squeezer.compress(b"0," * (1 << 19)) for _ in range(64)) + squeezer.flush()  # 64 MiB inflated
    assert len(bomb) < LIMIT // 4
    status, answer = _post(front, bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "inflates past" in answer["error"]
    status, answer = _post(front, b"not gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "does not inflate" in answer["error"]
    status, answer = _post(front, b"{}", {"Content-Encoding": "br"})
    assert status == 415


def test_model_control_and_shared_memory_stay_off_http(front: int) -> None:
    for path in ("/v2/repository/models/m/load", "/v2/systemsharedmemory/region/r/register", "/v2/logging"):
        status, answer = _post(front, b"{}", path=path)
        assert status == 403 and "not served over HTTP" in answer["error"]
    assert _post(front, b"{}", path="/v2/repository/index")[0] == 200  # listing the models is metadata
    body = json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "parameters": {}}]}).encode()
    status, answer = _post(front, body.replace(b"{}", b'{"shared_memory_region": "r"}'))
    assert status == 400 and "shared-memory" in answer["error"]


def test_one_connection_carries_requests_after_a_refusal(front: int) -> None:
    """Keep-alive as tritonclient uses it: a request refused after its body was read leaves the connection open."""
    connection = http.client.HTTPConnection("127.0.0.1", front, timeout=30)
    try:
        for shape, expected in (([1, 3], 200), ([9, 3], 400), ([1, 3], 200)):
            connection.request("POST", INFER, body=_json(shape, [1.0, 2.0, 3.0]))
            response = connection.getresponse()
            response.read()
            assert response.status == expected
        connection.request("GET", "/v2/health/ready")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_a_chunked_body_and_a_malformed_head_are_refused(front: int) -> None:
    with socket.create_connection(("127.0.0.1", front), timeout=30) as raw:
        raw.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()
        )
        assert raw.recv(4096).startswith(b"HTTP/1.1 411 ")
    with socket.create_connection(("127.0.0.1", front), timeout=30) as raw:
        raw.sendall(b"GARBAGE\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 400 ")


def test_the_default_limit_fits_the_largest_binary_batch() -> None:
    assert default_body_limit(32, (3, 32, 32)) == 8 << 20  # the floor
    assert default_body_limit(32, (3, 224, 224)) == 2 * 32 * 3 * 224 * 224 * 4


def test_a_taken_port_is_bad_input() -> None:
    from resnext_deploy.errors import BadInputError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        front = HttpFront("127.0.0.1", taken.getsockname()[1], 1, LIMIT, log=lambda _m: None)
        with pytest.raises(BadInputError, match="choose another --port"), contextlib.ExitStack():
            front.start()


def _answer_at_once(server_socket: socket.socket) -> None:
    """A stand-in upstream that answers each request with one send, as fast as it can."""
    while True:
        try:
            conn, _ = server_socket.accept()
        except OSError:
            return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buffer += data
                if b"\r\n\r\n" not in buffer:
                    break
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                length = int(next(x.split(b":")[1] for x in head.split(b"\r\n") if x.lower().startswith(b"content-l")))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_the_front_adds_no_delayed_ack_wait() -> None:
    """Head and body of each answer leave at once (TCP_NODELAY): with Nagle's algorithm each took 40 ms more."""
    import statistics
    import time

    upstream = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_answer_at_once, args=(upstream,), daemon=True).start()
    (port,) = free_loopback_ports(1)
    proxy = HttpFront("127.0.0.1", port, upstream.getsockname()[1], LIMIT, log=lambda _m: None)
    proxy.start()
    body = _json([3], [1.0, 2.0, 3.0])
    request = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for _ in range(20):
                start = time.perf_counter()
                client.sendall(request)
                answer = b""
                while not answer.endswith(b"\r\n\r\nok"):
                    answer += client.recv(65536)
                times.append(time.perf_counter() - start)
    finally:
        proxy.stop()
        upstream.close()
    assert statistics.median(times) < 0.02, times  # 0.3 ms here; 46 ms with the delayed ACK


def test_free_loopback_ports_differ_and_avoid_serve_s_own(monkeypatch) -> None:
    """Each probe is held until all are found, so the ports differ even when the kernel would hand one out twice;
    a port serve listens on itself is skipped. Here the kernel is made to offer 5000, 5000, 6000, 5001, 7000."""
    offered = iter([5000, 5000, 6000, 5001, 7000])
    bound: list[int] = []

    class Probe:
        def __init__(self) -> None:
            self.port = 0

        def bind(self, _address: tuple[str, int]) -> None:
            self.port = next(offered)
            if self.port in bound:  # a port still held cannot be handed out again: the kernel offers the next
                self.port = next(offered)
            bound.append(self.port)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

        def close(self) -> None:
            bound.remove(self.port)

    monkeypatch.setattr("resnext_deploy.serving.front.socket.socket", Probe)
    assert free_loopback_ports(3, avoid=(6000,)) == [5000, 5001, 7000]
    assert bound == []  # every probe closed


def test_free_loopback_ports_are_real_free_ports() -> None:
    ports = free_loopback_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.create_server(("127.0.0.1", port)):
            pass
