"""Starting what the load tools measure: the embedded Triton (through build_tools.server, the one
harness) on a repository built from deploy.yaml or a variant of it, and the Flask baseline (the
development server or gunicorn), each optionally pinned to a CPU set.

Pinning: on a machine with few cores a load generator on the server's cores steals the CPU it is
measuring. ``split_cpus`` gives the server all CPUs but the first ``client_cpus`` (at least one for
each side where there are two or more); a server is started with the caller's affinity set to the
server's CPUs, so every process and thread it starts (Triton's Python-backend stubs, gunicorn's
workers) inherits them, and the caller's own affinity is restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from build_tools.build import build_repositories
from build_tools.server import ServerOptions, TritonServer, free_port
from build_tools.spec import FlavorSpec, parse_spec
from loadtest.errors import BaselineServerError, LoadTestError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "deploy.yaml"


# --------------------------------------------------------------------------- CPU sets


@dataclass(frozen=True)
class CpuSplit:
    server: frozenset[int]
    client: frozenset[int]
    pinned: bool

    def describe(self) -> str:
        if not self.pinned:
            return f"not pinned: server and load generator share CPUs {sorted(self.server)}"
        return (f"server pinned to CPU(s) {_fmt(self.server)}, load generator to CPU(s) {_fmt(self.client)} "
                f"(os.sched_setaffinity, inherited by every server process)")


def _fmt(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def split_cpus(client_cpus: int | None = None, pin: bool = True) -> CpuSplit:
    """The load generator gets the first ``client_cpus`` CPUs (default: a quarter, at least one), the
    server the rest; with one CPU (or pin=False) both share everything."""
    cpus = available_cpus()
    if not pin or len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
        return CpuSplit(frozenset(cpus), frozenset(cpus), pinned=False)
    n = client_cpus if client_cpus is not None else max(1, len(cpus) // 4)
    n = min(max(1, n), len(cpus) - 1)
    return CpuSplit(server=frozenset(cpus[n:]), client=frozenset(cpus[:n]), pinned=True)


@contextlib.contextmanager
def affinity(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block (and whatever it starts) on ``cpus``; restores the previous set after."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------- repositories


def load_spec_data(spec_path: Path = DEFAULT_SPEC) -> dict[str, Any]:
    data = yaml.safe_load(Path(spec_path).read_text())
    if not isinstance(data, dict):
        raise LoadTestError(f"{spec_path}: not a mapping")
    return data


def build_repository(
    out: Path, spec_path: Path = DEFAULT_SPEC, dynamic_batching: bool = True, models: dict[str, Any] | None = None
) -> Path:
    """Write the embedded repository of ``spec_path`` to ``out``.

    dynamic_batching=False removes every model's ``dynamic_batching`` section (the "off" variant of
    the benchmark); ``models`` updates model sections key by key (e.g. a different instance count).
    """
    data = copy.deepcopy(load_spec_data(spec_path))
    for name, section in data.get("models", {}).items():
        if models and name in models:
            section.update(copy.deepcopy(models[name]))
        if not dynamic_batching:
            section.pop("dynamic_batching", None)
    spec = parse_spec(data, base_dir=Path(spec_path).resolve().parent)
    spec = spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(Path(out).resolve()))}})
    build_repositories(spec, ["embedded"])
    return Path(out)


@contextlib.contextmanager
def triton(
    repositories: Sequence[Path], log_file: Path, cpus: frozenset[int] | None = None, **options: Any
) -> Iterator[TritonServer]:
    """The embedded Triton through the project's harness, started on ``cpus``."""
    server = TritonServer(ServerOptions(model_repositories=list(repositories), log_file=log_file, **options))
    with affinity(cpus):
        server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- the Flask baseline


@dataclass
class BaselineServer:
    kind: str  # "flask-dev" or "gunicorn"
    address: str  # host:port
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _gunicorn() -> str:
    candidate = Path(sys.executable).parent / "gunicorn"
    found = str(candidate) if candidate.exists() else shutil.which("gunicorn")
    if not found:
        raise BaselineServerError("gunicorn is not installed in this Python (pip install gunicorn)")
    return found


def _wait_healthy(address: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise BaselineServerError(f"baseline server exited with code {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://{address}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise BaselineServerError(f"baseline server at {address} not healthy after {timeout_s:.0f} s")


@contextlib.contextmanager
def baseline(
    kind: str, log_file: Path, cpus: frozenset[int] | None = None, workers: int = 3, threads: int = 4,
    timeout_s: float = 60.0,
) -> Iterator[BaselineServer]:
    """The seed's Flask app: ``flask-dev`` (app.run(), threaded) or ``gunicorn`` (``workers`` processes
    of ``threads`` threads each, gthread workers: they keep connections alive, as the dev server does)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    if kind == "flask-dev":
        cmd = [sys.executable, "-m", "loadtest.baseline.app", "--host", "127.0.0.1", "--port", str(port)]
    elif kind == "gunicorn":
        cmd = [_gunicorn(), "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
               "--bind", address, "--log-level", "warning", "loadtest.baseline.app:create_app()"]
    else:
        raise LoadTestError(f"unknown baseline kind {kind!r}; expected flask-dev or gunicorn")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    with open(log_file, "wb") as log, affinity(cpus):
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = BaselineServer(kind, address, process, log_file)
    try:
        _wait_healthy(address, process, log_file, timeout_s)
        logger.info("%s baseline up at %s (pid %d)", kind, address, process.pid)
        yield server
    finally:
        server.stop()


def port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
        return True
    return False
