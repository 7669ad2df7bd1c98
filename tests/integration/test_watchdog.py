"""`triton-repo watchdog`: the stub watchdog beside a server it did not start (the GPU stack's sidecar).

The real command runs as its own process against a real server (explicit model control, its own
healer off, as the official image runs); a stub is hung with SIGSTOP under the watchdog's canaries,
then one is killed, and the watchdog's /metrics must count the heal and the model come back.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from build_tools.healer import list_stubs
from build_tools.server import ServerOptions, TritonServer, free_port
from clients.datasets import mnist_holdout
from clients.images import bytes_batch, encode_png
from triton_api import TritonClient

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
HEAL_BOUND_S = 40.0  # canary every 5 s (the spec's default) + reload on a busy 2-core machine
KEY = "watchdog-test-key"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def _metric(base: str, name: str, model: str) -> float:
    _, text = _get(f"{base}/metrics")
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def watched(project_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, str]]:
    root = tmp_path_factory.mktemp("watchdog")
    server = TritonServer(ServerOptions(
        [project_repository], log_file=root / "tritonserver.log", workdir=root / "server",
        model_control_explicit=True, heal=False, admin_key=KEY,
    ))
    with server:
        assert server.process is not None
        port = free_port()
        env = {**os.environ, "TRITON_ADMIN_KEY": KEY}
        log = open(root / "watchdog.log", "wb")  # noqa: SIM115 - the process writes it while it runs
        proc = subprocess.Popen(
            [sys.executable, "-m", "build_tools.cli", "watchdog", "--spec", str(ROOT / "deploy.yaml"),
             "--url", server.http_url, "--model-repository", str(project_repository), "--host", "127.0.0.1",
             "--health-port", str(port), "--server-pid", str(server.process.pid)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while _get(f"{base}/health")[0] != 200:
                assert proc.poll() is None, (root / "watchdog.log").read_text()
                assert time.monotonic() < deadline, "watchdog /health never 200"
                time.sleep(0.5)
            yield server, base
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()


def _digits_ok(server: TritonServer) -> None:
    with TritonClient(server.http_url) as client:
        out = client.infer("mnist", {"image_bytes": bytes_batch([encode_png(mnist_holdout().images[0])])},
                           ["probabilities"])
    assert out["probabilities"].shape == (1, 10)


def _wait_heal(server: TritonServer, base: str, model: str, before: float) -> float:
    started = time.monotonic()
    while time.monotonic() < started + HEAL_BOUND_S:
        if _metric(base, "tdk_healer_stub_heals_total", model) > before:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{model} not healed by the watchdog within {HEAL_BOUND_S} s; log:\n{server.log_tail()}")


def test_watchdog_heals_hung_stub_when_stub_stopped(watched: tuple[TritonServer, str]) -> None:
    """SIGSTOP: found from the stub's state in /proc (the sidecar shares the pid namespace), or by the
    canaries, whichever comes first (the chaos tests show each on its own)."""
    server, base = watched
    assert server.process is not None
    victim = next(s for s in list_stubs(server.process.pid) if s.model == "mnist_preprocess")
    before = _metric(base, "tdk_healer_stub_heals_total", "mnist_preprocess")
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        took = _wait_heal(server, base, "mnist_preprocess", before)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGCONT)
    print(f"\nwatchdog: hung preprocess stub healed {took:.1f} s after SIGSTOP")
    _digits_ok(server)
    status, body = _get(f"{base}/health")
    assert status == 200 and json.loads(body)["unhealthy_models"] == {}


def test_watchdog_heals_dead_stub_when_pid_namespace_shared(watched: tuple[TritonServer, str]) -> None:
    server, base = watched
    assert server.process is not None
    victim = next(s for s in list_stubs(server.process.pid) if s.model == "mnist_classifier")
    before = _metric(base, "tdk_healer_stub_heals_total", "mnist_classifier")
    os.kill(victim.pid, signal.SIGKILL)
    took = _wait_heal(server, base, "mnist_classifier", before)
    print(f"\nwatchdog: killed classifier stub healed {took:.1f} s after SIGKILL")
    assert victim.instance in {s.instance for s in list_stubs(server.process.pid) if s.model == "mnist_classifier"}
    _digits_ok(server)
