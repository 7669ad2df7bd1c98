"""Dynamic batching really batches: read from the server's real Prometheus metrics endpoint."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from build_tools.server import TritonServer
from triton_api import TritonClient, metric_value, scrape

pytestmark = pytest.mark.server


def _metric(text: str, name: str, model: str) -> float:
    value = metric_value(text, name, model=model)
    assert value is not None, f"{name} for {model} missing from the metrics endpoint"
    return value


def _scrape(server: TritonServer) -> str:
    return scrape(server.metrics_url)


def test_dynamic_batching_merges_requests_when_load_is_concurrent(embedded_server: TritonServer) -> None:
    model = "t_multi_input"
    before = _scrape(embedded_server)
    base_inf = _metric(before, "nv_inference_count", model)
    base_exec = _metric(before, "nv_inference_exec_count", model)
    rng = np.random.default_rng(0)
    total = 64

    def call(_: int) -> None:
        a = rng.normal(size=(1, 4)).astype(np.float32)
        with TritonClient(embedded_server.http_url) as client:
            out = client.infer(model, {"a": a, "b": a}, ["sum:0"])["sum:0"]
        assert np.allclose(out, 2 * a)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(total)))
    after = _scrape(embedded_server)
    inferences = _metric(after, "nv_inference_count", model) - base_inf
    executions = _metric(after, "nv_inference_exec_count", model) - base_exec
    assert inferences == total
    # 16 concurrent clients into a 20 ms queue window: at least ~4 requests per execution on average.
    assert executions <= total / 4, f"{executions} executions for {inferences} inferences: not batching"
