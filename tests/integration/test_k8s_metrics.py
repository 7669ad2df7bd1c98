"""Every metric name the Kubernetes autoscaling reads is real: the recording rules' inputs, the
prometheus-adapter rules and the KEDA queries, against a scrape of the session's embedded server
after real requests (the recorded names must be recorded by compose/prometheus/recording.yml)."""

from __future__ import annotations

import urllib.request

import pytest
import yaml

from build_tools.k8s import manifests as m
from build_tools.k8s.writer import PROMETHEUS_DIR
from build_tools.server import TritonServer
from tests.compose.test_metrics_names import _send_digits, metric_names, scraped_names

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def scrape(embedded_server: TritonServer) -> set[str]:
    _send_digits(embedded_server)
    with urllib.request.urlopen(embedded_server.metrics_url, timeout=10) as r:
        return scraped_names(r.read().decode())


def _recording() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "recording.yml").read_text())["groups"]
    return {r["record"]: r["expr"] for g in groups for r in g["rules"]}


def _adapter_expressions() -> list[str]:
    exprs = []
    for rule in m.adapter_rules()["rules"]:
        series = metric_names(rule["seriesQuery"])
        assert len(series) == 1, rule["seriesQuery"]
        # The adapter fills in the series and the label matchers; the rest is plain PromQL.
        query = rule["metricsQuery"].replace("<<.Series>>", next(iter(series)))
        exprs += [rule["seriesQuery"], query.replace("{<<.LabelMatchers>>}", "").replace("<<.GroupBy>>", "pod")]
    return exprs


def test_recording_rules_read_only_exported_metrics_when_checked_against_real_scrape(scrape: set[str]) -> None:
    recorded = set(_recording())
    problems = {name: sorted(metric_names(expr) - recorded - scrape) for name, expr in _recording().items()}
    assert not {k: v for k, v in problems.items() if v}, problems
    assert {"nv_inference_queue_duration_us", "nv_inference_request_success",
            "nv_inference_pending_request_count"} <= scrape


def test_autoscaler_queries_read_recorded_or_exported_metrics_when_checked_against_real_scrape(
    scrape: set[str],
) -> None:
    known = set(_recording()) | scrape
    exprs = [*_adapter_expressions(), *m.keda_queries(m.K8sOptions()).values()]
    used = set().union(*(metric_names(e) for e in exprs))
    assert {m.QUEUE_SERIES, m.PENDING_SERIES} <= used
    assert used - known == set()
