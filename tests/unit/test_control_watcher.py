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


MONITOR = """# the drift monitor's /metrics (control/monitor/service.py)
tdk_monitor_check_alarm{check="canary_worse",model="clf",version="2"} 1.0
tdk_monitor_check_alarm{check="accuracy_drop",model="clf",version="2"} 0.0
tdk_monitor_check_alarm{check="canary_worse",model="clf",version="1"} 0.0
tdk_monitor_check_alarm{check="canary_worse",model="other",version="2"} 1.0
tdk_monitor_accuracy_ratio{bound="estimate",model="clf",role="champion",version="1"} 0.98
tdk_monitor_accuracy_ratio{bound="lower",model="clf",role="champion",version="1"} 0.96
tdk_monitor_accuracy_ratio{bound="upper",model="clf",role="champion",version="1"} 0.99
tdk_monitor_accuracy_ratio{bound="estimate",model="clf",role="canary",version="2"} 0.80
tdk_monitor_accuracy_ratio{bound="lower",model="clf",role="canary",version="2"} 0.75
tdk_monitor_accuracy_ratio{bound="upper",model="clf",role="canary",version="2"} 0.85
tdk_monitor_window_records{model="clf",version="2",window="labels"} 200
"""


def test_judge_accuracy_rolls_back_with_both_intervals_when_the_monitor_says_canary_worse() -> None:
    from control.watcher import judge_accuracy, parse_monitor

    figures = parse_monitor(MONITOR, "clf")
    assert figures[1].alarms == frozenset() and figures[2].alarms == {"canary_worse"}
    reason = judge_accuracy(figures[1], figures[2])
    assert reason == ("accuracy from labels 80.00% [75.00%, 85.00%] over 200 labels below the champion's "
                      "98.00% [96.00%, 99.00%] over 0 labels (the intervals separate)")


def test_judge_accuracy_keeps_the_canary_when_the_monitor_raises_no_alarm_on_it() -> None:
    from control.watcher import judge_accuracy, parse_monitor

    figures = parse_monitor(MONITOR.replace('version="2"} 1.0', 'version="2"} 0.0'), "clf")
    assert judge_accuracy(figures[1], figures[2]) is None
    assert judge_accuracy(figures[1], None) is None
