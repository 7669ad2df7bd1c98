"""loadtest.wrk's measurement: the real wrk with the module's Lua script, against a local HTTP server."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from loadtest import wrk


class _SlowEveryFifth(BaseHTTPRequestHandler):
    """Answers POSTs; every fifth request waits 300 ms (a stall-like tail), the others answer at once."""

    count = 0
    lock = threading.Lock()
    bodies: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        with self.lock:
            type(self).count += 1
            n = type(self).count
            type(self).bodies.append((self.headers.get("Content-Type", ""),
                                      self.headers.get("Inference-Header-Content-Length", ""), body))
        if n % 5 == 0:
            time.sleep(0.3)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowEveryFifth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/models/m/infer"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian package `wrk`)")
def test_run_wrk_counts_requests_over_250ms_when_every_fifth_request_waits_300ms(
    slow_server: str, tmp_path: Path
) -> None:
    script = tmp_path / "report.lua"
    script.write_text(wrk.SCRIPT)
    body = tmp_path / "body.bin"
    body.write_bytes(b'{"inputs":[]}\x00\x01binary')
    requests, errors, p50_us, _, max_us, slow, duration_us = wrk.run_wrk(
        slow_server, (body, "application/octet-stream", "13"), 2, 2.0, script)
    assert errors == 0
    assert requests > 10
    # About one request in five waits 300 ms: the histogram's count lands near that share.
    assert 0.1 * requests <= slow <= 0.3 * requests, (slow, requests)
    assert max_us >= 300_000 and p50_us < 250_000
    assert duration_us > 1_500_000
    # The body went out byte for byte, with the binary-data header the ensemble needs.
    content_type, header_len, sent = _SlowEveryFifth.bodies[0]
    assert (content_type, header_len, sent) == ("application/octet-stream", "13", body.read_bytes())


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian package `wrk`)")
def test_run_wrk_reports_zero_slow_when_no_request_reaches_250ms(tmp_path: Path) -> None:
    class Fast(_SlowEveryFifth):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Fast)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = tmp_path / "report.lua"
        script.write_text(wrk.SCRIPT)
        body = tmp_path / "body.json"
        body.write_text("{}")
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        requests, errors, _, _, max_us, slow, _ = wrk.run_wrk(url, (body, "application/json", ""), 1, 1.0, script)
    finally:
        server.shutdown()
        server.server_close()
    assert requests > 0 and errors == 0
    assert slow == 0 and max_us < 250_000
