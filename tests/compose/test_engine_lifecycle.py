"""`make docker` / `make down` on a machine with no running Docker engine, as a user runs them.

Issue 16 (8): `docker compose -f ...` as documented did not exist (only the Go binary inside the
virtualenv), and `make down` left the Docker engine that `make up` had started running. The check
runs only when asked (RUN_DOCKER_TESTS=1), with the Docker engine package installed and no engine
running already: it proves the lifecycle of an engine it starts, and must not stop someone else's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "compose-check.sh"


def _engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def test_make_down_stops_the_engine_when_make_docker_started_it(tmp_path: Path) -> None:
    if os.environ.get("RUN_DOCKER_TESTS") != "1":
        pytest.skip("starts and stops a Docker engine: set RUN_DOCKER_TESTS=1 (on a host no one else uses Docker on)")
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        pytest.skip("the Docker engine package is not installed (the CI installs it after the tests)")
    if os.geteuid() != 0:
        pytest.skip("starting a Docker engine needs root")
    if _engine_answers():
        pytest.skip("a Docker engine is already running: this test only stops one it started")
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "DOCKER_CONFIG": str(tmp_path / "docker")}
    try:
        up = subprocess.run(["bash", str(SCRIPT), "--engine"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert _engine_answers()
        version = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, text=True,
                                 timeout=60)
        assert version.returncode == 0 and "v2." in version.stdout, version.stderr
    finally:
        down = subprocess.run(["bash", str(SCRIPT), "--down"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    assert "engine stopped" in down.stdout
    assert not _engine_answers(), "make down left the engine it started running"
