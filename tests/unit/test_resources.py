"""Shared-memory needs of Python-backend instances (build_tools.resources)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from build_tools.resources import MIB, python_backend_shm_bytes, python_backend_shm_estimate, shm_note
from build_tools.spec import DeploySpec, parse_spec


def _spec(tmp_path: Path, models: dict[str, Any]) -> DeploySpec:
    return parse_spec({"models": models}, base_dir=tmp_path)


def _python(count: int = 1, kind: str = "KIND_CPU", dims: list[int] | None = None, mbs: int = 0,
            gpus: list[int] | None = None) -> dict[str, Any]:
    group: dict[str, Any] = {"kind": kind, "count": count}
    if gpus is not None:
        group["gpus"] = gpus
    return {
        "kind": "python", "source": "m.py", "max_batch_size": mbs,
        "inputs": [{"name": "x", "data_type": "FP32", "dims": dims or [4]}],
        "outputs": [{"name": "y", "data_type": "FP32", "dims": dims or [4]}],
        "instance_groups": {"ngc": [group], "embedded": [group]},
    }


def test_python_backend_shm_bytes_is_zero_when_ngc_has_no_python_models(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"m": {"source": "m.onnx"}})
    assert python_backend_shm_bytes(spec, "ngc") == 0
    assert shm_note(spec, "ngc") is None


def test_python_backend_shm_bytes_counts_default_plus_one_growth_step_per_instance_when_tensors_are_small(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, {"a": _python(count=3), "b": _python(count=1)})
    assert python_backend_shm_bytes(spec, "ngc") == 4 * 2 * MIB


def test_python_backend_shm_bytes_adds_growth_steps_when_a_full_batch_exceeds_one_step(tmp_path: Path) -> None:
    # 2 tensors x 64 x 64 x 4 bytes x batch 64 = 2 MiB of tensors: two growth steps.
    spec = _spec(tmp_path, {"a": _python(count=2, dims=[64, 64], mbs=64)})
    est = python_backend_shm_estimate(spec, "ngc")
    assert est.models[0].bytes_per_instance == 3 * MIB
    assert est.total_bytes == 6 * MIB


def test_python_backend_shm_bytes_multiplies_by_listed_gpus_when_kind_gpu(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"a": _python(count=2, kind="KIND_GPU", gpus=[0, 1])})
    assert python_backend_shm_estimate(spec, "ngc").instances == 4


def test_python_backend_shm_bytes_counts_onnx_models_when_the_flavor_is_embedded(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"m": {"source": "missing.onnx", "instance_groups": {"embedded": [{"count": 2}]}}})
    assert python_backend_shm_bytes(spec, "embedded") == 2 * 2 * MIB
    assert python_backend_shm_bytes(spec, "ngc") == 0


def test_shm_note_says_the_compose_limit_matters_when_above_docker_default(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"a": _python(count=40)})
    note = shm_note(spec, "ngc")
    assert note is not None and "need about 80 MiB" in note and "above Docker's default of 64 MiB" in note
