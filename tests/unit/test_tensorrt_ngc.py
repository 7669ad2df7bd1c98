"""The ngc flavor with a TensorRT variant: configs, linting, and build-repo without a plan builder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from build_tools.build import build_repositories
from build_tools.config import parse_pbtxt, to_pbtxt
from build_tools.errors import PlanBuildError
from build_tools.lint import lint_spec
from build_tools.repository import plan_flavor
from build_tools.spec import DeploySpec, parse_spec
from build_tools.tensorrt import builder as builder_mod
from build_tools.tensorrt import hook as hook_mod
from build_tools.tensorrt import trtexec as trtexec_mod
from tests.support.onnx_models import tiny_classifier


def _classifier(path: Path, classes: int = 3, size: int = 4) -> Path:
    return tiny_classifier(path, classes, size)


def _spec(tmp_path: Path, tensorrt: dict[str, Any] | None = None, **model: Any) -> DeploySpec:
    _classifier(tmp_path / "tiny.onnx")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    (tmp_path / "pre").mkdir(exist_ok=True)
    (tmp_path / "pre" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    data = {
        "flavors": {"ngc": {"output": "model_repository"}, "embedded": {"output": "build/embedded"}},
        "models": {
            "tiny": {
                "source": "tiny.onnx",
                "formats": ["onnx", "tensorrt_plan"],
                "max_batch_size": 8,
                "inputs": {"image": {"format": "FORMAT_NCHW"}},
                "outputs": {"probabilities": {"labels": "labels.txt"}},
                "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100},
                "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 1}]},
                "warmup": [{"name": "zeros", "batch_size": 1, "data": "zero"}],
                "response_cache": True,
                "ort_tensorrt": {"enabled": True, "precision_mode": "FP16"},
                "tensorrt": {"precision": "fp16", **(tensorrt or {})},
                **model,
            },
            "pre": {
                "kind": "python",
                "source": "pre",
                "max_batch_size": 8,
                "inputs": [{"name": "raw", "data_type": "UINT8", "dims": [16]}],
                "outputs": [{"name": "image", "data_type": "FP32", "dims": [1, 4, 4]}],
                "instance_groups": {"ngc": [{"kind": "KIND_CPU", "count": 3}]},
            },
        },
    }
    return parse_spec(data, base_dir=tmp_path)


@pytest.fixture
def no_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No TensorRT module and no trtexec: force the trtexec builder with an empty PATH entry."""
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("TRTEXEC", raising=False)
    monkeypatch.setenv(builder_mod.BUILDER_ENV, "trtexec")
    monkeypatch.setattr(trtexec_mod, "IMAGE_TRTEXEC_PATHS", (str(empty / "trtexec"),))
    monkeypatch.delenv(hook_mod.REQUIRE_PLANS_ENV, raising=False)


def _folders(spec: DeploySpec) -> dict[str, mc.ModelConfig]:
    findings, ios = lint_spec(spec)
    assert findings == []
    return {f.name: f.config for f in plan_flavor(spec, "ngc", ios).models}


def test_ngc_configs_parse_back_and_lint_cleanly_when_the_model_has_a_tensorrt_variant(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    configs = _folders(spec)
    assert set(configs) == {"tiny", "tiny_trt", "pre"}
    for name, cfg in configs.items():
        text = to_pbtxt(cfg)
        assert parse_pbtxt(text, name) == cfg


def test_trt_config_has_the_onnx_models_inputs_and_outputs_when_generated(tmp_path: Path) -> None:
    configs = _folders(_spec(tmp_path))
    onnx_cfg, trt_cfg = configs["tiny"], configs["tiny_trt"]
    assert list(trt_cfg.input) == list(onnx_cfg.input)
    assert list(trt_cfg.output) == list(onnx_cfg.output)
    assert trt_cfg.max_batch_size == onnx_cfg.max_batch_size == 8
    assert trt_cfg.dynamic_batching == onnx_cfg.dynamic_batching
    assert (trt_cfg.platform, trt_cfg.default_model_filename) == ("tensorrt_plan", "model.plan")
    assert trt_cfg.response_cache.enable and onnx_cfg.response_cache.enable
    assert not trt_cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert "intra_op_thread_count" not in trt_cfg.parameters


def test_onnx_config_runs_on_gpu_with_ort_tensorrt_fp16_when_ngc_defaults_apply(tmp_path: Path) -> None:
    cfg = _folders(_spec(tmp_path))["tiny"]
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"


def test_trt_config_uses_kind_gpu_when_the_onnx_model_asks_for_cpu_instances(tmp_path: Path) -> None:
    spec = _spec(tmp_path, instance_groups={"ngc": [{"kind": "KIND_CPU", "count": 2}],
                                            "embedded": [{"kind": "KIND_CPU", "count": 1}]})
    configs = _folders(spec)
    assert [(g.kind, g.count) for g in configs["tiny"].instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert [(g.kind, g.count) for g in configs["tiny_trt"].instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]


def test_build_repositories_notes_the_missing_plan_when_no_builder_and_the_plan_is_optional(
    tmp_path: Path, no_builder: None
) -> None:
    plans = build_repositories(_spec(tmp_path, {"optional": True}), ["ngc"])
    repo = tmp_path / "model_repository"
    assert (repo / "tiny_trt" / "config.pbtxt").is_file()
    assert not (repo / "tiny_trt" / "1" / "model.plan").exists()
    notes = "\n".join(plans["ngc"].notes)
    assert "plan tiny_trt/1/model.plan: skipped, no TensorRT Python API (not tried) and no trtexec" in notes
    assert "Triton reports tiny_trt UNAVAILABLE until the plan is built in the serving image" in notes


def test_build_repositories_stops_before_writing_when_no_builder_and_the_plan_is_required(
    tmp_path: Path, no_builder: None
) -> None:
    with pytest.raises(PlanBuildError, match=r"tensorrt\.optional is false, so build-repo stops"):
        build_repositories(_spec(tmp_path, {"optional": False}), ["ngc"])
    assert not (tmp_path / "model_repository").exists()


def test_build_repositories_stops_when_the_spec_target_is_inconsistent(tmp_path: Path, no_builder: None) -> None:
    spec = _spec(tmp_path)
    spec = spec.model_copy(update={"triton": spec.triton.model_copy(update={"tensorrt_version": "10.4.0"})})
    with pytest.raises(PlanBuildError, match=r"ships TensorRT 10\.5\.0\.18"):
        build_repositories(spec, ["ngc"])


def test_build_repositories_reports_python_backend_shm_when_building_ngc(tmp_path: Path, no_builder: None) -> None:
    plans = build_repositories(_spec(tmp_path), ["ngc"])
    (note,) = [n for n in plans["ngc"].notes if n.startswith("python backend shared memory")]
    assert "3 instance(s) need about 6 MiB (pre 3x2 MiB)" in note
