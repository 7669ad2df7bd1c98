"""A throwaway Prometheus (the Debian package's binary) with the project's alert rules, for the drift demo
and its integration test: scrapes the given targets every second, evaluates the rules every second,
and answers which alerts are pending or firing through its HTTP API.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from build_tools.errors import ToolkitError
from build_tools.server import free_port

logger = logging.getLogger(__name__)

RULES = Path(__file__).resolve().parents[1] / "compose" / "prometheus" / "alerts.yml"


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


class LocalPrometheus:
    """`with LocalPrometheus(workdir, {"drift-monitor": "127.0.0.1:PORT"}) as prom: prom.alerts()`."""

    def __init__(self, workdir: Path, targets: dict[str, str], interval_s: float = 1.0) -> None:
        binary = find_prometheus()
        if binary is None:
            raise ToolkitError("prometheus is not installed (Debian package `prometheus`)")
        self.binary = binary
        self.workdir = workdir.resolve()  # the process runs in it: every path absolute
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(RULES, workdir / "alerts.yml")
        config = {
            "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalPrometheus:
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - kept open for the process's life
        self._proc = subprocess.Popen(
            [self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.workdir / "prometheus.log").read_text()[-800:]
                raise ToolkitError(f"prometheus exited with {self._proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise ToolkitError("prometheus did not become ready within 60 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts: each with labels (alertname, model, version, ...) and state (pending/firing)."""
        return list(self.api("alerts")["alerts"])

    def alert_state(self, name: str) -> str | None:
        states = {a["state"] for a in self.alerts() if a["labels"].get("alertname") == name}
        return "firing" if "firing" in states else ("pending" if "pending" in states else None)

    def target_up(self, job: str) -> bool:
        return any(t["labels"].get("job") == job and t["health"] == "up" for t in self.api("targets")["activeTargets"])
