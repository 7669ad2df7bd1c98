"""The closed-loop load generator against the real server, and the response checks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from build_tools.server import TritonServer
from loadtest import loadgen, procstat
from loadtest.common import check_probabilities, spec_sample
from loadtest.errors import ResponseCheckError
from tests.support.samples import relabelled_sample


@pytest.mark.server
@pytest.mark.parametrize(("protocol", "ensemble", "batch"), [("http", False, 4), ("grpc", True, 1)])
def test_run_load_counts_only_successes_when_server_answers_correctly(
    embedded_server: TritonServer, protocol: str, ensemble: bool, batch: int
) -> None:
    make = loadgen.triton_http_target if protocol == "http" else loadgen.triton_grpc_target
    address = embedded_server.http_url if protocol == "http" else embedded_server.grpc_url
    target = make(address, relabelled_sample(), batch, ensemble=ensemble)
    result = loadgen.run_load(target, concurrency=2, duration_s=0.6, warmup_s=0.2, check_labels=True)
    assert result.failures == 0, result.first_error
    assert result.requests > 5
    assert result.images_per_s == pytest.approx(result.throughput_rps * batch)
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]


@pytest.mark.server
def test_run_load_records_failures_when_the_model_does_not_exist(embedded_server: TritonServer) -> None:
    target = loadgen.triton_http_target(embedded_server.http_url, spec_sample(), 1)
    target.requests = [r.replace(b"/models/mnist_classifier/", b"/models/no_such_model/") for r in target.requests]
    result = loadgen.run_load(target, concurrency=1, duration_s=0.4, warmup_s=0.1)
    assert result.throughput_rps == 0
    assert result.failures > 0
    assert "no_such_model" in (result.first_error or "")


def test_check_probabilities_raises_when_shape_or_label_is_wrong() -> None:
    probs = np.full((2, 10), 0.1, dtype=np.float32)
    probs[:, 3] = 0.5
    assert check_probabilities(probs, 2).tolist() == [3, 3]
    with pytest.raises(ResponseCheckError, match=r"shape \[2, 10\], expected \[4, 10\]"):
        check_probabilities(probs, 4)
    with pytest.raises(ResponseCheckError, match="differ from the expected"):
        check_probabilities(probs, 2, expected=np.array([3, 4]))
    with pytest.raises(ResponseCheckError, match="outside"):
        check_probabilities(probs * 10, 2)


def test_tree_cpu_sees_this_process_when_asked_for_its_pid() -> None:
    snapshot = procstat.tree_cpu(os.getpid())
    assert os.getpid() in snapshot
    assert snapshot[os.getpid()].cpu_s > 0


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_run_load_counts_every_request_failed_when_expected_labels_are_wrong(
    embedded_server: TritonServer, protocol: str
) -> None:
    make = loadgen.triton_http_target if protocol == "http" else loadgen.triton_grpc_target
    address = embedded_server.http_url if protocol == "http" else embedded_server.grpc_url
    target = make(address, relabelled_sample(shift=1), 2)
    result = loadgen.run_load(target, concurrency=1, duration_s=0.4, warmup_s=0.1, check_labels=True)
    assert result.failures == result.requests > 0
    assert result.throughput_rps == 0
    assert "2 of 2 predicted labels differ from the expected ones" in (result.first_error or "")
def test_refusal_classified_apart_from_errors_when_triton_sheds_load() -> None:
    is_refusal = loadgen.is_refusal  # shared with the Locust users (importing them would import Locust)
    assert loadgen.refusal_kind("Exceeds maximum queue size") == "queue full"
    assert loadgen.refusal_kind("Request timeout expired") == "queue timeout"
    assert loadgen.refusal_kind("unexpected shape") == "other"
    assert is_refusal("503", "[request id: <id_unknown>] Exceeds maximum queue size")
    assert is_refusal("StatusCode.UNAVAILABLE", "Request timeout expired")
    assert not is_refusal("400", "Exceeds maximum queue size")
    assert not is_refusal("StatusCode.UNAVAILABLE", "failed to connect to all addresses")
    with pytest.raises(loadgen.RefusedError):
        loadgen.decode_triton_http(503, {}, b"Exceeds maximum queue size", 1)


def test_count_slow_counts_latencies_over_each_threshold_when_given_seconds() -> None:
    assert loadgen.count_slow([0.1, 0.3, 0.5], (250.0, 400.0)) == {"250": 2, "400": 1}
    assert loadgen.count_slow([], (250.0,)) == {"250": 0}
