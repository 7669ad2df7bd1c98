"""What runs inside the serving image tritonserver:24.10-py3 (issue 18): its Python is 3.10, trtexec is
off PATH, the tensorrt module is absent; and the CPU image binds loopback unless told otherwise.

CI's Python 3.10 phase (.ci/run) installs the core as the repo-builder does and runs build-repo and the
plan step's tests on it; these tests check the same contract from the files themselves.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import stat
import sys
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from build_tools import cli
from build_tools.build import build_repositories
from build_tools.errors import PlanBuildError
from build_tools.spec import parse_spec
from build_tools.tensorrt import builder as builder_mod
from build_tools.tensorrt import hook as hook_mod
from build_tools.tensorrt import trtexec as trtexec_mod
from build_tools.tensorrt.backend import NoBuilderError
from build_tools.tensorrt.trtexec import TrtexecBackend
from tests.support.onnx_models import tiny_classifier

ROOT = Path(__file__).resolve().parents[2]
IMAGE_PYTHON = "3.10.12"  # what tritonserver:24.10-py3 ships
# What the repo-builder runs: the build tools and the Triton client layer `verify` uses.
CORE_PACKAGES = (ROOT / "build_tools", ROOT / "triton_api")

# Standard-library names that Python 3.10 lacks: (module, attribute) or (module, None) for a module.
NEW_IN_311: set[tuple[str, str | None]] = {
    ("datetime", "UTC"), ("tomllib", None), ("typing", "Self"), ("typing", "LiteralString"), ("typing", "Never"),
    ("typing", "assert_never"), ("typing", "reveal_type"), ("typing", "Required"), ("typing", "NotRequired"),
    ("enum", "StrEnum"), ("hashlib", "file_digest"), ("contextlib", "chdir"), ("asyncio", "TaskGroup"),
    ("asyncio", "timeout"), ("builtins", "ExceptionGroup"), ("operator", "call"), ("wsgiref", "types"),
}


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest itself depends on tomli there
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib or tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _marker_env(python: str) -> dict[str, str]:
    return {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python}


def test_pyproject_admits_the_serving_images_python_when_installing_the_core() -> None:
    project = _pyproject()
    assert SpecifierSet(project["requires-python"]).contains(IMAGE_PYTHON)
    for line in project["dependencies"]:
        req = Requirement(line)
        assert req.marker is None or isinstance(req.marker, Marker)
    # onnxruntime 1.32 has no Python 3.10 build: the core pins one that has.
    applicable = [
        Requirement(r) for r in project["dependencies"]
        if Requirement(r).marker is None or Requirement(r).marker.evaluate(_marker_env(IMAGE_PYTHON))
    ]
    ort = [r for r in applicable if r.name == "onnxruntime"]
    assert [str(r.specifier) for r in ort] == ["==1.23.2"]


def test_pyproject_core_holds_only_build_dependencies_when_extras_are_apart() -> None:
    project = _pyproject()
    core = {Requirement(r).name.lower() for r in project["dependencies"]}
    assert core == {"numpy", "pyyaml", "pydantic", "protobuf", "onnx", "onnxruntime", "tritonclient"}
    extras = project["optional-dependencies"]
    names = {k: {Requirement(r).name.lower() for r in v} for k, v in extras.items()}
    assert "nvidia-pytriton" in names["serve"]
    assert {"locust", "flask", "gunicorn"} <= names["loadtest"]
    assert "torch" in names["train"]
    # make install's dev environment still has everything.
    assert any(r.startswith("triton-deploy-kit[") and "serve" in r and "loadtest" in r for r in extras["dev"])


def _new_in_311_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in NEW_IN_311:
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [f"{path.name}:{node.lineno} from {node.module} import {a.name}"
                      for a in node.names if (node.module, a.name) in NEW_IN_311 or (node.module, None) in NEW_IN_311]
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if (a.name, None) in NEW_IN_311]
        elif isinstance(node, ast.Name) and ("builtins", node.id) in NEW_IN_311:
            found.append(f"{path.name}:{node.lineno} {node.id}")
    return found


def test_core_modules_use_no_python_311_names_when_scanned() -> None:
    paths = sorted(p for package in CORE_PACKAGES for p in package.rglob("*.py"))
    assert len(paths) > 20
    uses = [u for path in paths for u in _new_in_311_uses(path)]
    assert uses == []


def test_repo_builder_installs_the_core_with_its_dependencies_when_run_in_the_image() -> None:
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    service = compose["services"]["repo-builder"]
    script = "\n".join(service["command"])
    installs = re.findall(r"pip install[^\n]*", script)
    assert 'pip install --quiet "$$src"' in installs  # the core, with exactly its dependencies
    assert not any("--no-deps" in i or "[" in i for i in installs)


def test_repo_builder_requires_plans_and_never_installs_the_vendor_index_package_when_run_in_the_image() -> None:
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    service = compose["services"]["repo-builder"]
    script = "\n".join(service["command"])
    # The `tensorrt` package's setup downloads from NVIDIA's own index; the bindings wheel does not.
    assert not re.search(r"[\"\s]tensorrt==", script)
    assert "tensorrt-cu12-bindings==" in script
    assert service["environment"][hook_mod.REQUIRE_PLANS_ENV] == "${TRITON_REPO_REQUIRE_PLANS:-1}"


# --------------------------------------------------------------------------------------------------
# The plan builder as the image offers it


def _fake_image_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable at the image's trtexec location (moved into tmp_path), not on PATH."""
    binary = tmp_path / "usr-src-tensorrt-bin" / "trtexec"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv(trtexec_mod.TRTEXEC_ENV, raising=False)
    monkeypatch.setattr(trtexec_mod, "IMAGE_TRTEXEC_PATHS", (str(binary),))
    return binary


def test_locate_trtexec_finds_the_images_copy_when_it_is_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _fake_image_trtexec(tmp_path, monkeypatch)
    found = trtexec_mod.locate_trtexec()
    assert found is not None and found.path == str(binary)
    assert "not on PATH" in found.reason


def test_image_trtexec_paths_name_where_tritonserver_images_keep_it() -> None:
    assert "/usr/src/tensorrt/bin/trtexec" in trtexec_mod.IMAGE_TRTEXEC_PATHS


def test_select_backend_logs_trtexec_and_why_the_python_api_was_not_used_when_only_trtexec_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if any(builder_mod.importlib.util.find_spec(m) for m in builder_mod.TENSORRT_MODULES):
        pytest.skip("a TensorRT Python module is installed here; this test needs it absent")
    binary = _fake_image_trtexec(tmp_path, monkeypatch)
    monkeypatch.setenv(builder_mod.BUILDER_ENV, "auto")
    monkeypatch.setattr("build_tools.tensorrt.api.visible_gpu_count", lambda: 1)
    caplog.set_level(logging.INFO, logger="build_tools.tensorrt.builder")
    backend = builder_mod.select_backend()
    assert isinstance(backend, TrtexecBackend) and backend.binary == str(binary)
    assert (f"plan builder: trtexec at {binary} (where TensorRT's packages install it (not on PATH)); the Python "
            f"API was not used: neither of tensorrt, tensorrt_bindings is installed") in caplog.messages


def test_select_backend_reports_the_bindings_import_error_when_they_lack_their_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if builder_mod.importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("the tensorrt module is installed here; this test needs only the bindings")
    # The bindings-only wheel outside the image: its extension module cannot load libnvinfer.
    package = tmp_path / "site" / "tensorrt_bindings"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError('libnvinfer.so.10: cannot open shared object file: No such file or directory')\n"
    )
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setenv(builder_mod.BUILDER_ENV, "python")
    with pytest.raises(NoBuilderError, match=r"`import tensorrt_bindings` failed: libnvinfer\.so\.10: cannot open"):
        builder_mod.select_backend()
    sys.modules.pop("tensorrt_bindings", None)


def test_build_repositories_stops_when_plans_are_required_and_no_builder_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv(trtexec_mod.TRTEXEC_ENV, raising=False)
    monkeypatch.setattr(trtexec_mod, "IMAGE_TRTEXEC_PATHS", (str(empty / "trtexec"),))
    monkeypatch.setenv(builder_mod.BUILDER_ENV, "trtexec")
    monkeypatch.setenv(hook_mod.REQUIRE_PLANS_ENV, "1")
    tiny_classifier(tmp_path / "tiny.onnx")
    spec = parse_spec({
        "flavors": {"ngc": {"output": "model_repository"}},
        "models": {"tiny": {"source": "tiny.onnx", "formats": ["onnx", "tensorrt_plan"], "max_batch_size": 8,
                            "tensorrt": {"optional": True}}},
    }, base_dir=tmp_path)
    with pytest.raises(PlanBuildError, match=r"plan tiny_trt/1/model\.plan not built: no TensorRT Python API .*"
                                             r"TRITON_REPO_REQUIRE_PLANS=1, so build-repo stops"):
        build_repositories(spec, ["ngc"])
    assert not (tmp_path / "model_repository").exists()


# --------------------------------------------------------------------------------------------------
# Binds


def test_cpu_image_command_binds_no_wildcard_address_when_run_without_compose() -> None:
    text = (ROOT / "compose" / "Dockerfile.cpu").read_text().replace("\\\n", " ")
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))
    args = json.loads(cmd[len("CMD "):])
    assert "0.0.0.0" not in args and "--host" not in args


def test_serve_binds_loopback_unless_configured_when_parsing_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.HOST_ENV, raising=False)
    assert cli.build_parser().parse_args(["serve"]).host == "127.0.0.1"
    monkeypatch.setenv(cli.HOST_ENV, "0.0.0.0")
    assert cli.build_parser().parse_args(["serve"]).host == "0.0.0.0"
    assert cli.build_parser().parse_args(["serve", "--host", "10.1.2.3"]).host == "10.1.2.3"


def test_bindings_mismatch_names_the_wheel_to_install_when_module_and_libraries_differ() -> None:
    from build_tools.tensorrt import api

    assert api.bindings_mismatch("10.5.0", "10.5.0") is None
    assert api.bindings_mismatch("10.5.0", None) is None  # library version unknown: nothing to compare
    message = api.bindings_mismatch("10.6.0", "10.5.0")
    assert message is not None and "pip install tensorrt-cu12-bindings==10.5.0" in message


def test_library_version_is_none_when_no_tensorrt_library_is_loaded() -> None:
    from build_tools.tensorrt import api

    if any(builder_mod.importlib.util.find_spec(m) for m in builder_mod.TENSORRT_MODULES):
        pytest.skip("a TensorRT Python module is installed here")
    assert api.library_version() is None
