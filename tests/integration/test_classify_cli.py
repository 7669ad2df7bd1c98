"""`triton-classify` against the real server, run as users run it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from build_tools.server import TritonServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "models" / "mnist" / "examples"

pytestmark = pytest.mark.server


def _classify(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(Path(sys.executable).with_name("triton-classify")), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_classify_exits_2_naming_the_class_count_when_top_k_exceeds_it(embedded_server: TritonServer) -> None:
    """Issue 16 (4): --top-k 20 raised a ValueError from a reshape."""
    result = _classify("--url", embedded_server.http_url, "--top-k", "20", str(EXAMPLES / "digit_7.png"))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        "triton-classify: error: --top-k 20 is more than the 10 classes of mnist's output 'probabilities'; use 1..10"
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classify_prints_every_class_when_top_k_equals_class_count(
    embedded_server: TritonServer, protocol: str
) -> None:
    url = embedded_server.http_url if protocol == "http" else f"grpc://{embedded_server.grpc_url}"
    result = _classify("--protocol", protocol, "--url", url, "--top-k", "10",
                       str(EXAMPLES / "digit_7.png"), str(EXAMPLES / "photo_3.jpg"))
    assert result.returncode == 0, result.stderr
    seven, three = result.stdout.strip().splitlines()
    assert seven.startswith("digit_7.png: 7 (") and seven.count("(") == 10
    assert three.startswith("photo_3.jpg: 3 (") and three.count("(") == 10


def test_classify_accepts_http_scheme_when_url_has_one(embedded_server: TritonServer) -> None:
    """Issue 16 (4): --url http://... printed an error plus tritonclient's __del__ AttributeError."""
    result = _classify("--url", f"http://{embedded_server.http_url}", str(EXAMPLES / "digit_3.png"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digit_3.png: 3 (")
    assert result.stderr == ""
