"""The front proxy: request-size limits Triton 2.51 does not have, written as an nginx configuration.

Triton 2.51 has no flag that caps an HTTP body or a gRPC message (`--http-max-input-size` came
later): a 207 MB gRPC request left the server at about 1 GB RSS, and its HTTP frontend buffers whole
200 MB bodies. nginx in front of it, configured from the spec's `server.proxy`:

* refuses a body or gRPC message above `max_request_mib` (413) before any of it reaches Triton;
* buffers HTTP bodies and sends them on with a Content-Length, so Triton never parses chunked
  transfer encoding from a client (CVE-2025-23310/-23311: a stack overflow in that parsing);
* answers the spec's restricted API groups with 403 on both protocols: only inference, health,
  metadata (and model config, unless restricted) reach Triton through it. Operators use the restricted
  groups on the server's own address, which stays on loopback, with the admin key (`make serve` on
  loopback passes them on to Triton, which checks the key itself: `pass_restricted`);
* answers malformed inference JSON with 400 instead of Triton 2.51's 500 (`server.proxy.check_json`,
  nginx's njs module running `njs/infer_check.js`: the request JSON, or the JSON header of a
  binary-form request, is parsed and checked against the KServe v2 request shape before Triton sees it).

`largest_request_bytes` is what the spec's largest accepted request needs; the linter checks that it
fits under the limit. `NginxProxy` runs nginx in front of a running server (the harness for `make
serve`, tests); `triton-repo proxy` writes the configuration and runs nginx in the foreground (the
compose stacks' `proxy` service, the Kubernetes sidecar).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from build_tools.errors import ServerError
from build_tools.spec import DeploySpec, ProxySpec

logger = logging.getLogger(__name__)

# Room for the JSON header of a binary-form request beside its tensor bytes.
HEADER_MARGIN_BYTES = 64 << 10

# Fixed-size types' element bytes (config names without TYPE_); STRING (BYTES) is sized by a budget.
_SIZES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
          "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}

# What each restricted group is on the wire: HTTP path patterns (nginx regular expressions) and gRPC
# methods of inference.GRPCInferenceService (Triton 2.51's grpc_service.proto).
_M = r"/v2/models/[^/]+(/versions/[^/]+)?"
HTTP_PATHS: dict[str, list[str]] = {
    "shared-memory": [r"^/v2/(systemsharedmemory|cudasharedmemory)(/|$)"],
    "model-config": [rf"^{_M}/config$"],
    "model-repository": [r"^/v2/repository(/|$)"],
    "statistics": [r"^/v2/models/stats$", rf"^{_M}/stats$"],
    "trace": [r"^/v2/trace/setting$", rf"^{_M}/trace/setting$"],
    "logging": [r"^/v2/logging$"],
}
GRPC_METHODS: dict[str, list[str]] = {
    "shared-memory": ["SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                      "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister"],
    "model-config": ["ModelConfig"],
    "model-repository": ["RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"],
    "statistics": ["ModelStatistics"],
    "trace": ["TraceSetting"],
    "logging": ["LogSettings"],
}
GRPC_SERVICE = "inference.GRPCInferenceService"

# The njs module that checks inference request bodies, copied next to nginx.conf by write_conf.
CHECK_SCRIPT = Path(__file__).with_name("njs") / "infer_check.js"
# Inference and generate endpoints (KServe v2 and Triton's generate extension) whose JSON is checked.
INFER_PATH = rf"^{_M}/infer$"
GENERATE_PATH = rf"^{_M}/generate(_stream)?$"
# Where distributions keep nginx's dynamic modules (Debian's libnginx-mod-http-js; the official nginx
# images' /etc/nginx/modules links to the second).
_MODULE_DIRS = ("/usr/lib/nginx/modules", "/etc/nginx/modules", "/usr/lib64/nginx/modules")
NJS_MODULE = "ngx_http_js_module.so"


def largest_request_bytes(spec: DeploySpec) -> dict[str, int]:
    """Per model, the bytes of its largest acceptable request in Triton's binary form (header margin
    included): a full batch of its fixed-size inputs, and for BYTES inputs one element at the model's
    `max_element_bytes` budget (elements above it are refused anyway). Models with variable dims and
    no budget are left out (nothing to size them by)."""
    from build_tools.interfaces import resolve_model_io

    sizes: dict[str, int] = {}
    for name, model in spec.models.items():
        io = resolve_model_io(spec, name)
        batch = max(model.max_batch_size, 1)
        total = 0
        for t in io.inputs:
            if t.data_type == "STRING":
                budget = model.parameters.get("max_element_bytes")
                if budget is None:
                    total = -1
                    break
                total += int(budget) + 4  # one element and its 4-byte length prefix
                continue
            if any(d < 0 for d in t.dims) or t.data_type not in _SIZES:
                total = -1
                break
            count = 1
            for d in t.dims:
                count *= d
            total += batch * count * _SIZES[t.data_type]
        if total >= 0:
            sizes[name] = total + HEADER_MARGIN_BYTES
    return sizes


def lint_request_limits(spec: DeploySpec) -> list[str]:
    limit = spec.server.proxy.max_request_mib << 20
    return [
        f"server.proxy.max_request_mib: {spec.server.proxy.max_request_mib} MiB refuses the largest request "
        f"of models.{name} ({size / (1 << 20):.1f} MiB with a full batch in binary form); raise it to at "
        f"least {-(-size // (1 << 20))} or lower the model's max_batch_size / max_element_bytes"
        for name, size in largest_request_bytes(spec).items()
        if size > limit
    ]


@dataclass(frozen=True)
class ProxyAddresses:
    http_listen: str  # host:port the proxy listens on for HTTP/REST
    grpc_listen: str  # host:port for gRPC (HTTP/2 without TLS)
    http_upstream: str  # Triton's HTTP endpoint, host:port
    grpc_upstream: str


def nginx_conf(proxy: ProxySpec, restricted: list[str], where: ProxyAddresses, state_dir: Path,
               foreground: bool = True, njs_module: Path | None = None, pass_restricted: bool = False) -> str:
    """The nginx configuration for one Triton server. `state_dir` holds nginx's pid file and temp
    folders (it runs unprivileged; nothing goes to /var) and the check script (write_conf). With
    `njs_module` (and `proxy.check_json`) inference JSON is checked there; `pass_restricted` sends the
    restricted groups on to Triton, which refuses them without the admin key (a proxy on loopback)."""
    limit = f"{proxy.max_request_mib}m"
    timeout = f"{proxy.upstream_timeout_s}s"
    groups = [] if pass_restricted else restricted
    deny_http = [p for group in groups for p in HTTP_PATHS.get(group, [])]
    deny_grpc = [m for group in groups for m in GRPC_METHODS.get(group, [])]
    check = proxy.check_json and njs_module is not None
    upstream = [
        "            proxy_pass http://triton_http;",
        "            proxy_http_version 1.1;",
        '            proxy_set_header Connection "";',
        "            # The whole body first, then upstream with a Content-Length: Triton never parses a",
        "            # client's chunked encoding (CVE-2025-23310/-23311).",
        "            proxy_request_buffering on;",
        f"            proxy_read_timeout {timeout};",
        f"            proxy_send_timeout {timeout};",
    ]
    lines = [
        "# Written by `triton-repo proxy` from the spec's server.proxy; see build_tools/proxy.py.",
        *([f"load_module {njs_module};"] if check else []),
        "worker_processes 1;",
        f"daemon {'off' if foreground else 'on'};",
        f"pid {state_dir / 'nginx.pid'};",
        "error_log stderr warn;",
        "events { worker_connections 1024; }",
        "http {",
        "    access_log off;",
        "    server_tokens off;",
        *([f"    js_import infer_check from {state_dir / CHECK_SCRIPT.name};"] if check else []),
        f"    client_body_temp_path {state_dir / 'body'};",
        f"    proxy_temp_path {state_dir / 'proxy'};",
        f"    fastcgi_temp_path {state_dir / 'fastcgi'};",
        f"    uwsgi_temp_path {state_dir / 'uwsgi'};",
        f"    scgi_temp_path {state_dir / 'scgi'};",
        "    # Triton 2.51 has no request size limit of its own: bigger bodies and gRPC messages end here (413).",
        f"    client_max_body_size {limit};",
        "    client_body_buffer_size 1m;",
        f"    upstream triton_http {{ server {where.http_upstream}; keepalive 16; }}",
        f"    upstream triton_grpc {{ server {where.grpc_upstream}; keepalive 16; }}",
        "    server {",
        f"        listen {where.http_listen};",
    ]
    lines += [f"        location ~ {_quote(p)} {{ return 403 \"restricted API\\n\"; }}" for p in deny_http]
    if check:
        lines += [
            "        # Malformed inference JSON: 400 here, not Triton 2.51's 500 (njs/infer_check.js); a",
            "        # request that passes goes on unchanged through @triton.",
            f"        location ~ {_quote(INFER_PATH)} {{ js_content infer_check.infer; }}",
            f"        location ~ {_quote(GENERATE_PATH)} {{ js_content infer_check.generate; }}",
            "        location @triton {",
            *upstream,
            "        }",
        ]
    lines += [
        "        location / {",
        *upstream,
        "        }",
        "    }",
        "    server {",
        f"        listen {where.grpc_listen} http2;",
    ]
    lines += [f"        location = /{GRPC_SERVICE}/{m} {{ return 403; }}" for m in deny_grpc]
    lines += [
        "        location / {",
        "            grpc_pass grpc://triton_grpc;",
        f"            grpc_read_timeout {timeout};",
        f"            grpc_send_timeout {timeout};",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _quote(pattern: str) -> str:
    return '"' + pattern.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)


def njs_module(nginx: str | None = None) -> Path | None:
    """nginx's njs module (ngx_http_js_module.so) where this nginx loads modules from, or None."""
    dirs = list(_MODULE_DIRS)
    nginx = nginx or nginx_binary()
    if nginx is not None:
        # `nginx -V` names the modules folder it was built with (printed on stderr).
        info = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
        dirs = [a.split("=", 1)[1] for a in info.split() if a.startswith("--modules-path=")] + dirs
    return next((Path(d) / NJS_MODULE for d in dirs if (Path(d) / NJS_MODULE).is_file()), None)


NJS_MISSING = ("nginx's njs module is not installed (Debian package libnginx-mod-http-js): malformed "
               "inference JSON reaches Triton, which answers it with 500 instead of 400")


def write_conf(conf: str, state_dir: Path) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (state_dir / sub).mkdir(exist_ok=True)
    shutil.copyfile(CHECK_SCRIPT, state_dir / CHECK_SCRIPT.name)
    path = state_dir / "nginx.conf"
    path.write_text(conf)
    return path


def check_conf(nginx: str, conf_path: Path) -> None:
    """`nginx -t`: a configuration nginx refuses is an error here, not a proxy that never starts."""
    done = subprocess.run([nginx, "-t", "-q", "-e", "stderr", "-c", str(conf_path), "-p", str(conf_path.parent)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServerError(f"nginx refuses {conf_path}: {done.stderr.strip()}")


def _term_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NginxProxy:
    """nginx in front of a running server, on `host` (127.0.0.1) and the given or free ports; a context manager."""

    def __init__(self, proxy: ProxySpec, restricted: list[str], http_upstream: str, grpc_upstream: str,
                 http_port: int = 0, grpc_port: int = 0, state_dir: Path | None = None, host: str = "127.0.0.1",
                 pass_restricted: bool = False) -> None:
        from build_tools.server import free_port

        nginx = nginx_binary()
        if nginx is None:
            raise ServerError("nginx is not installed (Debian package nginx); the front proxy needs it")
        self.nginx = nginx
        self.host = host
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        self._owned = state_dir is None
        self.state_dir = (state_dir or Path(tempfile.mkdtemp(prefix="triton-proxy."))).resolve()
        if os.geteuid() == 0:
            # nginx started by root runs its worker as nobody, which must reach the temp folders
            # (it makes them its own); traverse only, the files inside stay private.
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.state_dir.chmod(0o711)
        module = njs_module(nginx) if proxy.check_json else None
        if proxy.check_json and module is None:
            logger.warning("%s", NJS_MISSING)
        self.checks_json = module is not None
        where = ProxyAddresses(f"{host}:{self.http_port}", f"{host}:{self.grpc_port}", http_upstream, grpc_upstream)
        self.conf_path = write_conf(nginx_conf(proxy, restricted, where, self.state_dir, njs_module=module,
                                               pass_restricted=pass_restricted), self.state_dir)
        self.log_path = self.state_dir / "nginx.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 10.0) -> NginxProxy:
        check_conf(self.nginx, self.conf_path)
        log = open(self.log_path, "ab")  # noqa: SIM115 - nginx writes it while it runs
        self.process = subprocess.Popen(
            [self.nginx, "-e", "stderr", "-c", str(self.conf_path), "-p", str(self.state_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            # The master ends (SIGTERM: it stops its workers) with the process that started it, so a
            # killed harness never leaves the proxy holding the user's ports.
            preexec_fn=_term_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"nginx exited with code {self.process.returncode}: "
                                  f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                for port in (self.http_port, self.grpc_port):
                    socket.create_connection((self._client_host, port), timeout=1).close()
                logger.info("front proxy (nginx) on http %s, grpc %s", self.http_url, self.grpc_url)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ServerError(f"nginx did not listen on {self.http_port}/{self.grpc_port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGQUIT)  # graceful: finish the requests under way
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._owned:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> NginxProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
