"""Every console script keeps one error contract (build_tools/console.py), run as users run them.

A failure: exactly one line on stderr, ``PROG: error: ...``, exit code 1; a usage mistake: one line,
exit code 2; no traceback unless --verbose; --version and --help (with defaults) on every script.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from build_tools.server import free_port

ROOT = Path(__file__).resolve().parents[2]
# The project's console scripts as installed (pyproject.toml's [project.scripts]).
SCRIPTS = sorted(
    ep.name for ep in metadata.entry_points(group="console_scripts")
    if ep.dist is not None and ep.dist.name == "triton-deploy-kit"
)
DIGIT = str(ROOT / "models/mnist/examples/digit_7.png")


def _script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable}; run `make install`")
    return str(path)


def _run(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_script(name), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _closed_port() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def _assert_one_line(result: subprocess.CompletedProcess[str], prog: str, code: int, *words: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    # a subcommand's usage error names it too: `triton-repo serve: error: ...`
    assert lines[0].startswith(prog) and ": error: " in lines[0], lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def test_console_scripts_are_the_documented_ones_when_pyproject_is_read() -> None:
    assert SCRIPTS == ["triton-classify", "triton-evaluate", "triton-evaluate-captures", "triton-monitor",
                       "triton-repo"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_prints_version_when_asked(name: str) -> None:
    result = _run(name, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{name} 0."), result.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_help_shows_defaults_when_asked(name: str) -> None:
    # options live on subcommands
    result = _run(name, *(["serve"] if name in ("triton-repo", "triton-monitor") else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "(default: " in result.stdout
    assert "--verbose" in result.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_exits_2_with_one_line_when_flag_is_unknown(name: str) -> None:
    valid = {"triton-repo": ["lint"], "triton-classify": [DIGIT], "triton-monitor": ["status"]}.get(name, [])
    _assert_one_line(_run(name, *valid, "--no-such-flag"), name, 2, "--no-such-flag")


# (script, arguments, exit code, words the line must hold): the common failures.
CASES = [
    # no server / wrong port
    ("triton-classify", ["--url", "{closed}", DIGIT], 1, ["cannot reach", "make serve"]),
    ("triton-classify", ["--protocol", "grpc", "--url", "{closed}", DIGIT], 1, ["cannot reach", "grpc"]),
    ("triton-evaluate", ["--http-url", "{closed}", "--protocol", "http", "--limit", "16", "--no-progress"], 1,
     ["cannot reach", "make serve"]),
    ("triton-evaluate", ["--grpc-url", "{closed}", "--protocol", "grpc", "--limit", "16", "--no-progress"], 1,
     ["cannot reach"]),
    ("triton-repo", ["verify", "--url", "{closed}"], 1, ["cannot reach"]),
    # wrong URL form: a scheme is accepted (no tritonclient __del__ noise), a path or a bad port is not
    ("triton-classify", ["--url", "http://{closed}", DIGIT], 1, ["cannot reach"]),
    ("triton-classify", ["--url", "http://127.0.0.1:8000/v2/models", DIGIT], 2, ["--url", "path"]),
    ("triton-classify", ["--url", "127.0.0.1:http", DIGIT], 2, ["--url", "port"]),
    ("triton-classify", ["--protocol", "grpc", "--url", "http://127.0.0.1:8000", DIGIT], 2, ["--protocol"]),
    ("triton-evaluate", ["--http-url", "https://127.0.0.1:8000", "--limit", "4"], 2, ["--http-url", "TLS"]),
    ("triton-repo", ["verify", "--url", "127.0.0.1:99999"], 2, ["--url"]),
    ("triton-evaluate-captures", ["--http-url", "{closed}", "--per-class", "2"], 1, ["cannot reach"]),
    ("triton-evaluate-captures", ["--http-url", "http://127.0.0.1:8000/x"], 2, ["--http-url", "path"]),
    ("triton-evaluate-captures", ["--batch-size", "0"], 2, ["--batch-size"]),
    # bad files
    ("triton-classify", ["--url", "{closed}", "no/such/image.png"], 1, ["not found", "no/such/image.png"]),
    ("triton-evaluate", ["--onnx", "no/such/model.onnx", "--limit", "4", "--no-progress"], 1,
     ["no/such/model.onnx"]),
    ("triton-repo", ["lint", "--spec", "no/such/deploy.yaml"], 1, ["no/such/deploy.yaml"]),
    ("triton-repo", ["serve", "--model-repository", "no/such/repository"], 1, ["no/such/repository"]),
    # bad flag values
    ("triton-classify", ["--top-k", "0", DIGIT], 2, ["--top-k"]),
    ("triton-classify", ["--top-k", "three", DIGIT], 2, ["--top-k"]),
    ("triton-classify", ["--protocol", "udp", DIGIT], 2, ["--protocol"]),
    ("triton-evaluate", ["--batch-size", "0"], 2, ["--batch-size"]),
    ("triton-evaluate", ["--concurrency", "-1"], 2, ["--concurrency"]),
    ("triton-repo", ["serve", "--http-port", "70000"], 2, ["--http-port"]),
    ("triton-repo", ["serve", "--timeout", "0"], 2, ["--timeout"]),
    ("triton-repo", ["build-repo", "--flavor", "nope"], 2, ["--flavor"]),
    # the drift monitor
    ("triton-monitor", ["serve", "--port", "70000"], 2, ["--port"]),
    ("triton-monitor", ["status", "--db", "mysql://x/y"], 1, ["mysql://x/y", "sqlite:///PATH"]),
    ("triton-monitor", ["import-labels", "no/such/labels.csv", "--db", "sqlite:///:memory:"], 1,
     ["no/such/labels.csv", "cannot read"]),
    ("triton-monitor", ["import-labels", "labels.txt", "--db", "sqlite:///:memory:"], 1, ["expected .csv or .jsonl"]),
]


@pytest.mark.parametrize(("name", "args", "code", "words"), CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_console_script_fails_with_one_line_when_common_mistake_is_made(
    name: str, args: list[str], code: int, words: list[str]
) -> None:
    closed = _closed_port()
    result = _run(name, *[a.replace("{closed}", closed) for a in args])
    _assert_one_line(result, name, code, *words)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_console_script_shows_traceback_when_verbose_and_failing() -> None:
    result = _run("triton-classify", "--verbose", "--url", _closed_port(), DIGIT)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("triton-classify: error: cannot reach")
