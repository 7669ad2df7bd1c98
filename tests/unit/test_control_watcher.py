"""The automatic-rollback rule and the metrics parsing it reads (pure functions; the live loop is tested
against the real server in tests/integration/test_lifecycle.py)."""

from __future__ import annotations

from build_tools.spec import AutoRollbackSpec
from control.watcher import VersionSample, Window, judge, parse_metrics, window

RULE = AutoRollbackSpec(window_s=30, min_requests=50, max_error_ratio_increase=0.02, max_p99_ratio=1.5,
                        min_p99_increase_ms=5)


def test_judge_rolls_back_when_canary_error_ratio_exceeds_the_margin() -> None:
    reason = judge(Window(900, 9, 10.0), Window(100, 5, 10.0), RULE)
    assert reason is not None and "error ratio 5.00% vs champion 1.00%" in reason


def test_judge_keeps_the_canary_when_error_gap_is_within_the_margin() -> None:
    assert judge(Window(900, 9, 10.0), Window(100, 2, 10.0), RULE) is None


def test_judge_rolls_back_when_canary_p99_is_worse_by_ratio_and_absolute_gap() -> None:
    reason = judge(Window(900, 0, 10.0), Window(100, 0, 40.0), RULE)
    assert reason is not None and "p99 40.0 ms vs champion 10.0 ms" in reason


def test_judge_ignores_small_p99_gaps_when_below_the_absolute_floor() -> None:
    assert judge(Window(900, 0, 1.0), Window(100, 0, 4.0), RULE) is None


def test_judge_waits_when_the_window_has_too_few_requests() -> None:
    assert judge(Window(900, 0, 10.0), Window(49, 49, 99.0), RULE) is None


METRICS = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="clf",version="1"} 1000
nv_inference_request_success{model="clf",version="2"} 90
nv_inference_request_success{model="other",version="1"} 5
nv_inference_request_failure{model="clf",reason="BACKEND",version="2"} 7
nv_inference_request_failure{model="clf",reason="OTHER",version="2"} 3
nv_inference_request_summary_us{model="clf",version="1",quantile="0.99"} 2500
nv_inference_request_summary_us{model="clf",version="2",quantile="0.99"} NaN
nv_inference_request_summary_us{model="clf",version="2",quantile="0.5"} 100
"""


def test_parse_metrics_sums_failure_reasons_and_skips_nan_when_reading_one_model() -> None:
    samples = parse_metrics(METRICS, "clf")
    assert samples == {1: VersionSample(1000, 0, 2500), 2: VersionSample(90, 10, None)}


def test_window_counts_deltas_when_counters_grow() -> None:
    w = window(VersionSample(100, 1, None), VersionSample(200, 6, 3000))
    assert (w.requests, w.failures, w.p99_ms, w.error_ratio) == (105, 5, 3.0, 5 / 105)
