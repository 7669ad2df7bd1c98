"""The one harness that runs the embedded Triton server (CLI, tests and benchmarks all use it).

It finds `tritonserver` in the installed nvidia-pytriton wheel, prepares a backend folder with the
Python-backend stub for the running Python, picks free ports, writes the server log to a file, waits
for server and model readiness against a deadline (failing fast, with the log tail, if the process
dies), and stops with SIGINT, then SIGTERM, then SIGKILL. The server gets PR_SET_PDEATHSIG, so it
dies with the process that started it even when that process is killed.

With `front_proxy` (what `make serve` does when nginx is installed) the front proxy
(build_tools/proxy.py) takes the given host and HTTP/gRPC ports and Triton listens behind it on
loopback-only ports: the harness starts Triton, then nginx, waits for readiness through the proxy, and
stops nginx first, then Triton.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from build_tools.errors import ServerError
from build_tools.healer import (
    Healer,
    HealthEndpoint,
    http_canary,
    http_reload,
    remove_regions,
    repository_locked,
)
from build_tools.logrotate import RotatingLog
from build_tools.proxy import NginxProxy
from build_tools.spec import DEFAULT_RESTRICTED_APIS, ProxySpec, ServerSpec
from triton_api import TritonClient

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TritonDistribution:
    """Where the wheel keeps the server, its bundled libraries and the per-Python stubs."""

    root: Path  # .../site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    def stub(self, python_version: str) -> Path:
        return self.root / "python_backend_stubs" / python_version / "triton_python_backend_stub"


def find_distribution() -> TritonDistribution:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the nvidia-pytriton wheel is not installed in this Python; it ships the embedded tritonserver "
            "(run `make install` or `pip install nvidia-pytriton==0.7.0`)"
        )
    dist = TritonDistribution(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")
    if not dist.binary.is_file():
        raise ServerError(f"{dist.binary}: tritonserver binary missing from the nvidia-pytriton wheel")
    return dist


def prepare_backends(dest: Path, dist: TritonDistribution | None = None) -> Path:
    """A backend folder whose python backend has the stub built for the running Python.

    The wheel keeps stubs for several Pythons beside the backend; the backend only looks next to
    itself. We copy instead of editing site-packages, which other environments may share.
    """
    dist = dist or find_distribution()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist.stub(version)
    if not stub.is_file():
        available = sorted(p.name for p in (dist.root / "python_backend_stubs").iterdir())
        raise ServerError(f"no Python-backend stub for Python {version} in the wheel; available: {available}")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for f in dist.python_backend.iterdir():
        if f.is_file():
            _install(f, python_dir / f.name)
    _install(stub, python_dir / stub.name)
    (python_dir / stub.name).chmod(0o755)
    return dest


def _install(src: Path, dst: Path) -> None:
    """Copy, then rename into place: a restart may find the old stub binary still executing (a
    killed stub not reaped yet), and writing over a running binary fails with ETXTBSY."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As tritonserver binds: a port whose last connections are still in TIME_WAIT (a server
        # stopped moments ago) is free for it, only a listening socket is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ServerOptions:
    model_repositories: Sequence[Path]
    http_port: int = 0  # 0 = pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    log_file: Path | None = None
    workdir: Path | None = None  # backends and default log live here; a temp folder when None
    strict_readiness: bool = True
    exit_on_error: bool = True
    model_control_explicit: bool = False
    startup_timeout_s: float = 180.0
    log_verbose: int = 0
    # p50/p99 need Triton's latency summaries (nv_inference_request_summary_us); they are off by default.
    summary_latencies: bool = True
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Least privilege: these API groups answer only requests carrying `admin_header: admin_key`
    # (over HTTP and gRPC). The key is $TRITON_ADMIN_KEY, else random per start: then only the harness
    # itself (readiness, the healer's reloads) can use them.
    restricted_apis: Sequence[str] = DEFAULT_RESTRICTED_APIS
    admin_header: str = "triton-admin-key"
    admin_key: str | None = None
    # Triton's own bound on draining in-flight requests at shutdown (--exit-timeout-secs).
    exit_timeout_s: int = 30
    # The stub watchdog (build_tools/healer.py) and its /health + /metrics endpoint (0 = free port).
    heal: bool = True
    heal_interval_s: float = 0.5
    max_heals_per_10min: int = 10
    # Off unless asked (from_spec: the spec's 5 s): canaries add inferences to the counts tests compare.
    canary_interval_s: float = 0.0  # 0 = no canary inferences
    canary_timeout_s: float = 5.0
    canary_misses: int = 2
    health_port: int | None = 0
    # The server log rotates past this size, keeping this many older files (.1 is the newest).
    log_max_bytes: int = 64 << 20
    log_backups: int = 3
    # The front proxy (nginx, build_tools/proxy.py) with these settings: it listens on `host` and the
    # HTTP/gRPC ports above, Triton behind it on 127.0.0.1 only, on triton_http_port/triton_grpc_port
    # (0 = free ports). None: Triton itself on `host` and those ports. Metrics and health stay on `host`.
    front_proxy: ProxySpec | None = None
    triton_http_port: int = 0
    triton_grpc_port: int = 0

    @classmethod
    def from_spec(cls, server: ServerSpec, **kwargs: object) -> ServerOptions:
        """Options with the spec's `server:` settings (deploy.yaml), the rest from kwargs."""
        values: dict[str, object] = {
            "restricted_apis": tuple(server.admin_api.restricted),
            "admin_header": server.admin_api.header,
            "exit_timeout_s": server.exit_timeout_s,
            "heal": server.healer.enabled,
            "heal_interval_s": server.healer.interval_s,
            "max_heals_per_10min": server.healer.max_heals_per_10min,
            "canary_interval_s": server.healer.canary_interval_s,
            "canary_timeout_s": server.healer.canary_timeout_s,
            "canary_misses": server.healer.canary_misses,
            "log_max_bytes": server.log.max_mib << 20,
            "log_backups": server.log.backups,
        }
        values.update(kwargs)
        return cls(**values)  # type: ignore[arg-type]


class TritonServer:
    """A running embedded tritonserver. Use as a context manager, or call start()/stop()."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir_owned = False
        self.workdir = options.workdir
        self.http_port = options.http_port
        self.grpc_port = options.grpc_port
        self.metrics_port = options.metrics_port
        self.log_path: Path | None = options.log_file
        self.startup_seconds: float | None = None
        # Set by stop() when the server ended badly (crashed, or needed SIGKILL); None after a clean exit.
        self.exit_problem: str | None = None
        self.admin_key = options.admin_key or os.environ.get("TRITON_ADMIN_KEY") or secrets.token_urlsafe(24)
        self.healer: Healer | None = None
        self.health: HealthEndpoint | None = None
        self.health_port: int | None = None
        self._lifecycle = threading.RLock()  # start/stop/restart, from the caller or the healer
        self._restarting = False
        self._ports_fixed = False
        self._log: RotatingLog | None = None
        self.proxy: NginxProxy | None = None
        # Behind a front proxy the given HTTP/gRPC ports are the proxy's; Triton's own are loopback ones.
        self.front_http_port = self.front_grpc_port = 0
        if options.front_proxy is not None:
            self.front_http_port, self.front_grpc_port = options.http_port, options.grpc_port
            self.http_port, self.grpc_port = options.triton_http_port, options.triton_grpc_port

    @property
    def admin_headers(self) -> dict[str, str]:
        """The HTTP header that opens the restricted API groups (empty when none are restricted)."""
        return {self.options.admin_header: self.admin_key} if self.options.restricted_apis else {}

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """The same for gRPC: Triton 2.51 expects the metadata key prefixed `triton-grpc-protocol-`."""
        return {grpc_admin_header(k): v for k, v in self.admin_headers.items()}

    # -- addresses -------------------------------------------------------------------------------
    @property
    def _triton_host(self) -> str:
        """Where Triton's HTTP and gRPC endpoints bind: loopback behind a front proxy."""
        return "127.0.0.1" if self.options.front_proxy is not None else self.options.host

    @property
    def _client_host(self) -> str:
        return _connect_host(self.options.host)

    @property
    def http_url(self) -> str:
        """Triton's own HTTP endpoint (behind the proxy, if any: the harness and operators use it)."""
        return f"{_connect_host(self._triton_host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_connect_host(self._triton_host)}:{self.grpc_port}"

    @property
    def front_http_url(self) -> str:
        """Where clients connect: the front proxy's HTTP endpoint, or Triton's when there is none."""
        return f"{self._client_host}:{self.front_http_port}" if self.options.front_proxy else self.http_url

    @property
    def front_grpc_url(self) -> str:
        return f"{self._client_host}:{self.front_grpc_port}" if self.options.front_proxy else self.grpc_url

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str | None:
        """The watchdog's /health: 200 only when Triton is ready and every model's stubs are alive."""
        return None if self.health_port is None else f"http://{self._client_host}:{self.health_port}/health"

    # -- lifecycle -------------------------------------------------------------------------------
    def _command(self, dist: TritonDistribution, backends: Path) -> list[str]:
        o = self.options
        cmd = [str(dist.binary)]
        for repo in o.model_repositories:
            cmd.append(f"--model-repository={Path(repo).resolve()}")
        cmd += [
            f"--backend-directory={backends}",
            f"--cache-directory={dist.caches}",
            f"--http-address={self._triton_host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self._triton_host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={o.host}",
            f"--metrics-port={self.metrics_port}",
            f"--strict-readiness={str(o.strict_readiness).lower()}",
            f"--exit-on-error={str(o.exit_on_error).lower()}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false" if not _has_gpu() else "--allow-gpu-metrics=true",
            f"--log-verbose={o.log_verbose}",
            f"--exit-timeout-secs={o.exit_timeout_s}",
        ]
        if o.restricted_apis:
            restricted = f"{','.join(o.restricted_apis)}:{o.admin_header}={self.admin_key}"
            # gRPC calls them protocols in 2.51 (--grpc-restricted-protocol), with the same groups.
            cmd += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
        if o.model_control_explicit:
            cmd += ["--model-control-mode=explicit", "--load-model=*"]
        if o.summary_latencies and not any("summary_latencies" in a for a in o.extra_args):
            cmd.append("--metrics-config=summary_latencies=true")
        return cmd + list(o.extra_args)

    def _environment(self, dist: TritonDistribution) -> dict[str, str]:
        env = dict(os.environ)
        # The stub finds this Python's packages through `python3` first on PATH (it ignores PYTHONPATH).
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # The python backend library resolves its bundled dependencies relative to the wheel.
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(dist.libs), env.get("LD_LIBRARY_PATH")) if p)
        env.update(self.options.env)
        return env

    def _pick_ports(self) -> None:
        if self._ports_fixed:  # a restart keeps the ports clients already know
            return
        behind = "triton " if self.options.front_proxy is not None else ""
        slots = [("http_port", f"{behind}http port", self._triton_host),
                 ("grpc_port", f"{behind}grpc port", self._triton_host),
                 ("metrics_port", "metrics port", self.options.host)]
        if self.options.front_proxy is not None:
            slots += [("front_http_port", "http port", self.options.host),
                      ("front_grpc_port", "grpc port", self.options.host)]
        # A port picked for one slot must not be one another slot asked for by number.
        taken: set[int] = {getattr(self, attr) for attr, _, _ in slots} - {0}
        for attr, label, host in slots:
            port = getattr(self, attr)
            if port == 0:
                while (port := free_port(_connect_host(host))) in taken:
                    pass
                taken.add(port)
            elif not _port_free(port, host or "0.0.0.0"):
                raise ServerError(f"{label} {port} is already in use on {host}")
            setattr(self, attr, port)
        self._ports_fixed = True

    def start(self) -> TritonServer:
        with self._lifecycle:
            self._start_process()
            try:
                self._start_proxy()
                self._start_watchdog()
            except BaseException:
                self.stop(report=False)
                raise
        return self

    def _start_proxy(self) -> None:
        """nginx in front of the running Triton, ready when Triton answers ready through it."""
        o = self.options
        if o.front_proxy is None or self.proxy is not None:
            return
        assert self.workdir is not None
        self.proxy = NginxProxy(
            o.front_proxy, list(o.restricted_apis), self.http_url, self.grpc_url,
            http_port=self.front_http_port, grpc_port=self.front_grpc_port,
            state_dir=self.workdir / f"proxy-{self.front_http_port}", host=o.host,
            # On loopback the local machine is the trust boundary: the restricted groups go on to
            # Triton, which refuses them without the admin key. Exposed, they stop at the proxy.
            pass_restricted=is_loopback(o.host),
        ).start()
        deadline = time.monotonic() + 30.0
        with TritonClient(self.front_http_url, "http", timeout_s=2.0) as client:
            while not client.is_ready():
                if not self.proxy.is_alive() or time.monotonic() > deadline:
                    raise ServerError(f"Triton is not ready through the front proxy on {self.front_http_url}; "
                                      f"nginx log {self.proxy.log_path}:\n"
                                      f"{self.proxy.log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)
        logger.info("front proxy (nginx) on http %s, grpc %s -> Triton on %s, %s", self.front_http_url,
                    self.front_grpc_url, self.http_url, self.grpc_url)

    def _start_process(self) -> None:
        if self.process is not None:
            raise ServerError("server already started")
        for repo in self.options.model_repositories:
            if not Path(repo).is_dir():
                raise ServerError(f"model repository {repo} does not exist; run `make build-repo` first")
        dist = find_distribution()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="triton-embedded."))
            self._workdir_owned = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(self.workdir / "backends", dist)
        self._pick_ports()
        if self.log_path is None:
            self.log_path = self.workdir / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self._command(dist, backends)
        logger.info("starting tritonserver (http %d, grpc %d, metrics %d), log: %s",
                    self.http_port, self.grpc_port, self.metrics_port, self.log_path)
        logger.debug("command: %s", " ".join(cmd))
        started = time.monotonic()
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            # Through a pipe into a size-bounded, rotating file (Triton itself never rotates).
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._environment(dist),
            # Own process group, so stop() reaches the Python-backend stubs too.
            start_new_session=True,
            preexec_fn=_set_pdeathsig,
        )
        assert self.process.stdout is not None
        # A restart by the healer appends: the log of the failure stays readable.
        self._log = RotatingLog(self.process.stdout, self.log_path, self.options.log_max_bytes,
                                self.options.log_backups, append=self._restarting)
        try:
            self.wait_ready(self.options.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        logger.info("tritonserver ready in %.1f s", self.startup_seconds)

    def _start_watchdog(self) -> None:
        o = self.options
        if not o.heal or self.healer is not None:
            if self.healer is not None:
                self.healer.baseline()
            return
        reload = None
        if o.model_control_explicit:
            # In step with the lifecycle commands, which load and unload through the same API.
            reload = repository_locked(http_reload(self.http_url, self.admin_headers),
                                       list(o.model_repositories))
        self.healer = Healer(
            lambda: self.process.pid if self.process is not None else None,
            reload,
            self.restart,
            interval_s=o.heal_interval_s,
            max_heals_per_10min=o.max_heals_per_10min,
            canary=http_canary(self.http_url, list(o.model_repositories), o.canary_timeout_s)
            if o.canary_interval_s > 0 else None,
            canary_interval_s=o.canary_interval_s,
            canary_misses=o.canary_misses,
        )
        self.healer.start()
        if o.health_port is not None:
            try:
                self.health = HealthEndpoint(self.healer, self._serving, o.host, o.health_port)
            except OSError as e:  # e.g. a second server on the default health port
                raise ServerError(
                    f"health port {o.health_port} on {o.host} cannot be bound ({e.strerror}); pass another "
                    f"--health-port (0: a free one)"
                ) from e
            self.health_port = self.health.port
            logger.info("stub watchdog on, health endpoint %s", self.health_url)

    def ready(self) -> bool:
        """Triton's own readiness (server and models), as its HTTP endpoint reports it."""
        if self.process is None:
            return False
        with TritonClient(self.http_url, "http", timeout_s=2.0) as client:
            return client.is_ready()

    def _serving(self) -> bool:
        """What /health reports besides the stubs: Triton ready, and the front proxy (if any) running."""
        return (self.proxy is None or self.proxy.is_alive()) and self.ready()

    def restart(self) -> None:
        """Stop and start again on the same ports (the healer's last resort outside explicit mode)."""
        with self._lifecycle:
            self._restarting = True
            try:
                logger.warning("restarting tritonserver")
                # Not the full exit timeout: Triton waits all of it for the model whose stub is dead
                # (measured: "Found 1 live models" until the timeout); 5 s lets in-flight requests end.
                self._stop_process(5.0)
                self._start_process()
            finally:
                self._restarting = False

    def log_tail(self, lines: int = 40) -> str:
        if self._log is not None and (self.process is None or self.process.poll() is not None):
            self._log.join(2.0)  # the server has exited: let the copier write its last lines
        if self.log_path is None or not self.log_path.exists():
            return "<no log>"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def model_index(self) -> list[dict[str, str]]:
        # The repository index is a restricted API by default: the harness sends the admin header.
        with TritonClient(self.http_url, "http", timeout_s=5.0, headers=self.admin_headers) as client:
            return client.repository_index()

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the server and every model in its repositories are ready, or raise."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        with TritonClient(self.http_url, "http", timeout_s=5.0, headers=self.admin_headers) as client:
            self._wait_ready(client, deadline, timeout_s)

    def _wait_ready(self, client: TritonClient, deadline: float, timeout_s: float) -> None:
        assert self.process is not None
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"tritonserver exited with code {code} during startup; log {self.log_path} ends with:\n"
                    f"{self.log_tail()}"
                )
            if client.is_ready():
                not_ready = [m for m in client.repository_index() if m.get("state") != "READY"]
                if not not_ready:
                    return
                failed = [m for m in not_ready if m.get("state") == "UNAVAILABLE" and m.get("reason")]
                if failed:
                    raise ServerError(
                        "models failed to load: "
                        + "; ".join(f"{m['name']} v{m.get('version', '?')}: {m['reason']}" for m in failed)
                        + f"\nlog {self.log_path} ends with:\n{self.log_tail()}"
                    )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver not ready after {timeout_s:.0f} s; log {self.log_path} ends with:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.25)

    def is_alive(self) -> bool:
        if self._restarting:
            return True
        with self._lifecycle:
            return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float | None = None, report: bool = True) -> int | None:
        """Stop the watchdog, then the server: SIGINT (Triton's graceful shutdown, bounded by
        exit_timeout_s), then SIGTERM, then SIGKILL to the whole group; then remove any shared-memory
        region a dead stub left behind. Returns within timeout_s + 10 s.

        A bad end (a crash, even while unloading, or needing SIGKILL) is kept in ``exit_problem`` and
        logged as an error unless ``report`` is False (the context manager raises it instead)."""
        if self.healer is not None:
            self.healer.request_stop()  # no new heal starts; one under way finishes first (the lock)
        if self.health is not None:
            self.health.close()
            self.health = None
        if self.proxy is not None:
            # First: no new request reaches a server that is stopping (nginx finishes those under way).
            self.proxy.stop()
            self.proxy = None
        with self._lifecycle:
            code = self._stop_process(self.options.exit_timeout_s + 5.0 if timeout_s is None else timeout_s)
            if self._workdir_owned and self.workdir is not None and self.options.log_file is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
        # Joined only now: a server the healer restarted is its thread's child (PR_SET_PDEATHSIG would
        # SIGKILL it when that thread ends), so the thread ends after the graceful stop.
        if self.healer is not None:
            self.healer.stop()
        if self.exit_problem:
            logger.log(logging.ERROR if report else logging.DEBUG, "tritonserver %s; log %s ends with:\n%s",
                       self.exit_problem, self.log_path, self.log_tail(20))
        return code

    def _stop_process(self, timeout_s: float) -> int | None:
        proc = self.process
        if proc is None:
            return None
        sent: list[signal.Signals] = []
        try:
            for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                if proc.poll() is not None:
                    break
                sent.append(sig)
                logger.debug("sending %s to tritonserver (pid %d)", sig.name, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    logger.warning("tritonserver did not stop within %.0f s of %s", wait, sig.name)
            # Stubs left behind by a killed server would hold shared memory: end the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            self.process = None
            if self._log is not None:
                self._log.join(5.0)  # every line the server and its stubs wrote is in the file
            if self.healer is not None:
                # Regions of killed stubs (and, after a forced stop, of all stubs) stay in /dev/shm otherwise.
                left = remove_regions(self.healer.shm_regions)
                if left:
                    logger.info("removed %d shared-memory region(s) the stopped server left in /dev/shm: %s",
                                len(left), left)
                self.healer.shm_regions.clear()
        self.exit_problem = _exit_problem(proc.returncode, sent)
        if not self.exit_problem:
            logger.info("tritonserver stopped (exit code %s)", proc.returncode)
        return proc.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(report=exc_type is not None)
        # A server that crashed (even while unloading) is a failure, unless one is already on its way.
        if self.exit_problem and exc_type is None:
            raise ServerError(f"tritonserver {self.exit_problem}; see its log {self.log_path}")


def _exit_problem(code: int | None, sent: list[signal.Signals]) -> str | None:
    """Why an exit code is not a clean stop, or None. SIGINT is Triton's graceful shutdown: exit 0."""
    if code == 0 or code is None:
        return None
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        if -code in (signal.SIGTERM, signal.SIGKILL) and -code in sent:
            return f"did not stop on SIGINT and was ended with {name}"
        if -code == signal.SIGKILL:
            # From outside, not a crash of its own: PR_SET_PDEATHSIG when the watchdog thread that
            # restarted it ends, or the kernel's OOM killer. Logged, not raised.
            logger.warning("tritonserver was killed with SIGKILL from outside (exit code %d)", code)
            return None
        return f"crashed with {name} (exit code {code})"
    # A positive code after SIGINT is Triton reporting an earlier error (e.g. a model that failed to
    # load) on its way out, not a crash: logged, not raised.
    logger.warning("tritonserver exited with code %d%s", code, " while stopping" if sent else "")
    return None


def grpc_admin_header(header: str) -> str:
    """The gRPC metadata key for a restricted-protocol header (measured on 2.51: the server answers
    "expecting header 'triton-grpc-protocol-<header>'")."""
    return f"triton-grpc-protocol-{header}"


ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"


def env_admin_headers(header: str, protocol: str) -> dict[str, str] | None:
    """What a command-line tool sends to a server it did not start: `header` (deploy.yaml
    server.admin_api.header) with the key from $TRITON_ADMIN_KEY, under the gRPC metadata name over
    gRPC; None when the variable is unset or empty (a server with a random key refuses the call)."""
    key = os.environ.get(ADMIN_KEY_ENV)
    if not key:
        return None
    return {grpc_admin_header(header) if protocol == "grpc" else header: key}


def _connect_host(host: str) -> str:
    """The address a client uses for a server bound to `host` (a wildcard bind is reached on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _has_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()


@contextlib.contextmanager
def running_server(repositories: Sequence[Path], **kwargs: object) -> Iterator[TritonServer]:
    """`with running_server([repo]) as server:` — the common case in one line."""
    server = TritonServer(ServerOptions(model_repositories=list(repositories), **kwargs))  # type: ignore[arg-type]
    with server:
        yield server
