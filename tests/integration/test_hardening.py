"""Issue 17, against the real server: locked-down operator APIs, input validation, per-request budgets.

Each test repeats the reporter's probe (the same request, the same way) and asserts it is refused with
a clear error while the server keeps serving.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from build_tools.errors import ClientError
from build_tools.healer import list_stubs
from build_tools.server import TritonServer
from clients.datasets import mnist_holdout
from clients.images import bytes_batch, encode_png
from triton_api import PROTOCOLS, TritonClient

pytestmark = pytest.mark.server


def _client(server: TritonServer, protocol: str):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def _http(server: TritonServer, method: str, path: str, body: dict | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# -- 1. the shared-memory attack and the logging switch -------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_registration_refused_when_client_attaches_stub_region(
    embedded_server: TritonServer, protocol: str
) -> None:
    # The reporter's attack: the Python backend's own IPC region, whose name any local user reads in ps.
    assert embedded_server.process is not None
    stubs = list_stubs(embedded_server.process.pid)
    assert stubs, "no Python-backend stub found under the server"
    region = stubs[0].shm_region
    client = _client(embedded_server, protocol)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.register_system_shared_memory("stolen", f"/{region}", 320)
        with pytest.raises(InferenceServerException):
            client.get_system_shared_memory_status()
    finally:
        client.close()
    assert "restricted" in err.value.message().lower() or "403" in str(err.value) or "permission" in str(
        err.value).lower(), err.value.message()
    with TritonClient(embedded_server.http_url) as c:  # still serving
        out = c.infer("mnist_classifier", {"image": np.zeros((1, 1, 28, 28), np.float32)}, ["probabilities"])
    assert out["probabilities"].shape == (1, 10)


def test_logging_switch_refused_when_no_admin_header(embedded_server: TritonServer) -> None:
    status, body = _http(embedded_server, "POST", "/v2/logging", {"log_verbose_level": 1})
    assert status == 403, (status, body)
    grpc = grpcclient.InferenceServerClient(embedded_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException):
            grpc.update_log_settings({"log_verbose_level": 1})
    finally:
        grpc.close()
    # The operator (the admin header) still reads the settings: verbose logging stayed off.
    status, settings = _http(embedded_server, "GET", "/v2/logging", headers=embedded_server.admin_headers)
    assert status == 200 and settings["log_verbose_level"] == 0, settings


def test_inference_health_and_metadata_open_when_apis_restricted(embedded_server: TritonServer) -> None:
    for path in ("/v2/health/ready", "/v2", "/v2/models/mnist", "/v2/models/mnist/config"):
        status, _ = _http(embedded_server, "GET", path)
        assert status == 200, path
    for path in ("/v2/models/stats", "/v2/trace/setting", "/v2/systemsharedmemory/status"):
        assert _http(embedded_server, "GET", path)[0] == 403, path
    assert _http(embedded_server, "POST", "/v2/repository/index", {})[0] == 403


# -- 5. input validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("case", "fill", "expect"), [
    ("nan", np.nan, "3 non-finite value(s)"),
    ("inf", np.inf, "3 non-finite value(s)"),
    ("minus_1e30", -1e30, "3 value(s) outside [0, 255]"),
    ("3e38", 3e38, "3 value(s) outside [0, 255]"),
])
def test_classifier_refuses_pixels_when_values_not_finite_or_out_of_range(
    embedded_server: TritonServer, protocol: str, case: str, fill: float, expect: str
) -> None:
    image = np.zeros((2, 1, 28, 28), np.float32)
    image[1, 0, 10, 10:13] = fill
    mod = httpclient if protocol == "http" else grpcclient
    client = _client(embedded_server, protocol)
    try:
        inp = mod.InferInput("image", list(image.shape), "FP32")
        inp.set_data_from_numpy(image)
        with pytest.raises(InferenceServerException) as err:
            client.infer("mnist_classifier", [inp])
    finally:
        client.close()
    message = err.value.message()
    assert "'image'" in message and expect in message, message
    # INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT.
    assert str(err.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT"), err.value.status()
    url = embedded_server.http_url if protocol == "http" else embedded_server.grpc_url
    with TritonClient(url, protocol) as c:  # a valid request is still answered
        out = c.infer("mnist_classifier", {"image": image[:1]}, ["probabilities"])
    assert np.isfinite(out["probabilities"]).all()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("case", "image", "expect"), [
    ("uniform_grey", np.full((64, 64), 128), "uniform"),
    ("uniform_white", np.full((28, 28), 255), "uniform"),
    ("noise", np.random.default_rng(0).integers(0, 256, (64, 64)), "of the pixels are ink"),
])
def test_ensemble_refuses_capture_when_no_plausible_digit(
    embedded_server: TritonServer, case: str, image: np.ndarray, expect: str
) -> None:
    with TritonClient(embedded_server.http_url) as client, pytest.raises(ClientError, match="no digit found") as err:
        client.infer("mnist", {"image_bytes": bytes_batch([_png(image)])}, ["probabilities"])
    assert expect in str(err.value)


def test_ensemble_accepts_every_holdout_digit_when_plausibility_checked(embedded_server: TritonServer) -> None:
    # The plausibility bound must not refuse real digits: all 500 held-out digits still classify.
    holdout = mnist_holdout()
    with TritonClient(embedded_server.http_url) as client:
        for start in range(0, len(holdout.images), 100):
            payloads = [encode_png(img) for img in holdout.images[start:start + 100]]
            out = client.infer("mnist", {"image_bytes": bytes_batch(payloads)}, ["probabilities"])
            assert out["probabilities"].shape == (len(payloads), 10)


# -- 3. per-request budgets -----------------------------------------------------------------------
def _big_png(side: int, seed: int) -> bytes:
    """A side x side PNG with a digit-like stroke: small on the wire, side^2 pixels to decode."""
    img = np.zeros((side, side), np.uint8)
    rng = np.random.default_rng(seed)
    x = int(rng.integers(side // 4, side // 2))
    img[side // 4: 3 * side // 4, x: x + side // 16] = 255
    return _png(img)


def test_preprocess_refuses_request_when_pixels_above_request_budget(embedded_server: TritonServer) -> None:
    payloads = [_big_png(4096, i) for i in range(32)]  # the reporter's 32 x 4096x4096 request
    with TritonClient(embedded_server.http_url) as client:
        started = time.monotonic()
        with pytest.raises(ClientError, match=r"pixels per request") as err:
            client.infer("mnist", {"image_bytes": bytes_batch(payloads)}, ["probabilities"])
        elapsed = time.monotonic() - started
    assert "536870912 pixels" in str(err.value)
    assert elapsed < 2.0, f"refusing took {elapsed:.2f} s: the images were decoded"


def test_preprocess_refuses_request_when_element_bytes_above_budget(embedded_server: TritonServer) -> None:
    digit = encode_png(mnist_holdout().images[0])
    oversize = digit + b"\0" * (4194305 - len(digit))
    with TritonClient(embedded_server.http_url) as client, pytest.raises(
        ClientError, match=r"image 0 is 4194305 bytes, above the limit of 4194304"
    ):
        client.infer("mnist", {"image_bytes": bytes_batch([oversize])}, ["probabilities"])


def test_small_request_waits_bounded_when_big_request_runs_beside_it(embedded_server: TritonServer) -> None:
    """The reporter's stall: a request at the pixel budget next to a one-digit request.

    The bound is the time one request may hold the preprocessing instance: its deadline (1 s) plus
    one image's decode. The figure is printed for the closing note.
    """
    big = [_big_png(2048, i) for i in range(4)]  # 4 x 2048^2 = the 16.7 M pixel budget
    digit = encode_png(mnist_holdout().images[0])

    def send_big() -> float:
        with TritonClient(embedded_server.http_url) as client:
            t = time.monotonic()
            with contextlib.suppress(ClientError):  # refused past its deadline is fine: it ended
                client.infer("mnist", {"image_bytes": bytes_batch(big)}, ["probabilities"])
            return time.monotonic() - t

    def send_small() -> float:
        time.sleep(0.05)  # queued behind the big one
        with TritonClient(embedded_server.http_url) as client:
            t = time.monotonic()
            client.infer("mnist", {"image_bytes": bytes_batch([digit])}, ["probabilities"])
            return time.monotonic() - t

    waits = []
    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            big_f, small_f = pool.submit(send_big), pool.submit(send_small)
            waits.append((big_f.result(), small_f.result()))
    worst_small = max(s for _, s in waits)
    print(f"\nbig request (4 x 2048^2 PNG) took {[f'{b:.2f}' for b, _ in waits]} s; one-digit request beside "
          f"it waited {[f'{s:.2f}' for _, s in waits]} s (bound 1.5 s)")
    assert worst_small < 1.5
