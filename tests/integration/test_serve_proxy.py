"""Issue 17: `make serve` (`triton-repo serve`) behind the front proxy, as a user runs it.

By default, when nginx is installed, the user's HTTP/gRPC ports are nginx's and Triton listens behind
it on loopback-only ports; the harness (build_tools/server.py) starts both, waits for readiness through
the proxy, and stops both. These tests run the real command, the real nginx and the real Triton.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from build_tools.proxy import nginx_binary, njs_module
from build_tools.server import free_port
from tests.support import serve_cli
from tests.support.python_models import python_model_repository
from tests.support.tools import tool_missing

pytestmark = pytest.mark.server

KEY = "serve-proxy-test-key"
STOP_BOUND_S = 45.0  # Ctrl-C to exit: nginx's graceful stop, then Triton's (exit timeout 30 s + margin)


def _need_nginx() -> None:
    if nginx_binary() is None:
        tool_missing("nginx is not installed (Debian package nginx): make serve's front proxy needs it")
    if njs_module() is None:
        tool_missing("nginx's njs module is not installed (Debian package libnginx-mod-http-js)")


def _serve(tmp: Path, repo: Path, ports: list[int], *args: str) -> subprocess.Popen[str]:
    return serve_cli.serve(tmp, repo, "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                           "--metrics-port", "0", *args, env={**os.environ, "TRITON_ADMIN_KEY": KEY})


def _post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("Server") or ""
    except (BrokenPipeError, ConnectionResetError) as e:  # a 413 may close while the body is being sent
        return 413, str(e).encode(), "nginx"
    finally:
        conn.close()


def _listeners() -> dict[int, set[str]]:
    """Listening TCP ports of this host (its network namespace) and the addresses they are bound to."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            found.setdefault(int(port, 16), set()).add(_address(address))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    joined = b"".join(words)
    if joined[:12] == bytes(10) + b"\xff\xff":  # an IPv4-mapped address
        return ".".join(str(b) for b in joined[12:])
    return "::1" if joined == bytes(15) + b"\x01" else joined.hex()


def test_serve_puts_proxy_in_front_and_stops_both_when_nginx_installed(tmp_path: Path) -> None:
    _need_nginx()
    repo = python_model_repository(tmp_path / "repo")
    ports = [free_port(), free_port()]
    proc = _serve(tmp_path, repo, ports)
    try:
        banner = serve_cli.wait_banner(proc)
        print(f"\n{banner}")
        assert f"http://127.0.0.1:{ports[0]}   (front proxy, nginx" in banner
        triton = re.search(r"Triton  http 127\.0\.0\.1:(\d+), grpc 127\.0\.0\.1:(\d+)", banner)
        assert triton, banner
        triton_ports = [int(triton.group(1)), int(triton.group(2))]
        listening = _listeners()
        # Triton's own HTTP and gRPC endpoints: loopback only; the user's ports: nginx.
        for port in triton_ports:
            assert listening.get(port) == {"127.0.0.1"}, (port, listening.get(port))
        status, answer, server = _post(ports[0], "/v2/models/identity/infer", b'{"inputs": [')
        assert (status, server) == (400, "nginx"), (status, answer)
        assert "failed to parse the request JSON" in json.loads(answer)["error"]
        status, _, _ = _post(triton_ports[0], "/v2/models/identity/infer", b'{"inputs": [')
        assert status == 500  # Triton 2.51 itself, behind the proxy
        body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [2.5]}]}).encode()
        status, answer, _ = _post(ports[0], "/v2/models/identity/infer", body)
        assert status == 200 and json.loads(answer)["outputs"][0]["data"] == [2.5], answer
        # The request size limit (16 MiB by default) holds on the user's port.
        status, _, _ = _post(ports[0], "/v2/models/identity/infer", bytes(17 << 20))
        assert status == 413
        # On loopback the restricted groups go on to Triton, which wants the key.
        status, _, _ = _post(ports[0], "/v2/repository/index", b"{}")
        assert status == 403
        status, answer, _ = _post(ports[0], "/v2/repository/index", b"{}", {"triton-admin-key": KEY})
        assert status == 200 and b"identity" in answer, answer
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}")
        try:
            x = grpcclient.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.array([4.0], np.float32))
            assert client.infer("identity", [x]).as_numpy("y").tolist() == [4.0]
        finally:
            client.close()
    finally:
        rc, err, took = serve_cli.stop(proc, timeout_s=90)
    print(f"serve stopped {took:.1f} s after Ctrl-C (rc {rc})")
    assert rc == 0, err
    assert took < STOP_BOUND_S
    listening = _listeners()
    assert not [p for p in [*ports, *triton_ports] if p in listening], "a port is still listening after the stop"
    logs = tmp_path / "build" / "serve"
    assert (logs / f"proxy-{ports[0]}" / "nginx.log").is_file() and (logs / "tritonserver.log").is_file()


def test_serve_serves_triton_directly_when_no_proxy_asked(tmp_path: Path) -> None:
    repo = python_model_repository(tmp_path / "repo")
    ports = [free_port(), free_port()]
    proc = _serve(tmp_path, repo, ports, "--no-proxy")
    try:
        banner = serve_cli.wait_banner(proc)
        assert f"http://127.0.0.1:{ports[0]}   (no front proxy)" in banner, banner
        status, answer, server = _post(ports[0], "/v2/models/identity/infer", b'{"inputs": [')
        assert status == 500 and server != "nginx", answer  # Triton 2.51's own answer, nothing in front
    finally:
        rc, err, _ = serve_cli.stop(proc, timeout_s=90)
    assert rc == 0, err


def test_proxy_dies_with_harness_when_harness_killed(tmp_path: Path) -> None:
    """A SIGKILLed harness (no finalizers) does not leave nginx holding the user's ports."""
    _need_nginx()
    repo = python_model_repository(tmp_path / "repo")
    pid_file = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from build_tools.server import ServerOptions, TritonServer
        from build_tools.spec import ProxySpec
        s = TritonServer(ServerOptions([Path({str(repo)!r})], workdir=Path({str(tmp_path / 'work')!r}),
                                       front_proxy=ProxySpec(), heal=False))
        s.start()
        Path({str(pid_file)!r}).write_text(f"{{s.proxy.process.pid}} {{s.process.pid}} {{s.front_http_port}}")
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert parent.poll() is None, "the harness died before the server started"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
    nginx_pid, server_pid, port = (int(v) for v in pid_file.read_text().split())
    assert port in _listeners()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while (Path(f"/proc/{nginx_pid}").exists() or Path(f"/proc/{server_pid}").exists() or port in _listeners()) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert port not in _listeners(), "nginx outlived the harness that started it"
    assert not Path(f"/proc/{server_pid}").exists()
