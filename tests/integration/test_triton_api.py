"""The one client layer (triton_api) against the real embedded server: readiness, index, metadata,
inference with parameters, the metrics helper, and load/unload with a config override (explicit mode)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from build_tools.build import build_repositories
from build_tools.errors import ClientError
from build_tools.server import ServerOptions, TritonServer, free_port
from build_tools.spec import parse_spec
from tests.support.onnx_models import multi_input
from triton_api import PROTOCOLS, TritonClient, metric_value, scrape

pytestmark = pytest.mark.server


def _url(server: TritonServer, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def _admin(server: TritonServer, protocol: str) -> dict[str, str]:
    # The repository API is restricted by default (issue 17): operator calls carry the admin header.
    return server.admin_headers if protocol == "http" else server.grpc_admin_headers


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_client_reports_readiness_and_index_when_the_server_serves_models(
    embedded_server: TritonServer, protocol: str
) -> None:
    with TritonClient(_url(embedded_server, protocol), protocol, headers=_admin(embedded_server, protocol)) as client:
        assert client.is_ready()
        assert client.is_model_ready("t_multi_input")
        assert not client.is_model_ready("no_such_model")
        index = {(m["name"], m.get("version")): m.get("state") for m in client.repository_index()}
        assert index[("t_multi_input", "1")] == "READY"
        assert client.server_metadata()["version"] == "2.51.0"
        meta = client.model_metadata("t_multi_input")
        assert [i["name"] for i in meta["inputs"]] == ["a", "b"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_client_answers_when_the_request_carries_parameters(
    embedded_server: TritonServer, protocol: str
) -> None:
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    with TritonClient(_url(embedded_server, protocol), protocol) as client:
        out = client.infer("t_multi_input", {"a": a, "b": a}, ["sum:0"], parameters={"trace_note": "x"})
        prepared = client.prepare("t_multi_input", {"a": a, "b": 2 * a}, ["sum:0"])
        again = client.send(prepared)
    np.testing.assert_allclose(out["sum:0"], 2 * a)
    np.testing.assert_allclose(again["sum:0"], 3 * a)


def test_triton_client_raises_client_error_naming_the_input_when_a_request_is_bad(
    embedded_server: TritonServer,
) -> None:
    a = np.zeros((1, 4), dtype=np.float32)
    with TritonClient(embedded_server.http_url) as client, pytest.raises(ClientError) as err:
        client.infer("t_multi_input", {"a": a, "not_an_input": a}, ["sum:0"])
    assert "inference on 't_multi_input' failed" in str(err.value)
    assert "not_an_input" in str(err.value)
    assert err.value.__cause__ is not None


def test_metric_value_counts_each_inference_when_requests_are_served(embedded_server: TritonServer) -> None:
    before = metric_value(scrape(embedded_server.metrics_url), "nv_inference_count", model="t_multi_input") or 0
    a = np.ones((3, 4), dtype=np.float32)
    with TritonClient(embedded_server.http_url) as client:
        client.infer("t_multi_input", {"a": a, "b": a}, ["sum:0"])
    after = metric_value(scrape(embedded_server.metrics_url), "nv_inference_count", model="t_multi_input")
    assert after == before + 3
    assert metric_value("", "nv_inference_count") is None


def test_triton_client_raises_client_error_when_nothing_listens() -> None:
    url = f"127.0.0.1:{free_port()}"
    with TritonClient(url, "http", timeout_s=2.0) as client:
        assert not client.is_ready()
        with pytest.raises(ClientError, match="cannot reach the server at http://"):
            client.server_metadata()
    with pytest.raises(ClientError, match="cannot scrape"):
        scrape(f"http://{url}/metrics", timeout_s=2.0)


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A second, small server in explicit model-control mode (load/unload are refused otherwise)."""
    root = tmp_path_factory.mktemp("explicit")
    data = {
        "flavors": {"embedded": {"output": str(root / "repo")}},
        "models": {"t_sum": {"source": str(multi_input(root / "sum.onnx")), "max_batch_size": 8,
                             "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 2}]}}},
    }
    build_repositories(parse_spec(data, root), ["embedded"])
    options = ServerOptions([root / "repo"], model_control_explicit=True, log_file=root / "server.log",
                            workdir=root / "server")
    with TritonServer(options) as server:
        yield server


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_client_reloads_with_the_override_when_load_model_gets_a_config(
    explicit_server: TritonServer, protocol: str
) -> None:
    with TritonClient(_url(explicit_server, protocol), protocol, headers=_admin(explicit_server, protocol)) as client:
        config = client.model_config("t_sum")
        assert config["instance_group"][0]["count"] == 2
        config["instance_group"][0]["count"] = 1
        client.load_model("t_sum", config=config)
        assert client.model_config("t_sum")["instance_group"][0]["count"] == 1
        client.unload_model("t_sum")
        assert not client.is_model_ready("t_sum")
        client.load_model("t_sum")  # back to its config.pbtxt
        assert client.is_model_ready("t_sum")
        assert client.model_config("t_sum")["instance_group"][0]["count"] == 2


def test_triton_client_raises_client_error_when_loading_a_model_that_does_not_exist(
    explicit_server: TritonServer,
) -> None:
    with TritonClient(explicit_server.http_url, headers=explicit_server.admin_headers) as client, pytest.raises(
        ClientError, match="load of 'nope'"
    ):
        client.load_model("nope")
