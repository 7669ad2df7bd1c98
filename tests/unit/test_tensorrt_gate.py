"""The accuracy gate: comparison over numpy arrays, evaluation inputs, and the ONNX Runtime reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from build_tools.errors import PlanBuildError
from build_tools.onnx_io import GraphTensor
from build_tools.tensorrt.gate import (
    DEFAULT_RANDOM_SAMPLES,
    compare_outputs,
    iter_chunks,
    load_arrays,
    onnxruntime_runner,
    random_inputs,
    require_pass,
    run_gate,
    sample_shape,
)
from tests.support.onnx_models import tiny_classifier


def _classifier(path: Path, classes: int = 3, size: int = 4, seed: int = 0) -> Path:
    return tiny_classifier(path, classes, size, seed)


def _probs(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def test_compare_outputs_passes_when_outputs_are_identical() -> None:
    ref = {"p": _probs([[0.1, 0.9], [0.8, 0.2]])}
    report = compare_outputs(ref, ref, min_top1_agreement=1.0)
    assert report.passed
    assert report.agreement == 1.0
    assert report.max_abs_diff == 0.0
    assert report.samples == 2


def test_compare_outputs_fails_when_top1_agreement_is_below_the_minimum() -> None:
    ref = {"p": np.tile(_probs([[0.2, 0.8]]), (1000, 1))}
    cand = {"p": ref["p"].copy()}
    cand["p"][:2] = [0.9, 0.1]  # 2 of 1000 samples flip: agreement 0.998
    report = compare_outputs(ref, cand, min_top1_agreement=0.999)
    assert report.outputs[0].top1_agreement == pytest.approx(0.998)
    assert not report.passed
    assert report.max_abs_diff == pytest.approx(0.7, abs=1e-6)


def test_compare_outputs_passes_when_agreement_equals_the_minimum() -> None:
    ref = {"p": np.tile(_probs([[0.2, 0.8]]), (1000, 1))}
    cand = {"p": ref["p"].copy()}
    cand["p"][0] = [0.9, 0.1]
    assert compare_outputs(ref, cand, min_top1_agreement=0.999).passed


def test_compare_outputs_counts_agreement_when_the_reference_has_a_tie() -> None:
    ref = {"p": _probs([[0.5, 0.5, 0.0]])}
    cand = {"p": _probs([[0.49, 0.51, 0.0]])}
    assert compare_outputs(ref, cand, min_top1_agreement=1.0).outputs[0].top1_agreement == 1.0


def test_compare_outputs_fails_when_the_plan_returns_nan() -> None:
    ref = {"p": _probs([[0.1, 0.9], [0.8, 0.2]])}
    cand = {"p": _probs([[0.1, 0.9], [np.nan, 0.2]])}
    report = compare_outputs(ref, cand, min_top1_agreement=0.0)
    assert report.outputs[0].nonfinite == 1
    assert report.max_abs_diff == float("inf")
    assert not report.passed


def test_compare_outputs_uses_element_agreement_when_the_output_has_no_class_axis() -> None:
    ref = {"score": np.linspace(0, 1, 100, dtype=np.float32).reshape(100, 1)}
    cand = {"score": ref["score"] + np.float32(0.005)}
    report = compare_outputs(ref, cand, min_top1_agreement=0.999, atol=1e-2, rtol=1e-2)
    assert report.outputs[0].top1_agreement is None
    assert report.outputs[0].element_agreement == 1.0
    assert report.passed
    far = compare_outputs(ref, {"score": ref["score"] + np.float32(0.5)}, min_top1_agreement=0.999, atol=1e-2)
    assert not far.passed


def test_compare_outputs_requires_exact_match_when_outputs_are_integers() -> None:
    ref = {"label": np.array([1, 2, 3, 4], dtype=np.int64)}
    cand = {"label": np.array([1, 2, 3, 5], dtype=np.int64)}
    report = compare_outputs(ref, cand, min_top1_agreement=0.5, atol=10.0, rtol=10.0)
    assert report.outputs[0].element_agreement == 0.75
    assert report.outputs[0].top1_agreement is None


def test_compare_outputs_has_no_class_axis_when_unbatched_output_is_a_scalar_per_sample() -> None:
    ref = {"p": _probs([[0.1, 0.9]])}
    report = compare_outputs(ref, ref, min_top1_agreement=1.0, batched=False)
    assert report.outputs[0].top1_agreement == 1.0
    scalar = compare_outputs({"s": np.ones(3, np.float32)}, {"s": np.ones(3, np.float32)}, min_top1_agreement=1.0)
    assert scalar.outputs[0].top1_agreement is None


def test_compare_outputs_raises_when_output_names_differ() -> None:
    with pytest.raises(PlanBuildError, match=r"the plan's outputs \['q'\] differ from the ONNX model's \['p'\]"):
        compare_outputs({"p": _probs([[1, 0]])}, {"q": _probs([[1, 0]])}, min_top1_agreement=1.0)


def test_compare_outputs_raises_when_output_shapes_differ() -> None:
    with pytest.raises(PlanBuildError, match=r"the plan returned shape \[1, 3\], ONNX Runtime \[1, 2\]"):
        compare_outputs({"p": _probs([[1, 0]])}, {"p": _probs([[1, 0, 0]])}, min_top1_agreement=1.0)


def test_random_inputs_are_reproducible_and_in_range_when_seeded() -> None:
    tensors = [GraphTensor("image", "FP32", (-1, 1, 4, 4)), GraphTensor("mask", "UINT8", (-1, 2))]
    shapes = {"image": (1, 4, 4), "mask": (2,)}
    a = random_inputs(tensors, shapes, count=50, value_range=None)
    b = random_inputs(tensors, shapes, count=50, value_range=None)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert a["image"].shape == (50, 1, 4, 4) and a["image"].dtype == np.float32
    assert a["image"].min() >= 0.0 and a["image"].max() < 1.0
    assert a["mask"].dtype == np.uint8 and a["mask"].max() <= 255


def test_random_inputs_use_the_spec_range_when_one_is_given() -> None:
    tensors = [GraphTensor("image", "FP32", (-1, 3))]
    a = random_inputs(tensors, {"image": (3,)}, count=200, value_range=(0.0, 255.0))
    assert a["image"].max() > 1.0 and a["image"].max() < 255.0
    assert DEFAULT_RANDOM_SAMPLES >= 1000


def test_sample_shape_fills_dynamic_axes_from_opt_when_not_the_batch_axis() -> None:
    t = GraphTensor("tokens", "INT64", (-1, -1))
    assert sample_shape(t, batched=True, opt=(8, 128)) == (128,)
    assert sample_shape(GraphTensor("x", "FP32", (-1, 4)), batched=False, opt=(3, 4)) == (3, 4)


def test_load_arrays_reads_samples_when_npy_matches_the_single_input(tmp_path: Path) -> None:
    path = tmp_path / "eval.npy"
    np.save(path, np.zeros((5, 1, 4, 4), dtype=np.float64))
    arrays = load_arrays(path, [GraphTensor("image", "FP32", (-1, 1, 4, 4))], {"image": (1, 4, 4)}, "eval")
    assert arrays["image"].shape == (5, 1, 4, 4) and arrays["image"].dtype == np.float32


def test_load_arrays_reads_each_input_when_npz_holds_named_arrays(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, a=np.zeros((3, 2), np.float32), b=np.ones((3, 1), np.int64))
    tensors = [GraphTensor("a", "FP32", (-1, 2)), GraphTensor("b", "INT64", (-1, 1))]
    arrays = load_arrays(path, tensors, {"a": (2,), "b": (1,)}, "eval")
    assert arrays["b"].dtype == np.int64 and arrays["a"].shape == (3, 2)


def test_load_arrays_raises_when_npy_is_given_for_several_inputs(tmp_path: Path) -> None:
    path = tmp_path / "eval.npy"
    np.save(path, np.zeros((3, 2), np.float32))
    tensors = [GraphTensor("a", "FP32", (-1, 2)), GraphTensor("b", "FP32", (-1, 2))]
    with pytest.raises(PlanBuildError, match=r"use an \.npz with one array per input name"):
        load_arrays(path, tensors, {"a": (2,), "b": (2,)}, "eval")


def test_load_arrays_raises_when_a_static_axis_differs_from_the_graph(tmp_path: Path) -> None:
    path = tmp_path / "eval.npy"
    np.save(path, np.zeros((3, 1, 5, 4), np.float32))
    with pytest.raises(PlanBuildError, match="axis 2 is 5; the graph fixes it to 4"):
        load_arrays(path, [GraphTensor("image", "FP32", (-1, 1, 4, 4))], {"image": (1, 4, 4)}, "eval")


def test_load_arrays_raises_when_floats_are_given_for_an_integer_input(tmp_path: Path) -> None:
    path = tmp_path / "eval.npy"
    np.save(path, np.zeros((3, 2), np.float32))
    with pytest.raises(PlanBuildError, match="expected integers"):
        load_arrays(path, [GraphTensor("ids", "INT64", (-1, 2))], {"ids": (2,)}, "eval")


def test_load_arrays_raises_when_the_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(PlanBuildError, match="not found"):
        load_arrays(tmp_path / "nope.npy", [GraphTensor("x", "FP32", (-1, 2))], {"x": (2,)}, "eval")


def test_iter_chunks_splits_by_batch_when_batched_and_by_sample_when_not() -> None:
    arrays = {"x": np.arange(10).reshape(5, 2)}
    assert [c["x"].shape for c in iter_chunks(arrays, 2, batched=True)] == [(2, 2), (2, 2), (1, 2)]
    assert [c["x"].shape for c in iter_chunks(arrays, 2, batched=False)] == [(2,)] * 5


def test_run_gate_passes_when_the_plan_matches_onnxruntime(tmp_path: Path) -> None:
    onnx_path = _classifier(tmp_path / "tiny.onnx")
    arrays = random_inputs([GraphTensor("image", "FP32", (-1, 1, 4, 4))], {"image": (1, 4, 4)}, count=40)
    report = run_gate(onnxruntime_runner(onnx_path), onnx_path, arrays, batch_size=16, batched=True,
                      precision="fp16", min_top1_agreement=0.999, source="test")
    assert report.passed and report.samples == 40
    require_pass(report, "tiny_trt/1/model.plan")


def test_require_pass_refuses_the_plan_when_the_gate_fails(tmp_path: Path) -> None:
    onnx_path = _classifier(tmp_path / "tiny.onnx")
    reference = onnxruntime_runner(onnx_path)

    def reversed_classes(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v[:, ::-1].copy() for k, v in reference(feed).items()}

    arrays = random_inputs([GraphTensor("image", "FP32", (-1, 1, 4, 4))], {"image": (1, 4, 4)}, count=40)
    report = run_gate(reversed_classes, onnx_path, arrays, batch_size=16, batched=True, precision="fp16",
                      min_top1_agreement=0.999, source="test")
    assert not report.passed
    with pytest.raises(PlanBuildError, match=r"tiny_trt/1/model.plan: accuracy gate failed, the plan is not written"):
        require_pass(report, "tiny_trt/1/model.plan")
