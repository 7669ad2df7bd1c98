"""Real TensorRT plans: build FP32 and FP16 plans for a small ONNX model, gate them, place them.

Needs TensorRT (the Python module or trtexec) and an NVIDIA GPU; skipped, with the reason, otherwise.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import build_tools.tensorrt  # noqa: F401  (registers the plan hook)
from build_tools.build import build_repositories
from build_tools.spec import DeploySpec, parse_spec
from build_tools.tensorrt.api import visible_gpu_count
from build_tools.tensorrt.backend import NoBuilderError, PlanBackend
from build_tools.tensorrt.builder import BUILDER_ENV, TENSORRT_MODULES, build_plan, plan_targets, select_backend
from build_tools.tensorrt.lock import read_lock
from build_tools.tensorrt.trtexec import TrtexecBackend, find_trtexec, parse_build_log

pytestmark = pytest.mark.gpu


def _backend_or_skip() -> PlanBackend:
    if os.environ.get(BUILDER_ENV, "auto") not in ("", "auto"):
        pytest.skip(f"{BUILDER_ENV} is set; this test picks the builder itself")
    try:
        backend = select_backend()
    except NoBuilderError as e:
        import importlib.util

        if all(importlib.util.find_spec(m) is None for m in TENSORRT_MODULES) and find_trtexec() is None:
            pytest.skip(f"TensorRT not importable and no trtexec: {e}")
        pytest.skip(f"no NVIDIA GPU for TensorRT ({visible_gpu_count()} visible): {e}")
    return backend


def _tensorrt_version(backend: PlanBackend) -> str:
    version = getattr(backend, "version", None)
    if isinstance(version, str):
        return version
    assert isinstance(backend, TrtexecBackend)
    # trtexec prints "[TensorRT vNNNNNN]" in its banner, also for --help.
    out = subprocess.run([backend.binary, "--help"], capture_output=True, text=True, check=False)
    found = parse_build_log(out.stdout + out.stderr)[0]
    if found is None:
        pytest.skip("cannot read trtexec's TensorRT version from its --help banner")
    return found


def _classifier(path: Path, classes: int = 10, size: int = 8) -> Path:
    """image [N,1,size,size] -> probabilities [N,classes] through a convolution, like a small CNN."""
    rng = np.random.default_rng(0)
    conv_w = numpy_helper.from_array(rng.normal(scale=0.3, size=(4, 1, 3, 3)).astype(np.float32), "conv_w")
    fc_w = numpy_helper.from_array(rng.normal(scale=0.3, size=(4 * size * size, classes)).astype(np.float32), "fc_w")
    nodes = [
        helper.make_node("Conv", ["image", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializer=[conv_w, fc_w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _spec(tmp_path: Path, precision: str, trt_version: str, **tensorrt: Any) -> DeploySpec:
    _classifier(tmp_path / "tiny.onnx")
    np.save(tmp_path / "eval.npy", np.random.default_rng(1).uniform(size=(256, 1, 8, 8)).astype(np.float32))
    data = {
        # A release outside the table: the target is whatever TensorRT this machine has.
        "triton": {"release": "local-test", "server_version": "0.0.0", "tensorrt_version": trt_version},
        "flavors": {"ngc": {"output": "model_repository"}},
        "models": {
            "tiny": {
                "source": "tiny.onnx",
                "formats": ["onnx", "tensorrt_plan"],
                "max_batch_size": 32,
                "dynamic_batching": {"preferred_batch_size": [8, 32]},
                "tensorrt": {"precision": precision, "evaluation_data": "eval.npy", "optional": False, **tensorrt},
            }
        },
    }
    return parse_spec(data, base_dir=tmp_path)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_plan_passes_the_gate_when_built_with_real_tensorrt(tmp_path: Path, precision: str) -> None:
    backend = _backend_or_skip()
    spec = _spec(tmp_path, precision, _tensorrt_version(backend))
    (target,) = plan_targets(spec, "tiny")
    artifact = build_plan(spec, target, backend)
    assert artifact.plan_path.stat().st_size > 0
    assert artifact.gate.passed, artifact.gate.summary()
    assert artifact.gate.samples == 256
    lock = artifact.lock
    assert lock.precision == precision
    assert lock.profile["inputs"]["image"] == {"min": [1, 1, 8, 8], "opt": [32, 1, 8, 8], "max": [32, 1, 8, 8]}
    assert lock.compute_capability != "unknown"
    assert (spec.resolve("build/tensorrt") / "timing.cache").is_file()


def test_build_repositories_places_a_plan_when_real_tensorrt_is_available(tmp_path: Path) -> None:
    backend = _backend_or_skip()
    spec = _spec(tmp_path, "fp16", _tensorrt_version(backend))
    plans = build_repositories(spec, ["ngc"])
    plan = tmp_path / "model_repository" / "tiny_trt" / "1" / "model.plan"
    assert plan.is_file()
    assert read_lock(plan).gate["passed"] is True
    assert any(": built, fp16" in n for n in plans["ngc"].notes)
