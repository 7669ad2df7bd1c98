"""The torchscript format without a server: configs for both flavors (parsed back), lint findings that
name the field, and the export check against ONNX Runtime (which can fail)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from build_tools.build import build_repositories
from build_tools.config import read_config
from build_tools.errors import LintError, SpecError
from build_tools.lint import lint_spec
from build_tools.spec import load_spec, parse_spec
from clients.datasets import mnist_holdout

ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "models/mnist/mnist_cnn.onnx"
PT = ROOT / "models/mnist/mnist_cnn.pt"


def _spec_data(out: Path, **torchscript: Any) -> dict[str, Any]:
    return {
        "flavors": {"ngc": {"output": str(out / "ngc")}, "embedded": {"output": str(out / "embedded")}},
        "models": {
            "digits": {
                "source": str(ONNX),
                "formats": ["onnx", "torchscript"],
                "max_batch_size": 16,
                "inputs": {"image": {"format": "FORMAT_NCHW"}},
                "dynamic_batching": {"max_queue_delay_microseconds": 0},
                "instance_groups": {"ngc": [{"kind": "KIND_GPU", "count": 2}],
                                    "embedded": [{"kind": "KIND_CPU", "count": 3}]},
                "runtime": {"intra_op_threads": 2},
                "torchscript": {"source": str(PT), **torchscript},
            }
        },
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ts")
    data = _spec_data(out, instance_groups={"embedded": [{"kind": "KIND_GPU", "count": 1}]})
    build_repositories(parse_spec(data, out))
    return out


def test_torchscript_config_uses_pytorch_backend_when_flavor_is_ngc(built: Path) -> None:
    onnx_cfg = read_config(built / "ngc/digits/config.pbtxt")
    cfg = read_config(built / "ngc/digits_torchscript/config.pbtxt")
    assert cfg.platform == "pytorch_libtorch" and cfg.default_model_filename == "model.pt"
    # The same interface as the ONNX model: clients switch models by name only.
    assert list(cfg.input) == list(onnx_cfg.input) and list(cfg.output) == list(onnx_cfg.output)
    assert cfg.input[0].format == mc.ModelInput.FORMAT_NCHW
    assert cfg.max_batch_size == 16 and cfg.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert cfg.parameters["INTRA_OP_THREAD_COUNT"].string_value == "2"
    assert (built / "ngc/digits_torchscript/1/model.pt").read_bytes() == PT.read_bytes()


def test_torchscript_config_runs_torch_runner_with_own_groups_when_flavor_is_embedded(built: Path) -> None:
    cfg = read_config(built / "embedded/digits_torchscript/config.pbtxt")
    assert cfg.backend == "python" and not cfg.platform
    assert cfg.parameters["torchscript_file"].string_value == "model.pt"
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    runner = (built / "embedded/digits_torchscript/1/model.py").read_text()
    assert runner == (ROOT / "build_tools/python_models/torch_runner/model.py").read_text()
    assert (built / "embedded/digits_torchscript/1/model.pt").is_file()
    # The ONNX model keeps its own groups.
    onnx_cfg = read_config(built / "embedded/digits/config.pbtxt")
    assert [(g.kind, g.count) for g in onnx_cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]


def test_lint_names_torchscript_source_when_pt_file_missing(tmp_path: Path) -> None:
    data = _spec_data(tmp_path)
    data["models"]["digits"]["torchscript"]["source"] = str(tmp_path / "absent.pt")
    findings, _ = lint_spec(parse_spec(data, tmp_path))
    assert any(f.startswith("models.digits.torchscript.source: TorchScript file") and "absent.pt" in f
               for f in findings), findings
    with pytest.raises(LintError):
        build_repositories(parse_spec(data, tmp_path))
    assert not (tmp_path / "ngc").exists()


def test_lint_names_allowed_kinds_when_torchscript_group_cannot_load(tmp_path: Path) -> None:
    data = _spec_data(tmp_path, instance_groups={"embedded": [{"kind": "KIND_MODEL", "count": 1}]})
    findings, _ = lint_spec(parse_spec(data, tmp_path))
    assert any("torchscript.instance_groups.embedded[0].kind: KIND_MODEL" in f and "KIND_CPU, KIND_GPU" in f
               for f in findings), findings


def test_spec_rejects_torchscript_source_when_model_has_versions(tmp_path: Path) -> None:
    data = _spec_data(tmp_path)
    model = data["models"]["digits"]
    model["versions"] = {1: model.pop("source")}
    with pytest.raises(SpecError, match=r"torchscript\.source"):
        parse_spec(data, tmp_path)


def test_project_spec_serves_torchscript_on_gpu_when_flavor_is_ngc() -> None:
    cfg = read_config(ROOT / "model_repository/mnist_classifier_torchscript/config.pbtxt")
    assert cfg.platform == "pytorch_libtorch"
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert "torchscript" in load_spec(ROOT / "deploy.yaml").models["mnist_classifier"].formats


# --------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def train_module() -> ModuleType:
    pytest.importorskip("torch", reason="the export check needs PyTorch: make install (extra `torch`)")
    spec = importlib.util.spec_from_file_location("mnist_train", ROOT / "models/mnist/train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["mnist_train"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_torchscript_matches_onnx_when_checked_on_holdout(train_module: ModuleType) -> None:
    # Batch 1 and 7 are in metrics.json's export record; whole-set and 64 keep this test short.
    result = train_module.check_torchscript(
        PT, train_module.ort_session(ONNX), mnist_holdout().images, 1e-4, batch_sizes=(64, 0)
    )
    assert result["n"] == 500 and result["top1_disagreements"] == 0
    assert result["max_abs_diff_probabilities"] <= 1e-4
    assert not train_module.torchscript_failures(result)


def test_export_check_fails_when_torchscript_weights_differ(train_module: ModuleType, tmp_path: Path) -> None:
    import torch

    net = train_module.net_from_onnx(ONNX)
    with torch.no_grad():
        net.classifier.bias.add_(torch.linspace(-3, 3, 10))  # a wrong model must not pass the check
    path = tmp_path / "wrong.pt"
    train_module.export_torchscript(train_module.ProbabilityModel(net), path)
    result = train_module.check_torchscript(
        path, train_module.ort_session(ONNX), mnist_holdout().images, 1e-4, batch_sizes=(0,)
    )
    failures = train_module.torchscript_failures(result)
    assert result["top1_disagreements"] > 0 and len(failures) == 2, failures


def test_net_from_onnx_reproduces_the_committed_torchscript_when_exported_again(
    train_module: ModuleType, tmp_path: Path
) -> None:
    import torch

    path = tmp_path / "again.pt"
    train_module.export_torchscript(train_module.ProbabilityModel(train_module.net_from_onnx(ONNX)), path)
    x = torch.from_numpy(mnist_holdout().images[:64].astype(np.float32)[:, None])
    with torch.no_grad():
        again, committed = torch.jit.load(str(path))(x), torch.jit.load(str(PT))(x)
    assert torch.allclose(again, committed, atol=1e-6)


def test_gpu_check_repository_runs_torchscript_on_gpu_in_the_ensemble_when_device_is_gpu(tmp_path: Path) -> None:
    from tools.gpu_check import gpu_spec_data

    spec = parse_spec(gpu_spec_data("gpu", tmp_path), ROOT)
    build_repositories(spec, ["embedded"])
    repo = tmp_path / "repository"
    cfg = read_config(repo / "mnist_classifier_torchscript/config.pbtxt")
    assert [(g.kind, list(g.gpus)) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, [0])]
    ensemble = read_config(repo / "mnist/config.pbtxt")
    assert "mnist_classifier_torchscript" in [s.model_name for s in ensemble.ensemble_scheduling.step]
