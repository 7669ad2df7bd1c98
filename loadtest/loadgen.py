"""One closed-loop load generator for every server in the benchmark (Flask, Triton HTTP, Triton gRPC).

``concurrency`` clients, each with its own connection, send a request, wait for the answer, check it
and send the next, for a fixed time; requests that complete inside the measurement window (after a
warm-up) count. Everything that can be done before the clock starts is: each request is prebuilt to
its final bytes (the HTTP request with its headers, or the serialized gRPC message), so the client's
own CPU per request is a socket write, a read, a header parse and the response check. One asyncio
event loop runs all clients: on a machine with few cores the load generator must leave the CPU to
the server, and its own CPU use is measured and reported with every result (``client_cpu``: 1.0 =
one core busy), so a result limited by the client shows up as such.

The same images go to every server (``loadtest.common.spec_sample``), in the same order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loadtest.common import NUM_CLASSES, Sample, check_probabilities, served_names
from loadtest.errors import LoadTestError, RefusedError, ResponseCheckError

logger = logging.getLogger(__name__)

# decode(status, headers, body, batch_size) -> probabilities [batch, 10]; raises on an error answer.
HttpDecoder = Callable[[int, dict[bytes, bytes], bytes, int], np.ndarray]
GrpcDecoder = Callable[[bytes, int], np.ndarray]


@dataclass
class Target:
    """What to send where: prebuilt requests (cycled through) and how to read the answers."""

    name: str  # e.g. "triton-http/<classifier model>"
    protocol: str  # "http" or "grpc"
    address: str  # "host:port"
    requests: list[bytes]
    labels: list[np.ndarray]  # the expected labels of each request
    batch_size: int
    decode: Any  # HttpDecoder for http, GrpcDecoder for grpc
    check_response: bool = True  # False: any model; decode only checks that an answer came back

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass
class LoadResult:
    target: str
    protocol: str
    batch_size: int
    concurrency: int
    duration_s: float  # the measurement window
    requests: int  # completed in the window (ok, refused and failed)
    failures: int  # errors: wrong answers, broken connections, server errors (never refusals)
    throughput_rps: float  # successful requests per second
    images_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p95 p99 mean max
    client_cpu: float = 0.0  # the load generator's CPU time / wall time (1.0 = one core)
    first_error: str | None = None
    # Load shedding: requests the server refused on purpose (queue full, queue timeout), counted
    # apart from failures, with how fast the refusals came back.
    refusals: int = 0
    refusal_latency_ms: dict[str, float] = field(default_factory=dict)
    first_refusal: str | None = None
    # Refusals by kind ("queue full", "queue timeout", "other"): count and latency percentiles.
    refusals_by_kind: dict[str, int] = field(default_factory=dict)
    refusal_latency_ms_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    # Tail events: successful requests slower than each threshold (ms -> count).
    slow: dict[str, int] = field(default_factory=dict)
    # The whole run, warm-up included: requests sent, answers (ok, refused or failed) received,
    # refusals among them. sent == answered: no request was lost silently.
    sent: int = 0
    answered: int = 0
    refused_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- request builders


def _http_request(address: str, path: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


def _triton_body(model_input: str, output: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [{"name": model_input, "shape": shape, "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    return header + raw, len(header)


def _serialize_bytes(items: Sequence[bytes]) -> bytes:
    """Triton's BYTES wire form: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


# Triton answers a shed request (queue full: "Exceeds maximum queue size"; queue timeout: "Request
# timeout expired") with UNAVAILABLE: HTTP 503, gRPC UNAVAILABLE.
REFUSAL_HTTP_STATUS = 503
REFUSAL_GRPC_CODE = "UNAVAILABLE"


def is_refusal(status: str | None, message: str | None) -> bool:
    """A tritonclient error that is Triton shedding load (not a failure): HTTP 503 or gRPC UNAVAILABLE
    with Triton's queue-full or queue-timeout message."""
    code = (status or "").removeprefix("StatusCode.")
    return code in (str(REFUSAL_HTTP_STATUS), REFUSAL_GRPC_CODE) and refusal_kind(message) != "other"


def refusal_kind(message: str | None) -> str:
    """Why Triton refused: its queue was full, or the request outlived its queue timeout."""
    text = (message or "").lower()
    if "maximum queue size" in text:
        return "queue full"
    if "timeout" in text:
        return "queue timeout"
    return "other"


def decode_triton_http(status: int, headers: dict[bytes, bytes], body: bytes, batch: int) -> np.ndarray:
    if status == REFUSAL_HTTP_STATUS:
        raise RefusedError(f"HTTP {status}: {body[:300].decode(errors='replace')}")
    if status != 200:
        raise ResponseCheckError(f"HTTP {status}: {body[:300].decode(errors='replace')}")
    json_len = int(headers.get(b"inference-header-content-length", b"0"))
    if json_len == 0 or len(body) - json_len != batch * NUM_CLASSES * 4:
        raise ResponseCheckError(f"response holds {len(body) - json_len} binary bytes, expected "
                                 f"{batch * NUM_CLASSES * 4} (FP32 probabilities [{batch}, {NUM_CLASSES}])")
    return np.frombuffer(body, dtype=np.float32, offset=json_len).reshape(batch, NUM_CLASSES)


def decode_flask(status: int, headers: dict[bytes, bytes], body: bytes, batch: int) -> np.ndarray:
    if status != 200:
        raise ResponseCheckError(f"HTTP {status}: {body[:300].decode(errors='replace')}")
    return np.asarray(json.loads(body)["probabilities"], dtype=np.float32)


def decode_triton_grpc(body: bytes, batch: int) -> np.ndarray:
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(body)
    if not response.raw_output_contents:
        raise ResponseCheckError("gRPC response has no raw output")
    raw = response.raw_output_contents[0]
    if len(raw) != batch * NUM_CLASSES * 4:
        raise ResponseCheckError(f"the output holds {len(raw)} bytes, expected {batch * NUM_CLASSES * 4}")
    return np.frombuffer(raw, dtype=np.float32).reshape(batch, NUM_CLASSES)


def _batches(sample: Sample, batch_size: int, count: int) -> list[int]:
    """Start indices of ``count`` batches walking through the sample."""
    return [(i * batch_size) % len(sample) for i in range(count)]


def _count(sample: Sample, batch_size: int) -> int:
    # Enough distinct requests to walk through the whole sample once (at least 64 of them).
    return max(64, -(-len(sample) // batch_size))


def _model(ensemble: bool, model: str | None = None) -> tuple[str, str, str]:
    """(model, input, output) of the classifier or the ensemble, named by the spec; `model` sends the
    same inputs to another name (e.g. the lifecycle router, or an ensemble without it)."""
    n = served_names()
    if ensemble:
        return model or n.ensemble, n.ensemble_input, n.ensemble_output
    return model or n.classifier, n.classifier_input, n.classifier_output


def triton_http_target(
    address: str, sample: Sample, batch_size: int = 1, ensemble: bool = False, model: str | None = None
) -> Target:
    """``model``: another model with the classifier's (or the ensemble's) interface and tensor names."""
    model, model_input, output = _model(ensemble, model)
    path = f"/v2/models/{model}/infer"
    requests, labels = [], []
    for start in _batches(sample, batch_size, _count(sample, batch_size)):
        if ensemble:
            pngs, lab = sample.png_batch(start, batch_size)
            body, json_len = _triton_body(model_input, output, "BYTES", [batch_size, 1],
                                          _serialize_bytes(list(pngs[:, 0])))
        else:
            images, lab = sample.tensor_batch(start, batch_size)
            body, json_len = _triton_body(model_input, output, "FP32", list(images.shape), images.tobytes())
        requests.append(_http_request(address, path, body, "application/octet-stream",
                                      f"Inference-Header-Content-Length: {json_len}\r\n"))
        labels.append(lab)
    return Target(f"triton-http/{model}", "http", address, requests, labels, batch_size, decode_triton_http)


def triton_grpc_target(
    address: str, sample: Sample, batch_size: int = 1, ensemble: bool = False, model: str | None = None
) -> Target:
    from tritonclient.grpc import service_pb2

    model, model_input, output = _model(ensemble, model)
    requests, labels = [], []
    for start in _batches(sample, batch_size, _count(sample, batch_size)):
        request = service_pb2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add()
        if ensemble:
            pngs, lab = sample.png_batch(start, batch_size)
            tensor.name, tensor.datatype = model_input, "BYTES"
            tensor.shape.extend([batch_size, 1])
            request.raw_input_contents.append(_serialize_bytes(list(pngs[:, 0])))
        else:
            images, lab = sample.tensor_batch(start, batch_size)
            tensor.name, tensor.datatype = model_input, "FP32"
            tensor.shape.extend(images.shape)
            request.raw_input_contents.append(images.tobytes())
        request.outputs.add(name=output)
        requests.append(request.SerializeToString())
        labels.append(lab)
    return Target(f"triton-grpc/{model}", "grpc", address, requests, labels, batch_size, decode_triton_grpc)


def flask_target(address: str, sample: Sample, batch_size: int = 1, name: str = "flask") -> Target:
    requests, labels = [], []
    for start in _batches(sample, batch_size, _count(sample, batch_size)):
        images, lab = sample.tensor_batch(start, batch_size)
        pixels = images[:, 0].astype(np.uint8)
        payload = {"image": pixels[0].tolist()} if batch_size == 1 else {"images": pixels.tolist()}
        body = json.dumps(payload, separators=(",", ":")).encode()
        requests.append(_http_request(address, "/predict", body, "application/json"))
        labels.append(lab)
    return Target(f"{name}/{served_names().classifier}", "http", address, requests, labels, batch_size, decode_flask)



# --------------------------------------------------------------------------- HTTP/1.1 client


class _HttpConnection(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client connection: one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, dict[bytes, bytes], bytes]] | None = None
        self.head: tuple[int, dict[bytes, bytes], int, int] | None = None  # status, headers, start, length
        self.closed = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._try_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.head is not None and self.head[3] < 0:  # body delimited by the connection's end
            status, headers, start, _ = self.head
            self.waiter = None
            waiter.set_result((status, headers, bytes(self.buf[start:])))
        else:
            waiter.set_exception(exc or ConnectionResetError("the server closed the connection"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, dict[bytes, bytes], bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.head = None
        self.transport.write(data)
        return self.waiter

    def _try_complete(self) -> None:
        buf = self.buf
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                key, _, value = line.partition(b":")
                headers[key.strip().lower()] = value.strip()
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                raise LoadTestError("chunked HTTP responses are not supported by this load generator")
            length = int(headers[b"content-length"]) if b"content-length" in headers else -1
            version_10 = lines[0].startswith(b"HTTP/1.0")
            connection = headers.get(b"connection", b"").lower()
            self.close_after = connection == b"close" or (version_10 and connection != b"keep-alive")
            self.head = (status, headers, end + 4, length)
        status, headers, start, length = self.head
        if length < 0 or len(buf) < start + length:
            return
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        waiter, self.waiter, self.head = self.waiter, None, None
        assert waiter is not None
        waiter.set_result((status, headers, body))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


# --------------------------------------------------------------------------- the closed loop


@dataclass
class _Window:
    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    refusal_latencies: list[float] = field(default_factory=list)
    refusal_kinds: dict[str, list[float]] = field(default_factory=dict)
    ok: int = 0
    failures: int = 0
    first_error: str | None = None
    first_refusal: str | None = None
    # Over the whole run (warm-up and the last answers after the window too): nothing may be lost.
    sent: int = 0
    answered: int = 0
    refused_total: int = 0

    def record(self, t0: float, t1: float, error: str | None, refused: bool = False) -> None:
        self.answered += 1
        self.refused_total += refused
        if not (self.start <= t1 <= self.end):
            return
        if error is None:
            self.ok += 1
            self.latencies.append(t1 - t0)
        elif refused:
            self.refusal_latencies.append(t1 - t0)
            self.refusal_kinds.setdefault(refusal_kind(error), []).append(t1 - t0)
            if self.first_refusal is None:
                self.first_refusal = error
        else:
            self.failures += 1
            if self.first_error is None:
                self.first_error = error


async def _http_client(
    target: Target, k: int, concurrency: int, window: _Window, check: bool, backoff_s: float
) -> None:
    loop = asyncio.get_running_loop()
    conn: _HttpConnection | None = None
    requests, labels, batch, decode = target.requests, target.labels, target.batch_size, target.decode
    n = len(requests)
    i = k
    try:
        while (t0 := time.perf_counter()) < window.end:
            j = i % n
            i += concurrency
            error, refused = None, False
            window.sent += 1  # every attempt ends in record(): an answer, a refusal or an error
            try:
                if conn is None or conn.closed:
                    _, conn = await loop.create_connection(_HttpConnection, target.host, target.port)
                status, headers, body = await conn.request(requests[j])
                if conn.close_after:
                    conn.close()
                answer = decode(status, headers, body, batch)
                if target.check_response:
                    check_probabilities(answer, batch, labels[j] if check else None)
            except RefusedError as e:
                error, refused = str(e), True
            except (OSError, ValueError, KeyError, LoadTestError, ResponseCheckError) as e:
                error = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                    conn = None
                if not isinstance(e, ResponseCheckError):
                    await asyncio.sleep(0.01)  # a refused connection must not spin
            window.record(t0, time.perf_counter(), error, refused)
            if refused and backoff_s:
                await asyncio.sleep(backoff_s)
    finally:
        if conn is not None:
            conn.close()


async def _grpc_client(
    target: Target, k: int, concurrency: int, window: _Window, check: bool, backoff_s: float
) -> None:
    import grpc

    timeout_s = window.end - window.start + 120.0  # a lost request still ends, as an error

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
               ("grpc.use_local_subchannel_pool", 1)]  # one connection per client, as over HTTP
    requests, labels, batch, decode = target.requests, target.labels, target.batch_size, target.decode
    n = len(requests)
    i = k
    async with grpc.aio.insecure_channel(target.address, options=options) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        while (t0 := time.perf_counter()) < window.end:
            j = i % n
            i += concurrency
            error, refused = None, False
            window.sent += 1  # every attempt ends in record(): an answer, a refusal or an error
            try:
                body = await infer(requests[j], timeout=timeout_s)
                answer = decode(body, batch)
                if target.check_response:
                    check_probabilities(answer, batch, labels[j] if check else None)
            except grpc.aio.AioRpcError as e:
                error = f"gRPC {e.code().name}: {e.details()}"
                refused = e.code().name == REFUSAL_GRPC_CODE
            except (ValueError, ResponseCheckError) as e:
                error = f"{type(e).__name__}: {e}"
            window.record(t0, time.perf_counter(), error, refused)
            if refused and backoff_s:
                await asyncio.sleep(backoff_s)


async def _run(
    target: Target, concurrency: int, duration_s: float, warmup_s: float, check: bool, backoff_s: float
) -> _Window:
    now = time.perf_counter()
    window = _Window(start=now + warmup_s, end=now + warmup_s + duration_s)
    client = _grpc_client if target.protocol == "grpc" else _http_client
    tasks = [asyncio.ensure_future(client(target, k, concurrency, window, check, backoff_s))
             for k in range(concurrency)]
    # Clients stop starting requests at the window's end; give the last ones time to come back.
    done, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + 60)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            raise LoadTestError(f"{target.name}: a client failed: {task.exception()!r}") from task.exception()
    return window


def count_slow(latencies: Sequence[float], thresholds_ms: Sequence[float]) -> dict[str, int]:
    """How many latencies (seconds) exceed each threshold (ms); keys are the thresholds as text."""
    arr = np.asarray(latencies, dtype=np.float64) * 1000.0
    return {f"{t:g}": int((arr > t).sum()) for t in thresholds_ms}


def percentile_ms(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {}
    arr = np.asarray(latencies) * 1000.0
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
    return {"p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99),
            "mean": float(arr.mean()), "max": float(arr.max())}


DEFAULT_SLOW_MS = (250.0, 400.0)


def run_load(
    target: Target, concurrency: int, duration_s: float = 4.0, warmup_s: float = 1.0, check_labels: bool = False,
    slow_ms: Sequence[float] = DEFAULT_SLOW_MS, refusal_backoff_s: float = 0.0,
) -> LoadResult:
    """Run ``concurrency`` closed-loop clients against ``target`` and measure the window after warm-up.

    ``slow_ms``: thresholds for the tail count (``LoadResult.slow``: successful requests slower than
    each). Refusals (the server shedding load) are counted apart from failures; a refused client waits
    ``refusal_backoff_s`` before its next request, as a well-behaved client backs off."""
    if concurrency < 1 or duration_s <= 0:
        raise LoadTestError(f"concurrency must be >= 1 and duration > 0 (got {concurrency}, {duration_s})")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    window = asyncio.run(_run(target, concurrency, duration_s, warmup_s, check_labels,
                                 refusal_backoff_s))
    cpu = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    rps = window.ok / duration_s
    result = LoadResult(
        target=target.name,
        protocol=target.protocol,
        batch_size=target.batch_size,
        concurrency=concurrency,
        duration_s=duration_s,
        requests=window.ok + window.failures + len(window.refusal_latencies),
        failures=window.failures,
        throughput_rps=rps,
        images_per_s=rps * target.batch_size,
        latency_ms=percentile_ms(window.latencies),
        client_cpu=cpu,
        first_error=window.first_error,
        refusals=len(window.refusal_latencies),
        refusal_latency_ms=percentile_ms(window.refusal_latencies),
        first_refusal=window.first_refusal,
        refusals_by_kind={k: len(v) for k, v in window.refusal_kinds.items()},
        refusal_latency_ms_by_kind={k: percentile_ms(v) for k, v in window.refusal_kinds.items()},
        slow=count_slow(window.latencies, slow_ms),
        sent=window.sent,
        answered=window.answered,
        refused_total=window.refused_total,
    )
    logger.debug("%s b%d c%d: %.0f req/s, p99 %.2f ms, %d failures", target.name, target.batch_size,
                 concurrency, rps, result.latency_ms.get("p99", float("nan")), window.failures)
    return result
