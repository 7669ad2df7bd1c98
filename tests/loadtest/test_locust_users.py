"""Locust users and thresholds, run as Locust runs them: `locust -f ... --headless` subprocesses."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from build_tools.server import TritonServer

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
ERRORS_LOCUSTFILE = Path(__file__).with_name("locustfile_errors.py")


# Each user builds its sample set in on_start (about a second, several on a busy machine): runs must be
# long enough that every user still gets requests in after that.
def _locust(server: TritonServer, out: Path, *args: str, locustfile: Path = LOCUSTFILE,
            seconds: int = 8, users: int = 4) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", str(users),
           "-r", str(users), "-t", f"{seconds}s", "--host", f"http://{server.http_url}",
           "--grpc-host", server.grpc_url, "--csv", str(out / "run"), "--only-summary",
           "--stop-timeout", "5", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)


def _stats(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "run_stats.csv", newline="") as handle:
        return {f"{row['Type']} {row['Name']}".strip(): row for row in csv.DictReader(handle)}


@pytest.mark.server
def test_locust_run_passes_thresholds_with_zero_failures_when_server_is_healthy(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    proc = _locust(embedded_server, tmp_path, "--html", str(tmp_path / "run.html"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = _stats(tmp_path)
    total = stats["Aggregated"]
    assert int(total["Request Count"]) > 20
    assert int(total["Failure Count"]) == 0
    # every user reported through the request event, each under its own protocol and model
    for name in ("HTTP mnist_classifier b1", "GRPC mnist_classifier b1", "HTTP mnist b1", "GRPC mnist b1"):
        assert int(stats[name]["Request Count"]) > 0, name
    assert "passed its thresholds" in proc.stderr
    assert (tmp_path / "run.html").stat().st_size > 1000


@pytest.mark.server
def test_locust_run_records_failures_and_exits_nonzero_when_requests_use_a_wrong_input_name(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    proc = _locust(embedded_server, tmp_path, "WrongInputNameUser", locustfile=ERRORS_LOCUSTFILE, seconds=6,
                   users=2)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    total = _stats(tmp_path)["Aggregated"]
    assert int(total["Failure Count"]) == int(total["Request Count"]) > 0
    failures = (tmp_path / "run_failures.csv").read_text()
    assert "not_an_input" in failures
    assert "FAILED its thresholds" in proc.stderr


@pytest.mark.server
def test_locust_run_exits_nonzero_when_p99_is_above_its_threshold(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    proc = _locust(embedded_server, tmp_path, "HttpClassifierUser", "--max-p99-ms", "0.001", "--batch-size", "8",
                   seconds=6, users=2)
    assert proc.returncode == 1, proc.stderr[-3000:]
    stats = _stats(tmp_path)
    assert int(stats["Aggregated"]["Failure Count"]) == 0
    assert int(stats["HTTP mnist_classifier b8"]["Request Count"]) > 0
    assert "p99 latency" in proc.stderr


def test_threshold_problems_names_each_broken_limit_when_stats_exceed_them() -> None:
    from loadtest.options import threshold_problems

    stats = SimpleNamespace(num_requests=100, num_failures=5,
                            get_response_time_percentile=lambda p: {0.95: 40.0, 0.99: 90.0}[p])
    options = SimpleNamespace(max_fail_ratio=0.01, max_p95_ms=50.0, max_p99_ms=80.0)
    problems = threshold_problems(stats, options)
    assert len(problems) == 2
    assert "failure ratio 0.0500" in problems[0]
    assert "p99 latency 90 ms > 80 ms" in problems[1]
    options.max_p99_ms = 0  # off
    options.max_fail_ratio = 0.1
    assert threshold_problems(stats, options) == []
    empty = SimpleNamespace(num_requests=0, num_failures=0, get_response_time_percentile=lambda p: 0.0)
    assert threshold_problems(empty, options) == ["no request was made"]


def test_addresses_follow_host_options_when_users_start() -> None:
    from loadtest.options import grpc_address, http_address

    assert http_address("http://127.0.0.1:8100") == "127.0.0.1:8100"
    assert http_address("localhost") == "localhost:8000"
    assert grpc_address("http://10.0.0.5:8000", None) == "10.0.0.5:8001"
    assert grpc_address("grpc://10.0.0.5:9001", None) == "10.0.0.5:9001"
    assert grpc_address("http://10.0.0.5:8000", "127.0.0.1:7001") == "127.0.0.1:7001"
    with pytest.raises(ValueError):
        http_address(None)


def _json_stats(prefix: Path) -> dict[str, tuple[int, int]]:
    """`METHOD name` -> (requests, failures), from --json-file (written at exit, unlike the CSV, which a
    starved writer greenlet can leave behind the final numbers on a busy machine)."""
    entries = json.loads(prefix.with_suffix(".json").read_text())
    stats = {f"{e['method']} {e['name']}": (int(e["num_requests"]), int(e["num_failures"])) for e in entries}
    stats["total"] = (sum(r for r, _ in stats.values()), sum(f for _, f in stats.values()))
    return stats


def _locust_cmd(*args: str, seconds: int = 8, users: int = 2) -> list[str]:
    # Long enough for users to start on a busy machine (each loads and encodes the 500-digit sample).
    return [sys.executable, "-m", "locust", "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
            "--only-summary", "--stop-timeout", "5", *args]


@pytest.mark.server
def test_locust_grpc_users_reach_the_server_when_grpc_host_comes_from_the_environment(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    """Issue 16 (5): compose set TRITON_GRPC_URL, which nothing read; gRPC users went to port 8001."""
    import os

    # Latency thresholds off (also through the environment): this checks where requests go, not speed.
    env = {**os.environ, "LOCUST_GRPC_HOST": embedded_server.grpc_url, "LOCUST_BATCH_SIZE": "2",
           "LOCUST_MAX_P95_MS": "0", "LOCUST_MAX_P99_MS": "0"}
    cmd = _locust_cmd("-f", str(LOCUSTFILE), "--host", f"http://{embedded_server.http_url}",
                      "--json-file", str(tmp_path / "run"), "GrpcClassifierUser")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = _json_stats(tmp_path / "run")
    assert stats["GRPC mnist_classifier b2"][0] > 0, stats
    assert stats["total"][1] == 0, stats


@pytest.mark.server
def test_locust_uses_project_options_when_they_come_from_locust_conf(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    (tmp_path / "locust.conf").write_text(
        f"locustfile = {LOCUSTFILE}\nhost = http://{embedded_server.http_url}\n"
        f"grpc-host = {embedded_server.grpc_url}\nbatch-size = 3\nmax-p95-ms = 0\nmax-p99-ms = 0\n"
    )
    proc = subprocess.run(_locust_cmd("--json-file", str(tmp_path / "run"), "GrpcClassifierUser", "HttpClassifierUser"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = _json_stats(tmp_path / "run")
    for name in ("GRPC mnist_classifier b3", "HTTP mnist_classifier b3"):
        assert stats[name][0] > 0, stats
    assert stats["total"][1] == 0, stats


def test_locust_users_back_off_when_the_server_cannot_be_reached(tmp_path: Path) -> None:
    """Issue 16 (5): failed requests looped with no back-off, about 4,800 a second."""
    import socket

    # A port bound here and never listened on refuses every connection, and no other process can take it
    # while the test runs (a port that is merely free may be taken by something that accepts and never
    # answers, and the clients then wait out their timeouts instead of failing fast).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        closed = holder.getsockname()[1]
        cmd = _locust_cmd("-f", str(LOCUSTFILE), "--host", f"http://127.0.0.1:{closed}", "--grpc-host",
                          f"127.0.0.1:{closed}", "--json-file", str(tmp_path / "run"), "--request-timeout", "5",
                          "HttpClassifierUser", "GrpcClassifierUser", seconds=12, users=4)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]  # every request failed: the thresholds fail the run
    requests, failures = _json_stats(tmp_path / "run")["total"]
    # 4 users x 12 s with waits of 50 ms doubling to 2 s: about 8 each (no back-off: thousands).
    assert 1 <= failures == requests <= 60, failures


def test_backoff_seconds_doubles_to_its_cap_when_failures_repeat() -> None:
    from loadtest.options import BACKOFF_FIRST_S, BACKOFF_MAX_S, backoff_seconds

    assert backoff_seconds(0) == 0.0
    for n in range(1, 12):
        ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (n - 1))
        assert ceiling / 2 <= backoff_seconds(n) <= ceiling


def test_compose_locust_services_set_only_variables_locust_reads_when_parsed() -> None:
    """Issue 16 (5): every LOCUST_* variable the compose files give Locust must be one of its options."""
    import yaml

    code = (
        "import json, locust.argument_parser as ap\n"
        "from loadtest.options import add_options\n"
        "p = ap.get_parser()\n"
        "add_options(p)\n"
        "print(json.dumps(sorted(a.env_var for a in p._actions if getattr(a, 'env_var', None))))\n"
    )
    # Locust's parser knows each option's env_var only after its module has been imported (gevent).
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    known = set(__import__("json").loads(out.stdout))
    assert {"LOCUST_GRPC_HOST", "LOCUST_BATCH_SIZE", "LOCUST_MAX_P99_MS"} <= known
    for name in ("docker-compose.yml", "docker-compose.cpu.yml"):
        services = yaml.safe_load((ROOT / "compose" / name).read_text())["services"]
        for service in ("locust-master", "locust-worker"):
            env = services[service].get("environment") or {}
            assert "LOCUST_GRPC_HOST" in env, f"{name} {service}"
            unknown = sorted(set(env) - known)
            assert not unknown, f"{name} {service}: {unknown} are not read by Locust"


@pytest.mark.server
def test_locust_run_checks_every_label_with_zero_failures_when_users_expect_the_models_answers(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    proc = _locust(embedded_server, tmp_path, "OfflineLabelsHttpUser", "OfflineLabelsGrpcEnsembleUser",
                   "--check-labels", "--batch-size", "4", "--max-p95-ms", "0", "--max-p99-ms", "0",
                   locustfile=ERRORS_LOCUSTFILE, seconds=6, users=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = _stats(tmp_path)
    assert int(stats["Aggregated"]["Failure Count"]) == 0
    for name in ("HTTP mnist_classifier b4", "GRPC mnist b4"):
        assert int(stats[name]["Request Count"]) > 0, name


@pytest.mark.server
def test_locust_run_fails_every_request_when_users_expect_wrong_labels(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    proc = _locust(embedded_server, tmp_path, "WrongLabelsUser", "--check-labels", "--batch-size", "4",
                   "--max-p95-ms", "0", "--max-p99-ms", "0", locustfile=ERRORS_LOCUSTFILE, seconds=6, users=2)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    total = _stats(tmp_path)["Aggregated"]
    assert int(total["Failure Count"]) == int(total["Request Count"]) > 0
    assert "4 of 4 predicted labels differ from the expected ones" in (tmp_path / "run_failures.csv").read_text()
    assert "FAILED its thresholds" in proc.stderr
