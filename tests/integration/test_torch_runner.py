"""The TorchScript format on the embedded server: the torch runner on KIND_CPU answers like offline ONNX
Runtime, batches requests, rejects bad ones alone, and a KIND_GPU instance fails at load without CUDA."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from build_tools.build import build_repositories
from build_tools.errors import ClientError
from build_tools.server import ServerOptions, TritonServer
from build_tools.spec import parse_spec
from clients.datasets import mnist_holdout
from clients.evaluate import EvalSettings, evaluate
from triton_api import PROTOCOLS, TritonClient, metric_value, scrape

pytest.importorskip("torch", reason="the torch runner needs PyTorch: make install (extra `torch`)")

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "models/mnist/mnist_cnn.onnx"
TS_MODEL = "mnist_classifier_torchscript"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_torch_runner_answers_like_onnxruntime_when_holdout_evaluated_on_kind_cpu(
    embedded_server: TritonServer, protocol: str
) -> None:
    settings = EvalSettings(
        urls={"http": embedded_server.http_url, "grpc": embedded_server.grpc_url},
        onnx=ONNX, classifier_model=TS_MODEL, ensemble_model="mnist", paths=["classifier"],
        protocols=[protocol], batch_size=32, concurrency=4, progress=False,
    )
    ev = evaluate(settings, mnist_holdout())
    assert ev.ok, ev.failures
    (result,) = ev.results
    assert result.n == 500 and result.parity_disagreements == 0 and not result.errors
    assert result.parity_max_abs_diff <= 1e-4


def test_torch_runner_instance_is_cpu_when_config_says_kind_cpu(embedded_server: TritonServer) -> None:
    with TritonClient(embedded_server.http_url) as client:
        config = client.model_config(TS_MODEL)
    assert config["backend"] == "python"
    assert [g["kind"] for g in config["instance_group"]] == ["KIND_CPU"]


def test_torch_runner_batches_concurrent_requests_when_many_arrive(embedded_server: TritonServer) -> None:
    images = mnist_holdout().images[:64].astype(np.float32)[:, None]
    before = scrape(embedded_server.metrics_url)

    def call(i: int) -> np.ndarray:
        with TritonClient(embedded_server.http_url) as client:
            return client.infer(TS_MODEL, {"image": images[i : i + 1]})["probabilities"]

    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(call, range(64)))
    after = scrape(embedded_server.metrics_url)
    assert all(o.shape == (1, 10) for o in outs)
    counts = {
        name: (metric_value(after, name, model=TS_MODEL) or 0) - (metric_value(before, name, model=TS_MODEL) or 0)
        for name in ("nv_inference_count", "nv_inference_exec_count")
    }
    assert counts["nv_inference_count"] == 64
    assert counts["nv_inference_exec_count"] < 64, f"{counts}: requests were never batched together"


def test_torch_runner_rejects_only_the_bad_request_when_a_shape_is_wrong(embedded_server: TritonServer) -> None:
    good = np.zeros((1, 1, 28, 28), np.float32)
    bad = np.zeros((1, 1, 27, 28), np.float32)
    with TritonClient(embedded_server.grpc_url, "grpc") as client:
        with pytest.raises(ClientError, match="shape"):
            client.infer(TS_MODEL, {"image": bad})
        assert client.infer(TS_MODEL, {"image": good})["probabilities"].shape == (1, 10)


@pytest.fixture(scope="module")
def explicit_torch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A small explicit-mode server holding only the TorchScript model, so a GPU config can be tried."""
    root = tmp_path_factory.mktemp("torchscript")
    data = {
        "flavors": {"embedded": {"output": str(root / "repo")}},
        "models": {"digits": {"source": str(ONNX), "formats": ["onnx", "torchscript"], "max_batch_size": 8,
                              "torchscript": {"source": str(ONNX.with_suffix(".pt"))},
                              "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 1}]}}},
    }
    build_repositories(parse_spec(data, root), ["embedded"])
    options = ServerOptions([root / "repo"], model_control_explicit=True, log_file=root / "server.log",
                            workdir=root / "server")
    with TritonServer(options) as server:
        yield server


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_torch_runner_fails_at_load_with_a_clear_message_when_kind_gpu_has_no_cuda(
    explicit_torch_server: TritonServer,
) -> None:
    if _has_cuda():
        pytest.skip("this machine has CUDA: a KIND_GPU instance loads here (tools/gpu_check.sh covers it)")
    with TritonClient(explicit_torch_server.http_url, headers=explicit_torch_server.admin_headers) as client:
        config = client.model_config("digits_torchscript")
        config["instance_group"] = [{"kind": "KIND_GPU", "count": 1, "gpus": [0]}]
        with pytest.raises(ClientError, match=r"(?i)gpu") as err:
            client.load_model("digits_torchscript", config=config)
        print(f"load error as a client sees it: {err.value}")
        # The server keeps serving: the CPU config loads again and answers.
        config["instance_group"] = [{"kind": "KIND_CPU", "count": 1}]
        client.load_model("digits_torchscript", config=config)
        out = client.infer("digits_torchscript", {"image": np.zeros((2, 1, 28, 28), np.float32)})
    assert out["probabilities"].shape == (2, 10)
