"""The build/serve version lock: release table, lock files, and verify's comparison."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from build_tools.errors import PlanBuildError
from build_tools.spec import TritonSpec
from build_tools.tensorrt.lock import (
    TRITON_RELEASES,
    PlanLock,
    find_plans,
    lock_path,
    lock_problems,
    parse_version,
    read_lock,
    spec_target_problems,
    versions_match,
    write_lock,
)
from build_tools.verify import compare_deployment, repository_locks, repository_models

TARGET = TritonSpec()  # 24.10 / 2.51.0 / 10.5.0


def _lock(**changes: Any) -> PlanLock:
    base = PlanLock(
        model="mnist", trt_model="mnist_trt", version=1, tensorrt_version="10.5.0.18", gpu_name="NVIDIA H100",
        compute_capability="9.0", triton_release="24.10", triton_server_version="2.51.0",
        target_tensorrt_version="10.5.0", precision="fp16", builder="python", onnx_sha256="a" * 64,
        plan_sha256="b" * 64, gate={"agreement": 1.0},
    )
    return dataclasses.replace(base, **changes)


def test_parse_version_returns_components_when_given_a_dotted_version() -> None:
    assert parse_version("10.5.0.18") == (10, 5, 0, 18)
    assert parse_version("10.4.0.post12.dev1") == (10, 4, 0)


def test_parse_version_raises_when_text_is_not_a_version() -> None:
    with pytest.raises(PlanBuildError, match="not a version number"):
        parse_version("ten")


def test_versions_match_is_true_when_shared_components_agree() -> None:
    assert versions_match("10.5.0.18", "10.5.0")
    assert versions_match("10.5.0", "10.5.0.18")


def test_versions_match_is_false_when_patch_or_build_differs() -> None:
    assert not versions_match("10.5.1", "10.5.0")
    assert not versions_match("10.5.0.18", "10.5.0.17")


def test_versions_match_raises_when_a_version_lacks_a_patch_number() -> None:
    with pytest.raises(PlanBuildError, match=r"at least major\.minor\.patch"):
        versions_match("10.5", "10.5.0")


def test_release_table_covers_24_08_to_24_12_when_read() -> None:
    assert {"24.08", "24.09", "24.10", "24.11", "24.12"} <= set(TRITON_RELEASES)
    assert TRITON_RELEASES["24.10"].tensorrt_version.startswith("10.5.")
    assert TRITON_RELEASES["24.10"].server_version == "2.51.0"


def test_spec_target_problems_is_empty_when_the_spec_matches_the_table() -> None:
    assert spec_target_problems(TARGET) == []


def test_spec_target_problems_names_the_right_version_when_tensorrt_version_is_wrong() -> None:
    problems = spec_target_problems(TritonSpec(release="24.10", tensorrt_version="10.4.0"))
    assert len(problems) == 1
    assert "ships TensorRT 10.5.0.18" in problems[0]


def test_spec_target_problems_names_the_release_server_when_server_version_is_wrong() -> None:
    problems = spec_target_problems(TritonSpec(release="24.12", server_version="2.51.0", tensorrt_version="10.7.0"))
    assert problems == [
        'triton.server_version is 2.51.0 but release 24.12 is Triton 2.53.0; set triton.server_version: "2.53.0" '
        "or change triton.release"
    ]


def test_spec_target_problems_trusts_the_spec_when_the_release_is_not_in_the_table() -> None:
    assert spec_target_problems(TritonSpec(release="99.01", server_version="9.9.9", tensorrt_version="99.0.0")) == []


def test_lock_problems_is_empty_when_the_lock_matches_the_target() -> None:
    assert lock_problems(_lock(), TARGET) == []


def test_lock_problems_refuses_the_plan_when_its_tensorrt_differs_from_the_image() -> None:
    problems = lock_problems(_lock(tensorrt_version="10.4.0.26"), TARGET, "mnist_trt/1/model.plan")
    assert len(problems) == 1
    expected = "built with TensorRT 10.4.0.26 but the target image tritonserver:24.10-py3 has TensorRT 10.5.0"
    assert expected in problems[0]


def test_lock_problems_refuses_the_plan_when_built_for_another_release() -> None:
    problems = lock_problems(_lock(triton_release="24.09"), TARGET)
    assert any("built for Triton release 24.09 but the spec targets 24.10" in p for p in problems)


def test_read_lock_returns_the_written_lock_when_metadata_exists(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    written = write_lock(plan, _lock())
    assert written.name == "model.plan.json.lock"
    assert read_lock(plan) == _lock()


def test_read_lock_raises_when_metadata_is_missing(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(PlanBuildError, match=r"no lock metadata \(model\.plan\.json\.lock missing\)"):
        read_lock(plan)


def test_read_lock_raises_when_metadata_lacks_fields(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    lock_path(plan).write_text(json.dumps({"model": "mnist"}))
    with pytest.raises(PlanBuildError, match="lock metadata lacks"):
        read_lock(plan)


def test_read_lock_raises_when_metadata_is_not_json(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    lock_path(plan).write_text("{not json")
    with pytest.raises(PlanBuildError, match="not valid JSON"):
        read_lock(plan)


def test_find_plans_lists_plans_and_orphan_locks_when_both_exist(tmp_path: Path) -> None:
    (tmp_path / "a_trt" / "1").mkdir(parents=True)
    (tmp_path / "a_trt" / "1" / "model.plan").write_bytes(b"x")
    (tmp_path / "b_trt" / "2").mkdir(parents=True)
    write_lock(tmp_path / "b_trt" / "2" / "model.plan", _lock())
    assert [p.relative_to(tmp_path).as_posix() for p in find_plans(tmp_path)] == [
        "a_trt/1/model.plan", "b_trt/2/model.plan"
    ]


READY = [
    {"name": "mnist", "version": "1", "state": "READY"},
    {"name": "mnist_trt", "version": "1", "state": "READY"},
]


def test_compare_deployment_passes_when_server_models_and_plans_match() -> None:
    report = compare_deployment("2.51.0", READY, TARGET, ["mnist", "mnist_trt"], {"mnist_trt/1/model.plan": _lock()})
    assert report.ok, report.render()
    assert report.render().endswith("verify: OK\n")


def test_compare_deployment_fails_when_the_server_version_differs_from_the_spec() -> None:
    report = compare_deployment("2.53.0", READY, TARGET, ["mnist", "mnist_trt"], {})
    assert not report.ok
    assert "Triton 2.53.0 is running, the spec targets 2.51.0" in report.problems[0]


def test_compare_deployment_fails_when_a_model_is_not_ready() -> None:
    index = [{"name": "mnist", "version": "1", "state": "UNAVAILABLE", "reason": "unable to load plan"}]
    report = compare_deployment("2.51.0", index, TARGET, ["mnist"], {})
    assert report.problems == ["model mnist v1: UNAVAILABLE (unable to load plan); expected READY"]


def test_compare_deployment_fails_when_a_repository_model_is_unknown_to_the_server() -> None:
    report = compare_deployment("2.51.0", READY, TARGET, ["mnist", "mnist_trt", "other"], {})
    assert any("model other: in the repository but unknown to the server" in p for p in report.problems)


def test_compare_deployment_fails_when_a_plan_has_no_lock_metadata() -> None:
    missing = PlanBuildError("mnist_trt/1/model.plan: no lock metadata")
    report = compare_deployment("2.51.0", READY, TARGET, ["mnist", "mnist_trt"], {"mnist_trt/1/model.plan": missing})
    assert report.problems == ["plan mnist_trt/1/model.plan: mnist_trt/1/model.plan: no lock metadata"]


def test_compare_deployment_fails_when_a_plan_was_built_with_another_tensorrt() -> None:
    locks = {"mnist_trt/1/model.plan": _lock(tensorrt_version="10.6.0.26")}
    report = compare_deployment("2.51.0", READY, TARGET, ["mnist", "mnist_trt"], locks)
    assert len(report.problems) == 1
    assert "built with TensorRT 10.6.0.26" in report.problems[0]


def test_repository_helpers_find_models_and_locks_when_reading_a_repository(tmp_path: Path) -> None:
    for name in ("mnist", "mnist_trt"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    plan = tmp_path / "mnist_trt" / "1" / "model.plan"
    plan.write_bytes(b"x")
    assert repository_models(tmp_path) == ["mnist", "mnist_trt"]
    locks = repository_locks(tmp_path)
    assert list(locks) == ["mnist_trt/1/model.plan"]
    assert isinstance(locks["mnist_trt/1/model.plan"], PlanBuildError)
    write_lock(plan, _lock())
    assert repository_locks(tmp_path) == {"mnist_trt/1/model.plan": _lock()}
