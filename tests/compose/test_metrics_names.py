"""Every metric the alert rules and the Grafana dashboard use is one the real Triton exports.

The names are read from compose/prometheus/alerts.yml and compose/grafana/dashboards/*.json and
checked against a scrape of the real embedded server (the session's `embedded_server`, after a few
inferences to the `mnist` ensemble). Exceptions, each listed below: metrics Triton exports only where
it sees a GPU (GPU_ONLY), and series Prometheus makes itself (FROM_PROMETHEUS).

Both stacks start Triton with `--metrics-config summary_latencies=true` (the p50/p99 panels and the
p99 alert read those summaries). If the session's server was started without it, a second server is
started here on the project repository with that flag, so the check still runs against a server
configured like the stacks.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from build_tools.server import ServerOptions, TritonServer
from build_tools.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
ALERTS = COMPOSE / "prometheus" / "alerts.yml"
RECORDING = COMPOSE / "prometheus" / "recording.yml"
DASHBOARDS = sorted((COMPOSE / "grafana" / "dashboards").glob("*.json"))
SUMMARY_FLAG = "--metrics-config=summary_latencies=true"
ENSEMBLE = "mnist"

# Exported by Triton only when it sees a GPU (--allow-gpu-metrics on a GPU host: the GPU stack).
GPU_ONLY = frozenset(
    {
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
    }
)
# Series Prometheus itself writes (scrape health, alert state), never in Triton's /metrics.
FROM_PROMETHEUS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"})

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (or a Grafana `label_values(expr, label)` query)."""
    m = _LABEL_VALUES.match(expr)
    if m:
        expr = m.group(1)
    text = _GRAFANA_VAR.sub(" ", _STRING.sub('""', expr))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name not in _KEYWORDS}


def alert_expressions(path: Path = ALERTS) -> dict[str, str]:
    rules = yaml.safe_load(path.read_text())
    return {r.get("alert") or r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def off_scheme(names: Iterable[str]) -> list[str]:
    """Names outside the one naming scheme (docs/monitoring.md, "Metric names"): Triton's `nv_`, the
    project's `tdk_<subsystem>_`, Prometheus's own series, recording rules (`level:metric:ops`)."""
    from control.monitor.contract import METRIC_PREFIXES

    allowed = ("nv_", *METRIC_PREFIXES.values())
    return sorted(n for n in names if not n.startswith(allowed) and n not in FROM_PROMETHEUS and ":" not in n)


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def dashboard_expressions(path: Path) -> list[str]:
    """Panel target expressions and template-variable queries of one dashboard."""
    dash = json.loads(path.read_text())
    exprs = [v for k, v in _walk(dash.get("panels", [])) if k == "expr" and isinstance(v, str)]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            exprs.append(query)
    return exprs


def scraped_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def _send_digits(server: TritonServer, count: int = 5) -> None:
    """Real requests to the ensemble (and one it rejects), so every per-model series exists."""
    import tritonclient.http as httpclient
    from PIL import Image

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        buf = io.BytesIO()
        digit = np.zeros((28, 28), dtype=np.uint8)
        digit[6:22, 12:16] = 255  # a "1"
        Image.fromarray(digit).save(buf, format="PNG")
        for _ in range(count):
            inp = httpclient.InferInput("image_bytes", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[buf.getvalue()]], dtype=np.object_))
            result = client.infer(ENSEMBLE, [inp])
            assert result.as_numpy("probabilities").shape == (1, 10)
        bad = httpclient.InferInput("image_bytes", [1, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
        with pytest.raises(Exception):  # noqa: B017  (any error: only the failure counter matters)
            client.infer(ENSEMBLE, [bad])
    finally:
        client.close()  # an open keep-alive connection delays the server's shutdown
    # The models' own metrics (tdk_serving_*, docs/monitoring.md) reach the endpoint every monitoring.flush_ms.
    flush_s = load_spec(ROOT / "deploy.yaml").monitoring.flush_ms / 1000.0
    time.sleep(2 * flush_s + 0.5)


def _scrape(server: TritonServer) -> str:
    """Triton's /metrics plus the stub watchdog's (the CPU stack's Prometheus scrapes both)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    if server.health_url is not None:
        with urllib.request.urlopen(server.health_url.replace("/health", "/metrics"), timeout=10) as r:
            text += r.read().decode()
    return text


def _served_repositories(server: TritonServer) -> list[Path]:
    repos = [Path(r) for r in server.options.model_repositories]
    with_ensemble = [r for r in repos if (r / ENSEMBLE / "config.pbtxt").is_file()]
    return with_ensemble or repos


@pytest.fixture(scope="module")
def stack_scrape(embedded_server: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Metric names scraped from a real server started the way the compose stacks start it, plus the
    drift monitor's (the stacks' Prometheus scrapes it too; tests/support/monitoring.py)."""
    from tests.support.monitoring import monitor_scrape

    monitor = scraped_names(monitor_scrape(f"sqlite:///{tmp_path_factory.mktemp('monitor') / 'monitor.db'}"))
    _send_digits(embedded_server)
    names = scraped_names(_scrape(embedded_server)) | monitor
    if SUMMARY_FLAG in embedded_server.options.extra_args or "nv_inference_request_summary_us" in names:
        return names
    workdir = tmp_path_factory.mktemp("summary-server")
    options = ServerOptions(
        model_repositories=_served_repositories(embedded_server),
        extra_args=[SUMMARY_FLAG],
        log_file=workdir / "tritonserver.log",
        workdir=workdir / "work",
    )
    with TritonServer(options) as server:
        _send_digits(server)
        return scraped_names(_scrape(server)) | monitor


def _unknown(names: Iterable[str], scraped: set[str]) -> list[str]:
    return sorted(set(names) - scraped - GPU_ONLY - FROM_PROMETHEUS)


# -- the extractor (no server) -----------------------------------------------------------------------
def test_metric_names_finds_metrics_only_when_expression_has_labels_ranges_and_functions() -> None:
    expr = (
        'sum by (model, version) (rate(nv_inference_queue_duration_us{job="triton", model=~"$model"}'
        "[$__rate_interval])) / sum without (reason) (rate(nv_inference_request_success[5m] offset 1h)) "
        '> 2 * max(nv_inference_request_summary_us{quantile="0.99"}) / 1e3 or absent(up{job="triton"}) '
        "or on (gpu_uuid) group_left (instance) nv_gpu_utilization"
    )
    assert metric_names(expr) == {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "nv_inference_request_summary_us",
        "up",
        "nv_gpu_utilization",
    }
    assert metric_names('label_values(nv_inference_count{job="triton", model=~"$model"}, version)') == {
        "nv_inference_count"
    }


def test_configs_reference_triton_metrics_when_alerts_and_dashboards_parsed() -> None:
    # Guards the checks below against passing on nothing.
    alert_names = set().union(*(metric_names(e) for e in alert_expressions().values()))
    assert {
        "nv_inference_request_failure",
        "nv_inference_request_summary_us",
        "nv_gpu_memory_used_bytes",
    } <= alert_names
    assert DASHBOARDS, "no dashboard JSON in compose/grafana/dashboards"
    for path in DASHBOARDS:
        dash_names = set().union(*(metric_names(e) for e in dashboard_expressions(path)))
        assert {
            "nv_inference_count",
            "nv_inference_request_summary_us",
            "nv_inference_request_failure",
            "nv_gpu_utilization",
            "nv_gpu_memory_used_bytes",
        } <= dash_names, path.name


def test_compose_files_enable_latency_summaries_when_triton_started() -> None:
    assert SUMMARY_FLAG in (COMPOSE / "docker-compose.yml").read_text()
    assert SUMMARY_FLAG in (COMPOSE / "docker-compose.cpu.yml").read_text()


# -- against the real server ------------------------------------------------------------------------
@pytest.mark.server
def test_alert_rules_use_only_exported_metrics_when_checked_against_real_scrape(stack_scrape: set[str]) -> None:
    problems = {
        alert: unknown
        for alert, expr in alert_expressions().items()
        if (unknown := _unknown(metric_names(expr), stack_scrape))
    }
    assert not problems, f"metrics not exported by the embedded Triton (and not GPU-only): {problems}"


@pytest.mark.server
@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_only_exported_metrics_when_checked_against_real_scrape(
    dashboard: Path, stack_scrape: set[str]
) -> None:
    problems = {
        expr: unknown
        for expr in dashboard_expressions(dashboard)
        if (unknown := _unknown(metric_names(expr), stack_scrape))
    }
    assert not problems, f"metrics not exported by the embedded Triton (and not GPU-only): {problems}"


@pytest.mark.server
def test_gpu_only_metrics_absent_when_server_has_no_gpu(stack_scrape: set[str]) -> None:
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this host has a GPU: Triton may export the GPU metrics")
    # The exemption list must not hide a metric the CPU server does export under another spelling.
    assert not GPU_ONLY & stack_scrape
    assert {"nv_cpu_utilization", "nv_inference_count"} <= stack_scrape


def test_dashboard_has_a_panel_for_every_monitor_metric_when_the_monitor_is_scraped(tmp_path: Path) -> None:
    from tests.support.monitoring import monitor_scrape

    exported = {n for n in scraped_names(monitor_scrape(f"sqlite:///{tmp_path / 'monitor.db'}"))
                if n.startswith("tdk_monitor_")}
    assert len(exported) >= 15  # guards against checking nothing
    on_dashboards = set().union(*(metric_names(e) for path in DASHBOARDS for e in dashboard_expressions(path)))
    assert not exported - on_dashboards, f"monitor metrics without a Grafana panel: {sorted(exported - on_dashboards)}"


def test_rules_and_dashboards_use_one_metric_namespace_when_parsed() -> None:
    used = {
        "alerts": set().union(*(metric_names(e) for e in alert_expressions().values())),
        "recording": set().union(*(metric_names(e) for e in alert_expressions(RECORDING).values())),
        "dashboards": set().union(*(metric_names(e) for path in DASHBOARDS for e in dashboard_expressions(path))),
    }
    # Guards against checking nothing: each of the project's exporters is read somewhere.
    everything = set().union(*used.values())
    for prefix in ("tdk_serving_", "tdk_monitor_", "tdk_healer_"):
        assert any(n.startswith(prefix) for n in everything), prefix
    problems = {where: bad for where, names in used.items() if (bad := off_scheme(names))}
    assert not problems, f"metric names outside nv_ and tdk_<subsystem>_ (docs/monitoring.md): {problems}"


@pytest.mark.server
def test_exported_metrics_use_one_metric_namespace_when_server_and_monitor_scraped(stack_scrape: set[str]) -> None:
    assert any(n.startswith("tdk_serving_") for n in stack_scrape)
    assert any(n.startswith("tdk_monitor_") for n in stack_scrape)
    assert not off_scheme(stack_scrape), f"exported names outside nv_ and tdk_<subsystem>_: {off_scheme(stack_scrape)}"


def test_healer_metrics_use_its_subsystem_prefix_when_rendered() -> None:
    from build_tools.healer import Healer, ModelHealth

    healer = Healer(lambda: None, lambda m: True, lambda: None)
    healer.models["m"] = ModelHealth({"m_0_0"})
    names = scraped_names(healer.metrics_text())
    assert len(names) == 5 and all(n.startswith("tdk_healer_") for n in names), names
