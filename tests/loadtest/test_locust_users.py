"""Locust users and thresholds, run as Locust runs them: `locust -f ... --headless` subprocesses."""

from __future__ import annotations

import csv
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
