"""Bad requests get a clear error; the server stays healthy and keeps answering good requests."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from build_tools.errors import ClientError
from build_tools.server import TritonServer
from triton_api import PROTOCOLS, TritonClient

pytestmark = pytest.mark.server

GOOD = {"image": np.zeros((1, 1, 28, 28), np.float32)}


def _raw_request(server: TritonServer, protocol: str, model: str, tensors: list[tuple[str, np.ndarray, str]],
                 version: str = "") -> str:
    """Send with tritonclient directly, returning the server's error message."""
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    client = mod.InferenceServerClient(url)
    inputs = []
    for name, array, dtype in tensors:
        inp = mod.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    try:
        client.infer(model, inputs, model_version=version)
    except InferenceServerException as e:
        return e.message()
    finally:
        client.close()
    raise AssertionError("request was accepted")


CASES = {
    "wrong_shape": ("mnist_classifier", [("image", np.zeros((1, 1, 28, 27), np.float32), "FP32")], "",
                    ["unexpected shape", "image", "[-1,1,28,28]"]),
    "batch_above_max": ("mnist_classifier", [("image", np.zeros((257, 1, 28, 28), np.float32), "FP32")], "",
                        ["batch", "256"]),
    "unknown_model": ("no_such_model", [("image", np.zeros((1, 1, 28, 28), np.float32), "FP32")], "",
                      ["no_such_model"]),
    "unknown_version": ("mnist_classifier", [("image", np.zeros((1, 1, 28, 28), np.float32), "FP32")], "7",
                        ["mnist_classifier", "7"]),
    "missing_input": ("t_multi_input", [("a", np.zeros((1, 4), np.float32), "FP32")], "",
                      ["expected 2 inputs but got 1", "b"]),
    "unknown_input": ("t_multi_input", [("a", np.zeros((1, 4), np.float32), "FP32"),
                                        ("c", np.zeros((1, 4), np.float32), "FP32")], "",
                      ["unexpected inference input 'c'"]),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_request_rejected_with_clear_error_when_malformed(
    embedded_server: TritonServer, protocol: str, case: str
) -> None:
    model, tensors, version, fragments = CASES[case]
    message = _raw_request(embedded_server, protocol, model, tensors, version)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{case}: {fragment!r} not in {message!r}"
    _assert_still_serving(embedded_server, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_rejected_when_data_type_wrong(embedded_server: TritonServer, protocol: str) -> None:
    url = embedded_server.http_url if protocol == "http" else embedded_server.grpc_url
    with TritonClient(url, protocol) as c, pytest.raises(ClientError) as err:
        c.infer("mnist_classifier", {"image": np.zeros((1, 1, 28, 28), np.float64)})
    message = str(err.value)
    assert "FP64" in message and "FP32" in message and "mnist_classifier" in message
    _assert_still_serving(embedded_server, protocol)


def _assert_still_serving(server: TritonServer, protocol: str) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonClient(url, protocol) as client:
        assert client.is_ready()
        out = client.infer("mnist_classifier", GOOD, ["probabilities"])["probabilities"]
    assert out.shape == (1, 10) and abs(float(out.sum()) - 1.0) < 1e-4
