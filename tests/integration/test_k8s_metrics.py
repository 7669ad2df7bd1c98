"""Every metric name the Kubernetes autoscaling reads is real: the recording rules' inputs, the
prometheus-adapter rules and the KEDA queries, against a scrape of the session's embedded server
after real requests (the recorded names must be recorded by compose/prometheus/recording.yml); then
Debian's Prometheus evaluates the recording rules on that server's metrics, and the adapter's and
KEDA's queries must return finite values there."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from build_tools.k8s import manifests as m
from build_tools.k8s.writer import PROMETHEUS_DIR
from build_tools.server import TritonServer, free_port
from tests.compose.test_metrics_names import ENSEMBLE, _send_digits, metric_names, scraped_names
from tests.support.tools import tool_missing

pytestmark = pytest.mark.server
NAMESPACE = "triton"
PER_MODEL = "namespace_pod_model:triton_queue_us_per_request:rate1m"


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


# -- the rules and queries evaluated by a real Prometheus on the real server's metrics ---------------
def _prom_query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(embedded_server: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus scraping the session server every second, with compose's rule files, the
    target labelled namespace/pod as the ServiceMonitor labels it on Kubernetes."""
    binary = shutil.which("prometheus")
    if binary is None:
        tool_missing("prometheus is not installed (Debian package `prometheus`)")
    folder = tmp_path_factory.mktemp("prometheus")
    for name in ("alerts.yml", "recording.yml"):
        shutil.copy(PROMETHEUS_DIR / name, folder / name)
    target = urllib.parse.urlsplit(embedded_server.metrics_url).netloc
    (folder / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml", "recording.yml"],
        "scrape_configs": [{"job_name": "triton", "static_configs": [
            {"targets": [target], "labels": {"namespace": NAMESPACE, "pod": "triton-0"}}]}],
    }))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(folder / "prometheus.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((folder / "prometheus.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_autoscaling_series_recorded_when_prometheus_scrapes_real_server(
    embedded_server: TritonServer, prometheus: str
) -> None:
    opts = m.K8sOptions(namespace=NAMESPACE)
    adapter = [rule["metricsQuery"].replace("<<.Series>>", rule["name"]["matches"].strip("^$"))
               .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod="triton-0"').replace("<<.GroupBy>>", "pod")
               for rule in m.adapter_rules()["rules"]]
    queries = {
        "queue per model": f'{PER_MODEL}{{model="{ENSEMBLE}"}}',
        **{f"keda {k}": q for k, q in m.keda_queries(opts).items()},
        **{f"adapter {i}": q for i, q in enumerate(adapter)},
    }
    deadline = time.monotonic() + 90
    missing: dict[str, str] = {}
    while time.monotonic() < deadline:
        _send_digits(embedded_server, count=10)  # traffic while the 1 m rates fill
        results = {name: _prom_query(prometheus, q) for name, q in queries.items()}
        missing = {name: queries[name] for name, r in results.items() if not r}
        if not missing:
            break
        time.sleep(1)
    assert not missing, f"no series after 90 s: {missing}"
    for name, result in results.items():
        for sample in result:
            value = float(sample["value"][1])
            assert math.isfinite(value) and value >= 0, (name, sample)
    # The per-pod series keep the labels prometheus-adapter attaches metrics to pods with.
    (per_pod,) = _prom_query(prometheus, m.QUEUE_SERIES)
    assert per_pod["metric"] == {"__name__": m.QUEUE_SERIES, "namespace": NAMESPACE, "pod": "triton-0"}
