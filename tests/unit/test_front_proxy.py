"""The front proxy's configuration (build_tools/proxy.py) and the linter's request-size check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from build_tools.lint import lint_spec
from build_tools.proxy import (
    CHECK_SCRIPT,
    GENERATE_PATH,
    GRPC_METHODS,
    GRPC_SERVICE,
    HEADER_MARGIN_BYTES,
    HTTP_PATHS,
    INFER_PATH,
    NJS_MISSING,
    ProxyAddresses,
    check_conf,
    largest_request_bytes,
    nginx_binary,
    nginx_conf,
    njs_module,
    write_conf,
)
from build_tools.spec import DEFAULT_RESTRICTED_APIS, DeploySpec, ProxySpec, ServerSpec
from tests.support.tools import tool_missing

WHERE = ProxyAddresses("127.0.0.1:18080", "127.0.0.1:18081", "127.0.0.1:8000", "127.0.0.1:8001")


def test_largest_request_counts_full_batch_when_inputs_fixed(project_spec: DeploySpec) -> None:
    sizes = largest_request_bytes(project_spec)
    # mnist_classifier: 256 images of 1x28x28 FP32; mnist_preprocess: one element at its 4 MiB budget.
    assert sizes["mnist_classifier"] == 256 * 28 * 28 * 4 + HEADER_MARGIN_BYTES
    assert sizes["mnist_preprocess"] == 4 * 1024 * 1024 + 4 + HEADER_MARGIN_BYTES


def test_lint_names_request_limit_when_largest_request_does_not_fit(project_spec: DeploySpec) -> None:
    small = project_spec.model_copy(update={"server": ServerSpec(proxy=ProxySpec(max_request_mib=1))})
    findings, _ = lint_spec(small)
    limit = [f for f in findings if f.startswith("server.proxy.max_request_mib")]
    assert len(limit) == 1, findings
    assert "models.mnist_preprocess" in limit[0] and "at least 5" in limit[0]
    assert not [f for f in lint_spec(project_spec)[0] if f.startswith("server.proxy")]


def test_nginx_conf_refuses_every_restricted_group_when_groups_restricted() -> None:
    conf = nginx_conf(ProxySpec(max_request_mib=16), list(DEFAULT_RESTRICTED_APIS), WHERE, Path("/state"))
    assert "client_max_body_size 16m;" in conf
    assert "proxy_request_buffering on;" in conf
    for group in DEFAULT_RESTRICTED_APIS:
        for pattern in HTTP_PATHS[group]:
            assert pattern.replace("\\", "\\\\") in conf, (group, pattern)
        for method in GRPC_METHODS[group]:
            assert f"location = /{GRPC_SERVICE}/{method} {{ return 403; }}" in conf
    # model-config is open by default: its path is not refused.
    assert "/config$" not in conf and "/ModelConfig " not in conf


@pytest.mark.parametrize(("path", "group"), [
    ("/v2/systemsharedmemory/region/x/register", "shared-memory"),
    ("/v2/cudasharedmemory/status", "shared-memory"),
    ("/v2/repository/index", "model-repository"),
    ("/v2/repository/models/mnist/load", "model-repository"),
    ("/v2/models/stats", "statistics"),
    ("/v2/models/mnist/versions/1/stats", "statistics"),
    ("/v2/trace/setting", "trace"),
    ("/v2/models/mnist/trace/setting", "trace"),
    ("/v2/logging", "logging"),
    ("/v2/models/mnist/config", "model-config"),
])
def test_restricted_path_patterns_match_when_path_of_their_group(path: str, group: str) -> None:
    matched = {g for g, patterns in HTTP_PATHS.items() for p in patterns if re.search(p, path)}
    assert matched == {group}


@pytest.mark.parametrize("path", ["/v2/models/mnist/infer", "/v2/models/mnist", "/v2/health/ready", "/v2",
                                  "/v2/models/stats_model/infer", "/v2/models/mnist/versions/1/infer"])
def test_restricted_path_patterns_pass_when_path_open(path: str) -> None:
    assert not [p for patterns in HTTP_PATHS.values() for p in patterns if re.search(p, path)]


def test_nginx_accepts_conf_when_written_from_spec(project_spec: DeploySpec, tmp_path: Path) -> None:
    nginx = nginx_binary()
    if nginx is None:
        tool_missing("nginx is not installed (Debian package nginx): the front proxy needs it")
    server = project_spec.server
    path = write_conf(nginx_conf(server.proxy, list(server.admin_api.restricted), WHERE, tmp_path), tmp_path)
    check_conf(nginx, path)  # raises with nginx's own message when it refuses


MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")


def test_nginx_conf_checks_inference_json_when_njs_module_given() -> None:
    conf = nginx_conf(ProxySpec(), list(DEFAULT_RESTRICTED_APIS), WHERE, Path("/state"), njs_module=MODULE)
    assert conf.startswith("# Written") and f"load_module {MODULE};" in conf.splitlines()[1]
    assert f"js_import infer_check from /state/{CHECK_SCRIPT.name};" in conf
    assert f"location ~ {_quoted(INFER_PATH)} {{ js_content infer_check.infer; }}" in conf
    assert f"location ~ {_quoted(GENERATE_PATH)} {{ js_content infer_check.generate; }}" in conf
    # What passes the check goes on through @triton, with the same buffering as every other request.
    triton = conf[conf.index("location @triton {"):]
    assert "proxy_pass http://triton_http;" in triton and "proxy_request_buffering on;" in triton


def test_nginx_conf_leaves_json_to_triton_when_no_njs_module_or_check_off() -> None:
    for conf in (nginx_conf(ProxySpec(), [], WHERE, Path("/state")),
                 nginx_conf(ProxySpec(check_json=False), [], WHERE, Path("/state"), njs_module=MODULE)):
        assert "load_module" not in conf and "js_" not in conf and "@triton" not in conf


def test_nginx_conf_passes_restricted_groups_to_triton_when_asked() -> None:
    conf = nginx_conf(ProxySpec(), list(DEFAULT_RESTRICTED_APIS), WHERE, Path("/state"), pass_restricted=True)
    assert "return 403" not in conf


@pytest.mark.parametrize(("path", "checked"), [
    ("/v2/models/mnist/infer", True), ("/v2/models/mnist/versions/2/infer", True),
    ("/v2/models/mnist/inferx", False), ("/v2/models/mnist/ready", False), ("/v2/models/mnist", False),
])
def test_infer_path_pattern_matches_when_path_is_inference(path: str, checked: bool) -> None:
    assert bool(re.search(INFER_PATH, path)) is checked


def test_nginx_accepts_conf_with_json_check_when_njs_installed(project_spec: DeploySpec, tmp_path: Path) -> None:
    nginx = nginx_binary()
    module = njs_module(nginx) if nginx else None
    if nginx is None or module is None:
        tool_missing(NJS_MISSING)
    server = project_spec.server
    path = write_conf(nginx_conf(server.proxy, list(server.admin_api.restricted), WHERE, tmp_path,
                                 njs_module=module), tmp_path)
    assert (tmp_path / CHECK_SCRIPT.name).read_text() == CHECK_SCRIPT.read_text()
    check_conf(nginx, path)  # nginx loads the module and compiles the script, or says why not


def _quoted(pattern: str) -> str:
    return '"' + pattern.replace("\\", "\\\\") + '"'
