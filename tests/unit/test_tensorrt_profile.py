"""Optimization profile and precision choices for TensorRT plans (build_tools.tensorrt.profile)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from build_tools.errors import PlanBuildError, SpecError
from build_tools.onnx_io import GraphInterface, GraphTensor
from build_tools.spec import ModelSpec, parse_spec
from build_tools.tensorrt.profile import (
    InputProfile,
    choose_opt_batch,
    derive_profiles,
    precision_settings,
)


def _model(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"source": "m.onnx", **fields})


def _graph(*inputs: GraphTensor) -> GraphInterface:
    out = GraphTensor("probabilities", "FP32", (-1, 10))
    return GraphInterface(Path("m.onnx"), tuple(inputs), (out,), 13)


IMAGE = GraphTensor("image", "FP32", (-1, 1, 28, 28))


def test_choose_opt_batch_returns_spec_value_when_opt_batch_size_set() -> None:
    model = _model(max_batch_size=64, dynamic_batching={"preferred_batch_size": [8, 32]},
                   tensorrt={"opt_batch_size": 16})
    choice = choose_opt_batch(model)
    assert choice.size == 16
    assert "opt_batch_size" in choice.reason


def test_choose_opt_batch_returns_largest_preferred_size_when_dynamic_batching_prefers_sizes() -> None:
    model = _model(max_batch_size=256, dynamic_batching={"preferred_batch_size": [16, 64, 256]})
    choice = choose_opt_batch(model)
    assert choice.size == 256
    assert "sustained load" in choice.reason


def test_choose_opt_batch_returns_max_batch_size_when_dynamic_batching_has_no_preferred_sizes() -> None:
    assert choose_opt_batch(_model(max_batch_size=32, dynamic_batching={})).size == 32


def test_choose_opt_batch_returns_one_when_there_is_no_dynamic_batching() -> None:
    choice = choose_opt_batch(_model(max_batch_size=32))
    assert choice.size == 1
    assert "clients send" in choice.reason


def test_choose_opt_batch_returns_one_when_the_model_does_not_batch() -> None:
    assert choose_opt_batch(_model(max_batch_size=0)).size == 1


def test_choose_opt_batch_raises_when_opt_batch_size_exceeds_max_batch_size() -> None:
    with pytest.raises(PlanBuildError, match=r"opt_batch_size 64 is above max_batch_size 8; expected 1\.\.8"):
        choose_opt_batch(_model(max_batch_size=8, tensorrt={"opt_batch_size": 64}))


def test_derive_profiles_spans_one_to_max_batch_when_only_the_batch_axis_is_dynamic() -> None:
    model = _model(max_batch_size=256, dynamic_batching={"preferred_batch_size": [16, 64]})
    assert derive_profiles("m", model, _graph(IMAGE)) == [
        InputProfile("image", (1, 1, 28, 28), (64, 1, 28, 28), (256, 1, 28, 28))
    ]


def test_derive_profiles_is_empty_when_every_input_is_static() -> None:
    static = GraphTensor("image", "FP32", (1, 1, 28, 28))
    assert derive_profiles("m", _model(max_batch_size=0), _graph(static)) == []


def test_derive_profiles_uses_the_spec_range_when_a_non_batch_axis_is_dynamic() -> None:
    tokens = GraphTensor("tokens", "INT64", (-1, -1))
    model = _model(max_batch_size=8, tensorrt={"dynamic_dims": {"tokens": {1: [1, 128, 512]}}})
    assert derive_profiles("m", model, _graph(tokens)) == [InputProfile("tokens", (1, 1), (1, 128), (8, 512))]


def test_derive_profiles_raises_naming_input_and_axis_when_a_dynamic_axis_has_no_range() -> None:
    tokens = GraphTensor("tokens", "INT64", (-1, -1))
    expected = r"models\.m\.tensorrt\.dynamic_dims\.tokens\.1: axis 1 .* \[min, opt, max\]"
    with pytest.raises(PlanBuildError, match=expected):
        derive_profiles("m", _model(max_batch_size=8), _graph(tokens))


def test_derive_profiles_treats_axis_zero_as_ordinary_when_the_model_does_not_batch() -> None:
    seq = GraphTensor("x", "FP32", (-1, 4))
    model = _model(max_batch_size=0, tensorrt={"dynamic_dims": {"x": {0: [2, 4, 6]}}})
    assert derive_profiles("m", model, _graph(seq)) == [InputProfile("x", (2, 4), (4, 4), (6, 4))]


@pytest.mark.parametrize(
    ("dims", "match"),
    [
        ({"nope": {1: [1, 2, 3]}}, r"the graph has no input 'nope'"),
        ({"image": {2: [1, 2, 3]}}, r"axis 2 of 'image' is fixed to 28"),
        ({"image": {7: [1, 2, 3]}}, r"has 4 axes"),
        ({"image": {0: [1, 2, 3]}}, r"axis 0 is the batch axis"),
    ],
)
def test_derive_profiles_raises_when_dynamic_dims_names_a_wrong_target(dims: dict[str, Any], match: str) -> None:
    with pytest.raises(PlanBuildError, match=match):
        derive_profiles("m", _model(max_batch_size=8, tensorrt={"dynamic_dims": dims}), _graph(IMAGE))


def test_precision_settings_turns_tf32_off_when_precision_is_fp32() -> None:
    s = precision_settings("fp32")
    assert (s.fp16, s.int8, s.tf32, s.needs_calibration) == (False, False, False, False)


def test_precision_settings_enables_fp16_when_precision_is_fp16() -> None:
    s = precision_settings("fp16")
    assert (s.fp16, s.int8, s.tf32, s.needs_calibration) == (True, False, True, False)


def test_precision_settings_adds_fp16_fallback_and_calibration_when_precision_is_int8() -> None:
    s = precision_settings("int8")
    assert (s.fp16, s.int8, s.needs_calibration) == (True, True, True)


def test_precision_settings_raises_when_precision_is_unknown() -> None:
    with pytest.raises(PlanBuildError, match="expected fp32, fp16 or int8"):
        precision_settings("fp8")  # type: ignore[arg-type]


def _spec_with_tensorrt(tensorrt: dict[str, Any]) -> None:
    parse_spec({"models": {"m": {"source": "m.onnx", "formats": ["onnx", "tensorrt_plan"], "tensorrt": tensorrt}}})


def test_spec_rejects_dynamic_dims_when_min_exceeds_opt() -> None:
    with pytest.raises(SpecError, match=r"expected \[min, opt, max\] with min <= opt <= max"):
        _spec_with_tensorrt({"dynamic_dims": {"x": {1: [8, 4, 16]}}})


def test_spec_rejects_dynamic_dims_when_the_range_has_two_values() -> None:
    with pytest.raises(SpecError, match=r"\[min, opt, max\]"):
        _spec_with_tensorrt({"dynamic_dims": {"x": {1: [4, 16]}}})


def test_spec_rejects_random_input_range_when_low_is_not_below_high() -> None:
    with pytest.raises(SpecError, match=r"random_input_range"):
        _spec_with_tensorrt({"random_input_range": [255, 0]})
