"""The server harness fails fast with the log, never leaves a process behind, and refuses busy ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from build_tools.errors import ServerError
from build_tools.server import ServerOptions, TritonServer
from tests.support import serve_cli
from tests.support.python_models import CRASH_ON_UNLOAD, python_model_repository

pytestmark = pytest.mark.server

BROKEN_MODEL = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        raise pb_utils.TritonModelException("broken on purpose: weights missing")

    def execute(self, requests):
        return []
'''

BROKEN_CONFIG = '''
name: "broken"
backend: "python"
max_batch_size: 0
input { name: "x" data_type: TYPE_FP32 dims: [1] }
output { name: "y" data_type: TYPE_FP32 dims: [1] }
instance_group { kind: KIND_CPU count: 1 }
'''


def _broken_repo(root: Path) -> Path:
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "config.pbtxt").write_text(BROKEN_CONFIG)
    (root / "broken" / "1" / "model.py").write_text(BROKEN_MODEL)
    return root


def _process_group(pgid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_start_fails_fast_with_log_tail_when_model_cannot_load(tmp_path: Path) -> None:
    server = TritonServer(ServerOptions([_broken_repo(tmp_path / "repo")], log_file=tmp_path / "log.txt",
                                        startup_timeout_s=120))
    started = time.monotonic()
    with pytest.raises(ServerError) as err:
        server.start()
    assert time.monotonic() - started < 60, "did not fail fast"
    message = str(err.value)
    assert "broken on purpose" in message  # the log tail names the cause
    assert server.process is None


def test_start_refused_when_port_already_in_use(tmp_path: Path, test_repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer(ServerOptions([test_repository], http_port=port, log_file=tmp_path / "log.txt"))
        with pytest.raises(ServerError, match=f"http port {port} is already in use"):
            server.start()


def test_stop_leaves_no_process_when_server_stopped(tmp_path: Path, test_repository: Path) -> None:
    server = TritonServer(ServerOptions([test_repository], log_file=tmp_path / "log.txt"))
    server.start()
    assert server.process is not None
    pid = server.process.pid
    group = _process_group(pid)
    assert len(group) > 1, "expected the Python-backend stubs in the server's process group"
    assert server.stop() == 0  # SIGINT is a clean shutdown
    time.sleep(0.5)
    assert not [p for p in group if _alive(p)]


def test_server_dies_with_parent_when_parent_killed(tmp_path: Path, test_repository: Path) -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed test run (no finalizers) still takes its server down."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from build_tools.server import ServerOptions, TritonServer
        s = TritonServer(ServerOptions([Path({str(test_repository)!r})], log_file=Path({str(tmp_path / 'log.txt')!r})))
        s.start()
        Path({str(pid_file)!r}).write_text(str(s.process.pid))
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert parent.poll() is None, "parent died before the server started"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)
    server_pid = int(pid_file.read_text())
    group = _process_group(server_pid)
    assert server_pid in group and len(group) > 1  # the server and its Python-backend stubs
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in group) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in group if _alive(p)], "server or stubs outlived their parent"


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    rc, err, _ = serve_cli.stop(proc)
    return rc, err


def test_serve_restarts_on_same_ports_when_previous_server_left_connections_in_time_wait(tmp_path: Path) -> None:
    """Issue 16 (1): serve, one request, Ctrl-C, serve again on the same ports at once.

    The server closes its side of the readiness checks' and the request's connections first, so the
    port keeps sockets in TIME_WAIT for a minute after it stops; the port pre-check must not count them.
    """
    import urllib.request

    from build_tools.server import free_port

    repo = python_model_repository(tmp_path / "repo")
    ports = [str(free_port()) for _ in range(3)]
    flags = ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    first = serve_cli.serve(tmp_path, repo, *flags)
    serve_cli.wait_banner(first)
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
    rc, err = _stop(first)
    assert rc == 0, err
    second = serve_cli.serve(tmp_path, repo, *flags)
    try:
        serve_cli.wait_banner(second)
    finally:
        rc, err = _stop(second)
    assert rc == 0, err


def test_serve_runs_two_servers_when_they_share_the_default_work_folder(tmp_path: Path) -> None:
    """Issue 16 (2): a second server copying the stub over the running one's died with ETXTBSY."""
    repo = python_model_repository(tmp_path / "repo")
    first = serve_cli.serve(tmp_path, repo, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                            "--log-file", str(tmp_path / "first.log"))
    try:
        serve_cli.wait_banner(first)
        second = serve_cli.serve(tmp_path, repo, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                             "--log-file", str(tmp_path / "second.log"))
        try:
            banner = serve_cli.wait_banner(second)
        finally:
            rc, err = _stop(second)
        assert "Triton is ready" in banner
        assert rc == 0, err
        assert (tmp_path / "build" / "serve" / "backends" / "python" / "triton_python_backend_stub").is_file()
    finally:
        rc, err = _stop(first)
    assert rc == 0, err


def test_serve_exits_1_with_one_line_when_server_crashes_while_unloading(tmp_path: Path) -> None:
    """Issue 16 (3): a server that crashed during unload was logged at INFO and serve returned 0."""
    repo = python_model_repository(tmp_path / "repo", "crash_on_unload", CRASH_ON_UNLOAD)
    proc = serve_cli.serve(tmp_path, repo, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    serve_cli.wait_banner(proc)
    rc, err = _stop(proc)
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("triton-repo: error: tritonserver ")
    assert "SIGSEGV" in lines[0] or "exited with code" in lines[0], lines[0]


def test_stop_reports_crash_when_server_dies_from_a_signal(tmp_path: Path) -> None:
    repo = python_model_repository(tmp_path / "repo", "crash_on_unload", CRASH_ON_UNLOAD)
    server = TritonServer(ServerOptions([repo], log_file=tmp_path / "log.txt"))
    with pytest.raises(ServerError, match=r"tritonserver (crashed|exited)"), server:
        pass
    assert server.exit_problem
