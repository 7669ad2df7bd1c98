"""The README's command blocks for Triton's own tools, run as pasted against the real server.

Only the addresses change: the README uses the `make serve` defaults (127.0.0.1:8000 HTTP,
127.0.0.1:8001 gRPC); the session's server listens on free ports.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from build_tools.server import TritonServer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.server


def readme_commands(section: str) -> list[str]:
    """The commands in the fenced blocks of a README section (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no section {section!r}"
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", match.group(1), re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def _as_pasted(command: str, server: TritonServer) -> list[str]:
    command = command.replace("127.0.0.1:8000", server.http_url).replace("127.0.0.1:8001", server.grpc_url)
    argv = shlex.split(command)
    if argv[0] == ".venv/bin/python":
        argv[0] = sys.executable
    elif argv[0].startswith(".venv/bin/"):
        argv[0] = str(Path(sys.executable).with_name(argv[0].rsplit("/", 1)[1]))
    return argv


def _top_labels(output: str) -> list[str]:
    """The first class line after each image in Triton's example clients' output: `score (index) = label`."""
    labels, take = [], True
    for line in output.splitlines():
        if line.startswith(('"', "Request ")):
            take = True
        elif take and (m := re.match(r"\s+[\d.e-]+ \((\d+)\) = (\S+)", line)):
            labels.append(m.group(2))
            take = False
    return labels


def _expected_labels(argv: list[str]) -> list[str]:
    target = ROOT / argv[-1]
    files = sorted(p.name for p in target.iterdir()) if target.is_dir() else [target.name]
    return [re.search(r"(\d)\.\w+$", name).group(1) for name in files]  # digit_7.png, photo_3.jpg


def test_readme_stock_client_commands_classify_every_example_when_run_as_pasted(
    embedded_server: TritonServer,
) -> None:
    """Issue 16 (9): Triton's image_client.py sent a photo to the classifier (it only resizes) and read an 8."""
    commands = readme_commands("Use Triton's own clients")
    assert any("ensemble_image_client.py" in c and "-m mnist " in c for c in commands)
    assert any("image_client.py" in c and "-m mnist_classifier" in c for c in commands)
    for command in commands:
        argv = _as_pasted(command, embedded_server)
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
        assert _top_labels(result.stdout) == _expected_labels(argv), f"{command}\n{result.stdout}"


def test_readme_perf_analyzer_commands_measure_every_model_when_run_as_pasted(embedded_server: TritonServer) -> None:
    """Issue 16 (6): a plain b64 PNG failed ("expecting string of length 1196314761"); the binary was not on PATH.

    The measurement is shortened and any window accepted (appended flags win): the runs take seconds,
    and a busy machine cannot fail them for stability.
    """
    from loadtest import perf

    binary = Path(sys.executable).with_name("perf_analyzer")
    if not binary.is_file():
        pytest.skip(f"perf_analyzer is not installed in the virtualenv; {perf.INSTALL_HINT}")
    commands = [c for c in readme_commands("perf_analyzer") if "perf_analyzer " in c]
    models = {shlex.split(c)[shlex.split(c).index("-m") + 1] for c in commands}
    assert models == {"mnist_classifier", "mnist", "mnist_preprocess"}
    for command in commands:
        # The README exports TRITON_ADMIN_KEY (the statistics API is restricted): here, the server's key.
        argv = [arg.replace("$TRITON_ADMIN_KEY", embedded_server.admin_key)
                for arg in _as_pasted(command, embedded_server)]
        argv += ["-p", "500", "-s", "1000", "-r", "3"]
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        assert "Throughput:" in result.stdout, result.stdout[-2000:]
