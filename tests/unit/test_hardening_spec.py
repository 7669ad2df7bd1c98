"""Issue 17 without a server: the spec's `server:` and `range` settings, the generated config, the
harness's command line and the watchdog's reading of stub processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_tools.errors import SpecError
from build_tools.healer import Healer, ModelHealth, parse_stub_cmdline
from build_tools.repository import lint_or_raise, plan_flavor
from build_tools.server import ServerOptions, TritonServer, env_admin_headers, find_distribution
from build_tools.spec import DEFAULT_RESTRICTED_APIS, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def _spec_with(**server: object) -> dict:
    return {"models": {"m": {"kind": "python", "source": "m", "inputs": [], "outputs": []}}, "server": server}


def test_server_spec_defaults_restrict_operator_apis_when_not_given() -> None:
    spec = load_spec(ROOT / "deploy.yaml")
    assert tuple(spec.server.admin_api.restricted) == DEFAULT_RESTRICTED_APIS
    assert {"shared-memory", "logging", "model-repository"} <= set(DEFAULT_RESTRICTED_APIS)
    assert not {"inference", "health", "metadata"} & set(DEFAULT_RESTRICTED_APIS)
    assert spec.server.healer.enabled and spec.server.exit_timeout_s == 30


@pytest.mark.parametrize(("server", "field", "words"), [
    ({"admin_api": {"restricted": ["shm"]}}, "server.admin_api.restricted[0]", ["'shared-memory'", "'shm'"]),
    ({"admin_api": {"header": "bad header!"}}, "server.admin_api.header", ["plain header name"]),
    ({"exit_timeout_s": -1}, "server.exit_timeout_s", ["greater than or equal to 0"]),
    ({"healer": {"interval": 1}}, "server.healer.interval", ["unknown key", "interval_s"]),
])
def test_spec_error_names_field_when_server_setting_wrong(server: dict, field: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_spec_with(**server))
    assert err.value.field == field, str(err.value)
    for w in words:
        assert w in str(err.value)


def test_spec_error_names_range_when_low_above_high() -> None:
    data = {"models": {"c": {"source": "c.onnx", "inputs": {"x": {"range": [255, 0]}}}}}
    with pytest.raises(SpecError, match=r"models.c.inputs.x.range: expected \[low, high\] with low <= high"):
        parse_spec(data)


def test_runner_config_carries_input_range_when_spec_declares_it() -> None:
    spec = load_spec(ROOT / "deploy.yaml")
    embedded = plan_flavor(spec, "embedded", lint_or_raise(spec))
    cfg = next(f for f in embedded.models if f.name == "mnist_classifier").config
    assert cfg.parameters["input_range.image"].string_value == "0.0,255.0"
    ngc = plan_flavor(spec, "ngc", lint_or_raise(spec))
    assert "input_range.image" not in next(f for f in ngc.models if f.name == "mnist_classifier").config.parameters
    # No warmup may send values the range check refuses (Triton 2.51 crashes on a failed warmup).
    assert all(not w.inputs["image"].random_data for w in cfg.model_warmup)


def test_server_command_restricts_apis_on_both_protocols_when_options_default(tmp_path: Path) -> None:
    server = TritonServer(ServerOptions([tmp_path], admin_key="k3y"))
    cmd = server._command(find_distribution(), tmp_path)
    groups = ",".join(DEFAULT_RESTRICTED_APIS)
    assert f"--http-restricted-api={groups}:triton-admin-key=k3y" in cmd
    assert f"--grpc-restricted-protocol={groups}:triton-admin-key=k3y" in cmd
    assert "--exit-timeout-secs=30" in cmd
    assert server.admin_headers == {"triton-admin-key": "k3y"}
    assert server.grpc_admin_headers == {"triton-grpc-protocol-triton-admin-key": "k3y"}
    open_server = TritonServer(ServerOptions([tmp_path], restricted_apis=()))
    assert not any("restricted" in a for a in open_server._command(find_distribution(), tmp_path))
    assert open_server.admin_headers == {}



def test_cli_tools_send_the_admin_key_from_the_environment_when_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # triton-repo verify and the lifecycle verbs: the spec's header, the key from $TRITON_ADMIN_KEY,
    # the gRPC metadata name over gRPC; nothing when the variable is unset or empty.
    monkeypatch.setenv("TRITON_ADMIN_KEY", "k3y")
    assert env_admin_headers("triton-admin-key", "http") == {"triton-admin-key": "k3y"}
    assert env_admin_headers("x-ops", "grpc") == {"triton-grpc-protocol-x-ops": "k3y"}
    monkeypatch.setenv("TRITON_ADMIN_KEY", "")
    assert env_admin_headers("triton-admin-key", "http") is None
    monkeypatch.delenv("TRITON_ADMIN_KEY")
    assert env_admin_headers("triton-admin-key", "grpc") is None

def test_server_options_follow_spec_when_built_from_it(tmp_path: Path) -> None:
    spec = parse_spec(_spec_with(admin_api={"header": "X-Ops", "restricted": ["logging"]}, exit_timeout_s=3,
                                 healer={"enabled": False}))
    options = ServerOptions.from_spec(spec.server, model_repositories=[tmp_path])
    assert options.restricted_apis == ("logging",) and options.admin_header == "x-ops"
    assert options.exit_timeout_s == 3 and options.heal is False


def test_stub_cmdline_parsed_when_python_backend_starts_stub() -> None:
    argv = ["/w/backends/python/triton_python_backend_stub", "/repo/mnist_preprocess/1/model.py",
            "triton_python_backend_shm_region_2a6b", "1048576", "1048576", "30146", "/w/backends/python", "336",
            "mnist_preprocess_0_0", "DEFAULT", ""]
    region = "triton_python_backend_shm_region_2a6b"
    assert parse_stub_cmdline(argv) == ("mnist_preprocess", "mnist_preprocess_0_0", region)
    assert parse_stub_cmdline(["/usr/bin/python3", "x.py"]) is None


def test_healer_gives_up_and_reports_when_model_keeps_dying() -> None:
    reloads: list[str] = []
    healer = Healer(lambda: None, lambda m: reloads.append(m) or True, lambda: None, max_heals_per_10min=2)
    healer.models["m"] = ModelHealth({"m_0_0"})
    for _ in range(4):
        healer._heal("m", ["m_0_0"])
    # No stub came back (there is no server): each reload counts as failed, then the limit stops them.
    assert reloads == ["m", "m"]
    assert "m" in healer.unhealthy() and not healer.healthy()
    assert 'tdk_healer_model_unhealthy{model="m"} 1' in healer.metrics_text()
    assert 'tdk_healer_stub_heals_total{model="m"} 0' in healer.metrics_text()
    assert sum("reload failed" in e for e in healer.events) == 2
    assert sum("not healed (limit of 2 heals" in e for e in healer.events) == 1


def test_server_log_rotates_when_above_max_bytes(tmp_path: Path) -> None:
    import io

    from build_tools.logrotate import RotatingLog

    lines = b"".join(f"line {i:04d} {'x' * 40}\n".encode() for i in range(1000))  # about 50 KB
    log = RotatingLog(io.BytesIO(lines), tmp_path / "server.log", max_bytes=10_000, backups=2)
    log.join()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["server.log", "server.log.1", "server.log.2"]
    assert all((tmp_path / f).stat().st_size <= 10_000 for f in files)
    assert (tmp_path / "server.log").read_bytes().endswith(b"line 0999 " + b"x" * 40 + b"\n")
    assert log.rotations >= 4
