"""The evaluation gate: each rule fails on purpose, alone, with its own message; the limits are exact;
served answers are compared with the reference sample by sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.evaluate import EvalSettings, build_parser, settings_from_args
from clients.gate import compare, gate_failures
from clients.report import PathResult


def _result(
    accuracy: float = 0.99, disagreements: int = 0, diff: float = 0.0, errors: list[str] | None = None
) -> PathResult:
    return PathResult(
        name="classifier", protocol="grpc", model="mnist_classifier", n=500, accuracy=accuracy, per_class={},
        confusion=[], parity_disagreements=disagreements, parity_max_abs_diff=diff, latency_ms={},
        throughput_per_s=0.0, requests=1, batch_size=1, concurrency=1, errors=errors or [],
    )


def test_gate_defaults_are_the_documented_limits_when_cli_given_no_options() -> None:
    cli = settings_from_args(build_parser().parse_args([]))
    plain = EvalSettings(urls={}, onnx=Path("m.onnx"), classifier_model="c", ensemble_model="e")
    assert (cli.min_accuracy, cli.parity_atol) == (plain.min_accuracy, plain.parity_atol) == (0.97, 1e-4)


def test_gate_passes_when_every_rule_is_met_at_its_limit() -> None:
    assert gate_failures([_result(accuracy=0.97, diff=1e-4)]) == []


@pytest.mark.parametrize("accuracy", [0.9699, 0.95, 0.93])
def test_gate_fails_on_accuracy_alone_when_accuracy_is_below_default(accuracy: float) -> None:
    assert gate_failures([_result(accuracy=accuracy)]) == [
        f"classifier over grpc: accuracy {accuracy:.4f} is below the threshold 0.97"
    ]


def test_gate_fails_when_a_single_top1_prediction_flips() -> None:
    assert gate_failures([_result(disagreements=1)]) == [
        "classifier over grpc: 1 top-1 prediction(s) differ from offline ONNX Runtime"
    ]


@pytest.mark.parametrize(("diff", "shown"), [(1.01e-4, "1.01e-04"), (3e-3, "3.00e-03"), (0.5, "5.00e-01")])
def test_gate_fails_on_drift_without_a_flip_when_probabilities_move_past_tolerance(diff: float, shown: str) -> None:
    assert gate_failures([_result(diff=diff)]) == [
        f"classifier over grpc: probabilities differ from offline ONNX Runtime by up to {shown} (tolerance 1e-04)"
    ]


def test_gate_fails_naming_count_and_first_error_when_requests_failed() -> None:
    failures = gate_failures([_result(errors=["samples 0..15: boom", "samples 16..31: bang"])])
    assert failures == ["classifier over grpc: 2 request(s) failed, first: samples 0..15: boom"]


def test_gate_reports_every_broken_rule_of_every_path_when_several_fail() -> None:
    bad = _result(accuracy=0.5, disagreements=3, diff=0.2, errors=["x"])
    bad.name, bad.protocol = "ensemble", "http"
    failures = gate_failures([_result(), bad])
    assert [f.split(": ")[0] for f in failures] == ["ensemble over http"] * 4
    assert "3 top-1" in failures[1] and "2.00e-01" in failures[2] and "0.5000" in failures[3]


def test_gate_uses_given_limits_when_caller_overrides_them() -> None:
    assert len(gate_failures([_result(accuracy=0.99, diff=1e-6)], min_accuracy=0.995, parity_atol=1e-7)) == 2
    assert gate_failures([_result(accuracy=0.6, diff=0.5)], min_accuracy=0.5, parity_atol=1.0) == []
    assert gate_failures([_result(accuracy=0.6, disagreements=1)], min_accuracy=0.5, parity_atol=1.0) != []


def _probs(top: list[int], classes: int = 4) -> np.ndarray:
    p = np.full((len(top), classes), 0.1, np.float32)
    p[np.arange(len(top)), top] = 0.7
    return p


def test_compare_counts_flips_drift_and_accuracy_when_served_answers_differ() -> None:
    reference = _probs([0, 1, 2, 3, 0, 1])
    labels = np.array([0, 1, 2, 3, 1, 1])
    served = reference.copy()
    served[2] = _probs([3])[0]  # one flip
    served[5] += 2e-3  # one drift without a flip
    cmp = compare({0: served[:4], 4: served[4:]}, reference, labels)
    assert cmp.answered.all()
    assert cmp.predicted.tolist() == [0, 1, 3, 3, 0, 1]
    assert cmp.disagreements == 1
    assert cmp.max_abs_diff == pytest.approx(0.6)
    assert cmp.accuracy == pytest.approx(4 / 6)
    drift_only = compare({0: reference[:3] + np.float32(3e-3), 3: reference[3:]}, reference, labels)
    assert drift_only.disagreements == 0 and drift_only.max_abs_diff == pytest.approx(3e-3, rel=1e-3)


def test_compare_counts_unanswered_samples_as_wrong_when_a_request_failed() -> None:
    reference = _probs([0, 1, 2, 3])
    labels = np.array([0, 1, 2, 3])
    cmp = compare({0: reference[:2]}, reference, labels)  # samples 2 and 3 never came back
    assert cmp.answered.tolist() == [True, True, False, False]
    assert cmp.predicted.tolist() == [0, 1, -1, -1]
    assert cmp.accuracy == 0.5 and cmp.disagreements == 2 and cmp.max_abs_diff == 0.0
    nothing = compare({}, reference, labels)
    assert nothing.max_abs_diff == float("inf") and nothing.accuracy == 0.0


def test_compare_places_each_request_at_its_start_when_answers_arrive_out_of_order() -> None:
    reference = _probs([0, 1, 2, 3, 2, 1])
    labels = np.array([0, 1, 2, 3, 2, 1])
    cmp = compare({4: reference[4:], 0: reference[:2], 2: reference[2:4]}, reference, labels)
    assert cmp.predicted.tolist() == labels.tolist()
    assert cmp.disagreements == 0 and cmp.max_abs_diff == 0.0 and cmp.accuracy == 1.0
