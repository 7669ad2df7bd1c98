"""Kubernetes manifests from deploy.yaml: validated offline, committed without drift, and carrying what
the issue asks for (probes, non-root, shm from the build's figure, one source of rules, autoscalers on
the recorded series). The metric names against a real scrape: tests/integration/test_k8s_metrics.py."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from build_tools.k8s import manifests as m
from build_tools.k8s.validate import KUBERNETES_VERSION, load_manifests, validate_document
from build_tools.k8s.writer import PROMETHEUS_DIR, drift, generate
from build_tools.resources import python_backend_shm_estimate
from build_tools.spec import DeploySpec, load_spec
from tests.support.tools import tool_missing

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
FLAVORS = ["ngc", "embedded"]


@pytest.fixture(scope="module")
def spec() -> DeploySpec:
    return load_spec(ROOT / "deploy.yaml")


@pytest.fixture(scope="module")
def generated(spec: DeploySpec) -> dict[Path, str]:
    return generate(spec, "deploy.yaml", FLAVORS, m.K8sOptions())


def _docs(generated: dict[Path, str], flavor: str) -> list[dict[str, Any]]:
    return [d for path, text in generated.items() if path.parts[0] == flavor for d in yaml.safe_load_all(text) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


# -- validation ---------------------------------------------------------------------------------------
def test_committed_manifests_validate_when_checked_against_schemas() -> None:
    docs = load_manifests([K8S / f for f in FLAVORS])
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ScaledObject", "ServiceMonitor", "PrometheusRule", "StatefulSet", "Job", "ConfigMap"} <= kinds
    problems = [str(f) for where, d in docs for f in validate_document(d, where)]
    assert problems == []


def test_committed_manifests_match_spec_when_regenerated(generated: dict[Path, str]) -> None:
    assert drift(generated, K8S, FLAVORS) == [], "run `triton-repo k8s` and commit k8s/"


def test_validate_document_reports_field_when_deployment_has_unknown_field(generated: dict[Path, str]) -> None:
    deployment = copy.deepcopy(_one(_docs(generated, "embedded"), "Deployment", "triton"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    (finding,) = validate_document(deployment, "test")
    assert "readinesProbe" in finding.message


def test_validate_document_reports_type_when_value_has_wrong_type(generated: dict[Path, str]) -> None:
    pdb = copy.deepcopy(_one(_docs(generated, "ngc"), "PodDisruptionBudget", "triton"))
    pdb["spec"]["selector"] = "triton"
    findings = validate_document(pdb, "test")
    assert findings and "spec.selector" in findings[0].message


@pytest.mark.parametrize(("api_version", "kind"), [("autoscaling/v2beta2", "HorizontalPodAutoscaler"),
                                                   ("example.com/v1", "Widget")])
def test_validate_document_fails_when_kind_unknown_for_version(api_version: str, kind: str) -> None:
    # Triton's own Kubernetes example still uses autoscaling/v2beta2, removed in Kubernetes 1.26.
    (finding,) = validate_document({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}, "test")
    assert "unknown kind" in finding.message
    assert KUBERNETES_VERSION.startswith("1.30")


def test_crd_validation_reports_field_when_scaledobject_trigger_wrong(generated: dict[Path, str]) -> None:
    so = copy.deepcopy(_one(_docs(generated, "embedded"), "ScaledObject", "triton"))
    assert validate_document(so, "test") == []
    so["spec"]["triggers"][0]["metricTyp"] = "Value"
    so["spec"]["minReplicaCount"] = "two"
    messages = " ".join(f.message for f in validate_document(so, "test"))
    assert "metricTyp" in messages and "minReplicaCount" in messages


def test_crd_validation_reports_field_when_servicemonitor_endpoint_wrong(generated: dict[Path, str]) -> None:
    sm = copy.deepcopy(_one(_docs(generated, "embedded"), "ServiceMonitor", "triton"))
    sm["spec"]["endpoints"][0]["intervall"] = "5s"
    (finding,) = validate_document(sm, "test")
    assert "intervall" in finding.message


# -- content ------------------------------------------------------------------------------------------
def test_prometheus_rule_carries_compose_rules_when_generated(generated: dict[Path, str]) -> None:
    compose = [*yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"],
               *yaml.safe_load((PROMETHEUS_DIR / "recording.yml").read_text())["groups"]]
    for flavor in FLAVORS:
        rule = _one(_docs(generated, flavor), "PrometheusRule", "triton")
        assert rule["spec"]["groups"] == compose


@pytest.mark.parametrize("flavor", FLAVORS)
def test_triton_pod_hardened_and_sized_when_generated(generated: dict[Path, str], spec: DeploySpec,
                                                      flavor: str) -> None:
    deployment = _one(_docs(generated, flavor), "Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    triton = _container(pod, "triton")
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    for c in [*pod["containers"], *pod["initContainers"]]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Embedded: the in-process watchdog's /health (503 on a dead stub too); ngc: the watchdog sidecar's.
    assert triton["readinessProbe"]["httpGet"]["path"] == ("/health" if flavor == "embedded" else "/v2/health/ready")
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    args = " ".join(triton["args"])
    assert "--model-control-mode=explicit" in args or "--model-control explicit" in args
    # /dev/shm: twice the build's Python-backend figure, counted inside the memory limit.
    estimate = python_backend_shm_estimate(spec, flavor).total_bytes  # type: ignore[arg-type]
    (dshm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"]["medium"] == "Memory"
    shm_mib = int(dshm["emptyDir"]["sizeLimit"].removesuffix("Mi"))
    assert shm_mib == max(1024, -(-2 * estimate // (1 << 20)))  # never below compose's shm_size: 1gb
    assert int(triton["resources"]["limits"]["memory"].removesuffix("Mi")) > shm_mib
    assert pod["terminationGracePeriodSeconds"] > spec.server.exit_timeout_s
    gpus = triton["resources"]["limits"].get("nvidia.com/gpu")
    if flavor == "ngc":
        assert gpus == 1 and triton["image"] == f"tritonserver:{spec.triton.release}-py3"
        assert "--http-restricted-api=" in args and f"{spec.server.admin_api.header}=$(TRITON_ADMIN_KEY)" in args
    else:
        assert gpus is None and triton["command"] == ["triton-repo", "serve"]


def test_repository_volume_seeded_once_when_pods_start(generated: dict[Path, str]) -> None:
    for flavor in FLAVORS:
        docs = _docs(generated, flavor)
        pvc = _one(docs, "PersistentVolumeClaim", "triton-model-repository")
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
        (seed,) = pod["initContainers"]
        script = seed["command"][-1]
        assert "flock" in script and f"if [ -d {m.REPOSITORY} ]" in script
        # The lifecycle pod writes the same volume the servers read.
        tools = _one(docs, "Deployment", "triton-lifecycle")["spec"]["template"]["spec"]
        assert {"name": "store", "persistentVolumeClaim": {"claimName": "triton-model-repository"}} in tools["volumes"]


def test_services_stay_inside_cluster_when_generated(generated: dict[Path, str]) -> None:
    for flavor in FLAVORS:
        docs = _docs(generated, flavor)
        for svc in (d for d in docs if d["kind"] == "Service"):
            assert svc["spec"]["type"] == "ClusterIP", svc["metadata"]["name"]
        policy = _one(docs, "NetworkPolicy", "triton")
        inference, own, scrape = policy["spec"]["ingress"]
        # Clients reach the proxy only; Triton's own ports only the lifecycle pod (repository API).
        assert {p["port"] for p in inference["ports"]} == {m.PROXY_HTTP, m.PROXY_GRPC}
        assert {p["port"] for p in own["ports"]} == {m.HTTP, m.GRPC}
        assert own["from"] == [{"podSelector": {"matchLabels": m._selector("lifecycle")}}]
        assert {p["port"] for p in scrape["ports"]} == {m.METRICS, m.HEALTH}
        assert _one(docs, "NetworkPolicy", "triton-registry")
        assert _one(docs, "PodDisruptionBudget", "triton")["spec"]["maxUnavailable"] == 1


def test_autoscalers_read_recorded_series_when_generated(generated: dict[Path, str]) -> None:
    recorded = {r["record"] for g in yaml.safe_load((PROMETHEUS_DIR / "recording.yml").read_text())["groups"]
                for r in g["rules"]}
    assert {m.QUEUE_SERIES, m.PENDING_SERIES} <= recorded
    docs = _docs(generated, "embedded")
    hpa = _one(docs, "HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    adapter = yaml.safe_load(_one(docs, "ConfigMap", "prometheus-adapter-triton")["data"]["config.yaml"])
    exposed = {r["name"]["as"] for r in adapter["rules"]}
    assert {metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]} == exposed
    for rule in adapter["rules"]:
        # The per-pod series must keep namespace and pod, or the adapter returns no metrics.
        assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
    so = _one(docs, "ScaledObject", "triton")
    queries = " ".join(t["metadata"]["query"] for t in so["spec"]["triggers"])
    assert m.QUEUE_SERIES in queries and m.PENDING_SERIES in queries
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]


def test_servicemonitor_keeps_compose_job_names_when_generated(generated: dict[Path, str]) -> None:
    docs = _docs(generated, "embedded")
    sm = _one(docs, "ServiceMonitor", "triton")
    jobs = {d["metadata"]["labels"].get(sm["spec"]["jobLabel"]) for d in docs if d["kind"] == "Service"}
    # alerts.yml selects up{job="triton"}; compose scrapes the watchdog as job triton-healer.
    assert {"triton", "triton-healer"} <= jobs


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == name]
    return container


def _args(container: dict[str, Any]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in container["args"] if a.startswith("--") and "=" in a)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_triton_pod_runs_proxy_sidecar_with_spec_limit_when_generated(generated: dict[Path, str], spec: DeploySpec,
                                                                      flavor: str) -> None:
    deployment = _one(_docs(generated, flavor), "Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    proxy = _container(pod, "proxy")
    assert proxy["command"] == ["triton-repo", "proxy"] and proxy["image"] == m.K8sOptions().image
    args = _args(proxy)
    assert args["upstream-http"] == f"127.0.0.1:{m.HTTP}" and args["upstream-grpc"] == f"127.0.0.1:{m.GRPC}"
    assert args["listen-http"].endswith(f":{m.PROXY_HTTP}") and args["listen-grpc"].endswith(f":{m.PROXY_GRPC}")
    # nginx's temp folders on a writable emptyDir under the read-only root filesystem.
    assert {"name": "proxy-state", "mountPath": args["state-dir"]} in proxy["volumeMounts"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == "proxy-state")
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    # The limit the proxy enforces comes from the same spec (server.proxy) the manifests were made from.
    annotations = deployment["metadata"]["annotations"]
    assert annotations["triton-deploy-kit/proxy-max-request-mib"] == str(spec.server.proxy.max_request_mib)
    assert args["spec"] == m.K8sOptions().spec_file


@pytest.mark.parametrize("flavor", FLAVORS)
def test_inference_service_targets_proxy_when_generated(generated: dict[Path, str], flavor: str) -> None:
    docs = _docs(generated, flavor)
    svc = _one(docs, "Service", "triton")
    assert {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]} == {m.HTTP: "proxy-http", m.GRPC: "proxy-grpc"}
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    proxy_ports = {p["name"]: p["containerPort"] for p in _container(pod, "proxy")["ports"]}
    assert proxy_ports == {"proxy-http": m.PROXY_HTTP, "proxy-grpc": m.PROXY_GRPC}
    # The metrics port stays Triton's own, for Prometheus.
    metrics = _one(docs, "Service", "triton-metrics")
    assert [p["targetPort"] for p in metrics["spec"]["ports"]] == ["metrics"]
    assert "metrics" in {p["name"] for p in _container(pod, "triton")["ports"]}


def test_ngc_pod_runs_watchdog_sidecar_when_generated(generated: dict[Path, str]) -> None:
    docs = _docs(generated, "ngc")
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    watchdog = _container(pod, "watchdog")
    assert watchdog["command"] == ["triton-repo", "watchdog"]
    args = _args(watchdog)
    assert args["url"] == f"127.0.0.1:{m.HTTP}" and args["health-port"] == str(m.HEALTH)
    assert args["model-repository"] == m.REPOSITORY
    assert watchdog["readinessProbe"]["httpGet"] == {"path": "/health", "port": "health"}
    assert {"name": "TRITON_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": "triton-admin", "key": "admin-key"}}} \
        in watchdog["env"]
    # Same uid as tritonserver: it can signal the stubs without root.
    assert "runAsUser" not in watchdog["securityContext"] and pod["securityContext"]["runAsUser"] == m.UID
    healer = _one(docs, "Service", "triton-healer")
    assert healer["metadata"]["labels"][m.JOB_LABEL] == "triton-healer"
    assert healer["spec"]["ports"][0]["port"] == m.HEALTH


def test_embedded_pod_has_no_watchdog_sidecar_when_serve_runs_healer(generated: dict[Path, str]) -> None:
    docs = _docs(generated, "embedded")
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert {c["name"] for c in pod["containers"]} == {"triton", "proxy"}
    assert "shareProcessNamespace" not in pod
    triton = _container(pod, "triton")
    assert triton["args"][triton["args"].index("--health-port") + 1] == str(m.HEALTH)
    assert _one(docs, "Service", "triton-healer")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_servicemonitor_scrapes_watchdog_and_monitor_when_generated(generated: dict[Path, str], flavor: str) -> None:
    docs = _docs(generated, flavor)
    sm = _one(docs, "ServiceMonitor", "triton")
    ports = {e["port"] for e in sm["spec"]["endpoints"]}
    assert ports == {"metrics", "health", "monitor"}
    scraped = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"
               and d["metadata"]["labels"].get(m.SCRAPE_LABEL) == "true"}
    assert set(scraped) == {"triton-metrics", "triton-healer", "triton-monitor"}
    assert scraped["triton-monitor"]["metadata"]["labels"][sm["spec"]["jobLabel"]] == "drift-monitor"
    for svc in scraped.values():
        assert {p["name"] for p in svc["spec"]["ports"]} <= ports


@pytest.mark.parametrize("flavor", FLAVORS)
def test_monitor_service_matches_cli_when_generated(generated: dict[Path, str], flavor: str) -> None:
    from control.monitor.serving import DATABASE_ENV

    docs = _docs(generated, flavor)
    deployment = _one(docs, "Deployment", "triton-monitor")
    pod = deployment["spec"]["template"]["spec"]
    monitor = _container(pod, "monitor")
    assert monitor["command"] == ["triton-monitor"] and monitor["args"][0] == "serve"
    args = _args(monitor)
    assert args["port"] == str(m.MONITOR_PORT) and args["repository"] == m.REPOSITORY
    env = {e["name"]: e.get("value") for e in monitor["env"]}
    url = f"postgresql://app:$(REGISTRY_PASSWORD)@triton-registry:{m.REGISTRY_PORT}/postgres"
    assert env[DATABASE_ENV] == url and env["TRITON_LIFECYCLE_DB"] == url
    assert "REGISTRY_PASSWORD" in env  # from the Secret, before the variables that name it
    assert [e["name"] for e in monitor["env"]].index("REGISTRY_PASSWORD") == 0
    assert monitor["readinessProbe"]["httpGet"]["path"] == "/health"
    svc = _one(docs, "Service", "triton-monitor")
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["port"] == m.MONITOR_PORT


@pytest.mark.parametrize("flavor", FLAVORS)
def test_monitor_reachable_only_by_prometheus_and_lifecycle_when_generated(generated: dict[Path, str],
                                                                           flavor: str) -> None:
    docs = _docs(generated, flavor)
    (rule,) = _one(docs, "NetworkPolicy", "triton-monitor")["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": m._selector("lifecycle")}},
                            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": m.MONITOR_PORT}]
    # The registry admits the monitor and the Triton pods (their models write the prediction log).
    (registry,) = _one(docs, "NetworkPolicy", "triton-registry")["spec"]["ingress"]
    admitted = {f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in registry["from"]}
    assert admitted == {"lifecycle", "monitor", "triton"}


def test_ngc_triton_pods_keep_the_sqlite_log_when_the_image_has_no_postgresql_driver(
        generated: dict[Path, str], spec: DeploySpec) -> None:
    from control.monitor.serving import DATABASE_ENV

    assert spec.monitoring.enabled
    pod = _one(_docs(generated, "ngc"), "Deployment", "triton")["spec"]["template"]["spec"]
    names = {e["name"] for e in _container(pod, "triton")["env"]}
    assert DATABASE_ENV not in names and "REGISTRY_PASSWORD" not in names


def test_triton_pods_log_predictions_to_registry_when_monitoring_enabled(generated: dict[Path, str],
                                                                         spec: DeploySpec) -> None:
    from control.monitor.serving import DATABASE_ENV

    flavor = "embedded"
    assert spec.monitoring.enabled
    pod = _one(_docs(generated, flavor), "Deployment", "triton")["spec"]["template"]["spec"]
    env = _container(pod, "triton")["env"]
    names = [e["name"] for e in env]
    assert names.index("REGISTRY_PASSWORD") < names.index(DATABASE_ENV)
    (url,) = [e["value"] for e in env if e["name"] == DATABASE_ENV]
    assert url.startswith("postgresql://app:$(REGISTRY_PASSWORD)@triton-registry:")


def test_triton_pods_skip_prediction_log_when_monitoring_disabled(spec: DeploySpec) -> None:
    off = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"enabled": False})})
    pod = m.triton_deployment(off, "embedded", m.K8sOptions())["spec"]["template"]["spec"]
    assert "TDK_MONITORING_DATABASE_URL" not in {e["name"] for e in _container(pod, "triton")["env"]}
    assert "triton" not in m.registry_clients(off)


# -- the command --------------------------------------------------------------------------------------
def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "build_tools.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_k8s_check_fails_with_one_line_when_committed_file_edited(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    result = _run("k8s", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert _run("k8s", "--out", str(out), "--check").returncode == 0
    target = out / "embedded" / "triton.yaml"
    target.write_text(target.read_text().replace("maxUnavailable: 1", "maxUnavailable: 3"))
    result = _run("k8s", "--out", str(out), "--check")
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("triton-repo: error:")]
    assert "triton.yaml: differs" in result.stdout


def test_k8s_fails_with_one_line_when_replica_bounds_reversed(tmp_path: Path) -> None:
    result = _run("k8s", "--out", str(tmp_path), "--min-replicas", "5", "--max-replicas", "2")
    assert result.returncode == 1
    assert "--min-replicas 5 is above --max-replicas 2" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("job", ["locust-master", "locust-worker"])
def test_locust_jobs_configure_locust_when_env_parsed_by_locust(generated: dict[Path, str], job: str) -> None:
    """The Jobs' LOCUST_* variables, read by Locust's own option parser (a misspelt one is ignored by it)."""
    (container,) = _one(_docs(generated, "embedded"), "Job", job)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert (ROOT / env["LOCUST_LOCUSTFILE"]).is_file()
    code = ("import json; from locust.argument_parser import parse_options; o = parse_options([]); "
            "print(json.dumps({k: getattr(o, k) for k in ('master', 'worker', 'headless', 'expect_workers', "
            "'num_users', 'master_host', 'master_port', 'master_bind_port', 'host')}))")
    result = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout.strip().splitlines()[-1])
    if job == "locust-master":
        assert options["master"] and options["headless"] and options["master_bind_port"] == m.LOCUST_PORT
        assert options["expect_workers"] == m.K8sOptions().locust_workers and options["num_users"] == 64
        assert options["host"] == f"http://triton:{m.HTTP}"
    else:
        assert options["worker"] and options["master_host"] == "locust-master"
        assert options["master_port"] == m.LOCUST_PORT


def test_prometheus_rule_passes_promtool_when_groups_extracted(generated: dict[Path, str], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        tool_missing("promtool is not installed (Debian package `prometheus`)")
    rule = _one(_docs(generated, "ngc"), "PrometheusRule", "triton")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert and recording rule of the compose stacks' files, none skipped or merged away.
    declared = sum(len(g["rules"]) for name in ("alerts.yml", "recording.yml")
                   for g in yaml.safe_load((ROOT / "compose" / "prometheus" / name).read_text())["groups"])
    assert declared >= 13 and f"SUCCESS: {declared} rules found" in result.stdout
