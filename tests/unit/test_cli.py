"""The CLI prints one line on stderr and exits non-zero for every ToolkitError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.onnx_models import fixed_batch
from tests.support.tools import tool_missing

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "build_tools.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("triton-repo: error:")]


def test_cli_exits_nonzero_with_one_line_when_spec_has_unknown_key(tmp_path: Path) -> None:
    (tmp_path / "deploy.yaml").write_text("models:\n  m: {source: m.onnx, max_batchsize: 8}\n")
    result = _run("build-repo", cwd=tmp_path)
    assert result.returncode == 1
    (line,) = _error_lines(result.stderr)
    assert "models.m.max_batchsize: unknown key" in line
    assert "Traceback" not in result.stderr


def test_cli_reports_lint_findings_when_batch_fixed(tmp_path: Path) -> None:
    fixed_batch(tmp_path / "fixed.onnx")
    (tmp_path / "deploy.yaml").write_text(
        "flavors: {embedded: {output: out}}\nmodels:\n  fixed: {source: fixed.onnx, max_batch_size: 8}\n")
    result = _run("build-repo", cwd=tmp_path)
    assert result.returncode == 1
    (line,) = _error_lines(result.stderr)
    assert "models.fixed.inputs.x" in line and "dynamic_axes" in line
    assert not (tmp_path / "out").exists()


def test_cli_builds_both_flavors_when_spec_valid(tmp_path: Path) -> None:
    fixed_batch(tmp_path / "fixed.onnx")
    (tmp_path / "deploy.yaml").write_text(
        "flavors: {embedded: {output: e}, ngc: {output: n}}\nmodels:\n  fixed: {source: fixed.onnx}\n")
    result = _run("build-repo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "e" / "fixed" / "config.pbtxt").is_file()
    assert (tmp_path / "n" / "fixed" / "config.pbtxt").is_file()
    assert _run("build-repo", "--check", cwd=tmp_path).returncode == 0


def test_cli_serve_fails_with_one_line_when_repository_missing(tmp_path: Path) -> None:
    result = _run("serve", "--model-repository", str(tmp_path / "nothing"), "--http-port", "0", cwd=tmp_path)
    assert result.returncode == 1
    (line,) = _error_lines(result.stderr)
    assert "does not exist" in line and "make build-repo" in line


def test_cli_warns_but_builds_when_embedded_model_sets_queue_policy(tmp_path: Path) -> None:
    from tests.support.onnx_models import classifier

    classifier(tmp_path / "clf.onnx")
    (tmp_path / "deploy.yaml").write_text(
        "flavors: {embedded: {output: e}}\nmodels:\n"
        "  clf: {source: clf.onnx, max_batch_size: 8, dynamic_batching: {max_queue_size: 4}}\n")
    result = _run("build-repo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("triton-repo: warning:")]
    assert len(warnings) == 1 and "models.clf.dynamic_batching: max_queue_size: 4" in warnings[0], result.stderr
    assert (tmp_path / "e" / "clf" / "config.pbtxt").is_file()


def test_serve_warns_in_one_line_and_goes_without_proxy_when_nginx_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from build_tools import cli, proxy
    from build_tools.spec import ServerSpec

    monkeypatch.setattr(proxy, "nginx_binary", lambda: None)
    assert cli._front_proxy(cli.build_parser().parse_args(["serve"]), ServerSpec()) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("triton-repo: warning: nginx is not installed") and "--no-proxy" in err
    # Asked for: no proxy and nothing to warn about.
    assert cli._front_proxy(cli.build_parser().parse_args(["serve", "--no-proxy"]), ServerSpec()) is None
    assert capsys.readouterr().err == ""


def test_serve_takes_spec_proxy_when_nginx_installed() -> None:
    from build_tools import cli, proxy
    from build_tools.spec import ProxySpec, ServerSpec

    if proxy.nginx_binary() is None:
        tool_missing("nginx is not installed (Debian package nginx)")
    spec = ServerSpec(proxy=ProxySpec(max_request_mib=32))
    assert cli._front_proxy(cli.build_parser().parse_args(["serve"]), spec) == spec.proxy
