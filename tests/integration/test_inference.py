"""Served answers equal local ONNX Runtime, over HTTP and gRPC, for every test model and MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from build_tools.server import TritonServer
from build_tools.spec import DeploySpec
from triton_api import PROTOCOLS, TritonClient

pytestmark = pytest.mark.server
ATOL = 1e-5


def _inputs(name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Request inputs per test model (shapes include the batch dimension where the model batches)."""
    if name == "t_multi_input":
        return {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(3, 4)).astype(np.float32)}
    if name == "t_int64":
        return {"ids": rng.integers(-(2**40), 2**40, size=(2, 3), dtype=np.int64)}
    if name == "t_dynamic_dim":
        return {"x": rng.normal(size=(2, 7)).astype(np.float32)}
    if name == "t_fixed_batch":
        return {"x": rng.normal(size=(1, 3)).astype(np.float32)}
    if name == "t_classifier":
        return {"pixels": rng.uniform(0, 1, size=(5, 1, 8, 8)).astype(np.float32)}
    if name == "mnist_classifier":
        return {"image": rng.uniform(0, 255, size=(4, 1, 28, 28)).astype(np.float32)}
    raise KeyError(name)


MODELS = ["t_multi_input", "t_int64", "t_dynamic_dim", "t_fixed_batch", "t_classifier", "mnist_classifier"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", MODELS)
def test_inference_matches_onnxruntime_when_served(
    embedded_server: TritonServer,
    test_models_spec: DeploySpec,
    project_spec: DeploySpec,
    model: str,
    protocol: str,
) -> None:
    spec = project_spec if model in project_spec.models else test_models_spec
    source = spec.resolve(spec.models[model].version_sources[max(spec.models[model].version_sources)])
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    inputs = _inputs(model, np.random.default_rng(7))
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    url = embedded_server.http_url if protocol == "http" else embedded_server.grpc_url
    with TritonClient(url, protocol) as client:
        got = client.infer(model, inputs, list(expected))
    for name, want in expected.items():
        assert got[name].shape == want.shape, name
        assert got[name].dtype == want.dtype, name
        assert np.max(np.abs(got[name].astype(np.float64) - want.astype(np.float64))) <= ATOL, name


def test_versions_answer_separately_when_policy_serves_all(embedded_server: TritonServer, test_models_spec) -> None:
    inputs = _inputs("t_classifier", np.random.default_rng(3))
    with TritonClient(embedded_server.http_url) as client:
        v1 = client.infer("t_classifier", inputs, ["scores"], version="1")["scores"]
        v2 = client.infer("t_classifier", inputs, ["scores"], version="2")["scores"]
        latest = client.infer("t_classifier", inputs, ["scores"])["scores"]
    for version, got in (("1", v1), ("2", v2)):
        src = test_models_spec.resolve(test_models_spec.models["t_classifier"].version_sources[int(version)])
        want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
        assert np.allclose(got, want, atol=ATOL), version
    assert not np.allclose(v1, v2)
    assert np.array_equal(latest, v2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classification_returns_labels_when_class_count_set(
    embedded_server: TritonServer, project_root: Path, protocol: str
) -> None:
    url = embedded_server.http_url if protocol == "http" else embedded_server.grpc_url
    images = np.array([[(project_root / f"models/mnist/examples/digit_{d}.png").read_bytes()] for d in (0, 7)],
                      dtype=np.object_)
    with TritonClient(url, protocol) as client:
        top = client.classify("mnist", {"image_bytes": images}, "probabilities", top_k=3)
    assert [row[0].label for row in top] == ["0", "7"]
    assert all(len(row) == 3 and row[0].score >= row[1].score >= row[2].score for row in top)


def test_dynamic_dims_batch_together_when_lengths_differ(embedded_server: TritonServer) -> None:
    """Requests with different sequence lengths share a queue window; each still gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    requests = [rng.normal(size=(1, length)).astype(np.float32) for length in (3, 5, 3, 9, 5, 3)]

    def call(x: np.ndarray) -> np.ndarray:
        with TritonClient(embedded_server.http_url) as client:
            return client.infer("t_dynamic_dim", {"x": x}, ["total", "scaled"])["total"]

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(call, requests))
    for x, total in zip(requests, results):
        assert np.allclose(total, x.sum(axis=1, keepdims=True), atol=ATOL)
