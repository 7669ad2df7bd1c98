"""`triton-repo verify` against the real embedded server (the session's `embedded_server` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_tools.cli import main
from build_tools.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.server


@pytest.fixture(autouse=True)
def admin_key(embedded_server: TritonServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # verify reads the repository index, a restricted API: the operator gives it the key.
    monkeypatch.setenv("TRITON_ADMIN_KEY", embedded_server.admin_key)


def _project_repository(server: TritonServer) -> Path:
    # The fixture serves the project's embedded repository first (then the test models' repository).
    return Path(server.options.model_repositories[0])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_verify_exits_zero_when_the_server_matches_the_spec(
    embedded_server: TritonServer, protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = embedded_server.http_url if protocol == "http" else embedded_server.grpc_url
    repo = _project_repository(embedded_server)
    rc = main(["verify", "--url", url, "--protocol", protocol, "--repository", str(repo),
               "--spec", str(ROOT / "deploy.yaml")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "ok   server: Triton 2.51.0, as the spec expects for tritonserver:24.10-py3" in out
    assert "ok   model mnist_classifier v1: READY" in out
    assert out.endswith("verify: OK\n")


def test_verify_exits_non_zero_when_the_spec_targets_another_server_version(
    embedded_server: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "deploy.yaml"
    spec.write_text(
        'triton: {release: "24.12", server_version: "2.53.0", tensorrt_version: "10.7.0"}\n'
        "models: {m: {source: m.onnx}}\n"
    )
    rc = main(["verify", "--url", embedded_server.http_url, "--repository", str(_project_repository(embedded_server)),
               "--spec", str(spec)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL server: Triton 2.51.0 is running, the spec targets 2.53.0" in out
    assert "verify: FAILED (1 problem(s))" in out


def test_verify_exits_non_zero_when_a_repository_model_is_not_served(
    embedded_server: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    (repo / "not_served").mkdir(parents=True)
    (repo / "not_served" / "config.pbtxt").write_text('name: "not_served"\n')
    rc = main(["verify", "--url", embedded_server.http_url, "--repository", str(repo),
               "--spec", str(ROOT / "deploy.yaml")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL model not_served: in the repository but unknown to the server" in out


def test_verify_fails_with_a_client_error_when_nothing_listens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["verify", "--url", f"127.0.0.1:{free_port()}", "--repository", str(tmp_path),
               "--spec", str(ROOT / "deploy.yaml")])
    assert rc == 1
    assert "cannot reach the server" in capsys.readouterr().err


def test_verify_checks_the_embedded_repository_when_the_server_serves_it(
    embedded_server: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16 (7): verify against `make serve` checked the ngc repository and failed on the TensorRT model.

    No --repository: as a user runs it, with the spec's flavors; the spec here points the embedded
    flavor at what the session server serves and the ngc flavor at the committed ngc repository.
    """
    import yaml

    spec = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    spec["flavors"] = {
        "ngc": {"output": str(ROOT / "model_repository")},
        "embedded": {"output": str(_project_repository(embedded_server))},
    }
    (tmp_path / "models").symlink_to(ROOT / "models")  # the spec's relative paths all lie under models/
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc = main(["verify", "--url", embedded_server.http_url, "--spec", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"against {_project_repository(embedded_server)} (embedded flavor)" in out
    assert "mnist_classifier_trt" not in out
    assert out.endswith("verify: OK\n")


def test_verify_fails_naming_the_key_when_repository_index_is_restricted(
    embedded_server: TritonServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TRITON_ADMIN_KEY")
    rc = main(["verify", "--url", embedded_server.http_url, "--repository", str(_project_repository(embedded_server)),
               "--spec", str(ROOT / "deploy.yaml")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "restricted" in err and "TRITON_ADMIN_KEY" in err, err
