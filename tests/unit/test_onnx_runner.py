"""The embedded flavor's ONNX Runtime runner, outside the server: initialise it from the config our build
tools generate, then check and run batches of requests the way execute() does.

What the server tests cannot show one request at a time: every request of a shared run gets its own
rows back, in order; a bad request is refused alone; a failed run fails its group only.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from build_tools.config import onnx_config_embedded
from build_tools.interfaces import resolve_model_io
from build_tools.spec import parse_spec
from tests.support import onnx_models
from tests.support.backend import import_backend_model

runner = import_backend_model("build_tools.python_models.onnx_runner.model")


def _model(
    tmp_path: Path, onnx_file: Path, max_batch_size: int = 8, edit: Callable[[Any], None] | None = None,
    **extra: Any,
) -> Any:
    """A runner initialised exactly as Triton would: config JSON, repository folder, version; `edit`
    changes the generated config first (a hand-written config.pbtxt)."""
    spec = parse_spec({"models": {"m": {"source": str(onnx_file), "max_batch_size": max_batch_size, **extra}}},
                      tmp_path)
    cfg = onnx_config_embedded("m", spec.models["m"], resolve_model_io(spec, "m"))
    if edit is not None:
        edit(cfg)
    repo = tmp_path / "repo" / "m"
    (repo / "1").mkdir(parents=True)
    shutil.copy(onnx_file, repo / "1" / "model.onnx")
    model = runner.TritonPythonModel()
    model.initialize({
        "model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True),
        "model_name": "m", "model_repository": str(repo), "model_version": "1",
    })
    return model


def _run(model: Any, *requests: dict[str, np.ndarray]) -> list[Any]:
    read: list[Any] = []
    for r in requests:
        try:
            read.append(model.check(r))
        except ValueError as e:
            read.append(e)
    return model.infer(read)


@pytest.fixture()
def multi(tmp_path: Path) -> Any:
    return _model(tmp_path, onnx_models.multi_input(tmp_path / "multi.onnx"))


def _ab(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(rows, 4)).astype(np.float32), "b": rng.normal(size=(rows, 4)).astype(np.float32)}


def test_infer_returns_each_request_its_own_rows_in_order_when_requests_share_a_run(multi: Any) -> None:
    requests = [_ab(rows, seed) for seed, rows in enumerate([1, 3, 2, 5])]
    answers = _run(multi, *requests)
    assert len(answers) == 4
    for req, ans in zip(requests, answers):
        total, diff = ans
        np.testing.assert_array_equal(total, req["a"] + req["b"])
        np.testing.assert_array_equal(diff, req["a"] - req["b"])
        assert total.dtype == np.float32 and total.flags.c_contiguous


def test_infer_answers_like_onnxruntime_when_request_runs_alone(multi: Any, tmp_path: Path) -> None:
    req = _ab(6, 7)
    session = ort.InferenceSession(str(tmp_path / "multi.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["sum:0", "diff"], req)
    (got,) = _run(multi, req)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"a": np.zeros((2, 4), np.float32)}, "missing input 'b'; expected inputs: ['a', 'b']"),
        ({"a": np.zeros((2, 4), np.float64), "b": np.zeros((2, 4), np.float32)},
         "input 'a' has data type float64, expected float32"),
        ({"a": np.zeros((2, 5), np.float32), "b": np.zeros((2, 5), np.float32)},
         "input 'a' has shape [2, 5], expected [-1, 4] (-1 = any)"),
        ({"a": np.zeros((4,), np.float32), "b": np.zeros((4,), np.float32)},
         "input 'a' has shape [4], expected [-1, 4] (-1 = any)"),
        ({"a": np.zeros((2, 4), np.float32), "b": np.zeros((3, 4), np.float32)},
         "input 'b' has batch size 3, other inputs have 2"),
    ],
)
def test_infer_refuses_only_the_bad_request_when_batched_with_good_ones(
    multi: Any, bad: dict[str, np.ndarray], message: str
) -> None:
    good = [_ab(2, 1), _ab(1, 2)]
    answers = _run(multi, good[0], bad, good[1])
    assert isinstance(answers[1], ValueError) and str(answers[1]) == message
    for req, ans in zip(good, (answers[0], answers[2])):
        np.testing.assert_array_equal(ans[0], req["a"] + req["b"])


def test_infer_groups_by_non_batch_dims_when_lengths_differ(tmp_path: Path) -> None:
    model = _model(tmp_path, onnx_models.dynamic_dim(tmp_path / "dyn.onnx"))
    rng = np.random.default_rng(3)
    requests = [{"x": rng.normal(size=(rows, length)).astype(np.float32)} for rows, length in
                [(2, 3), (1, 5), (3, 3), (1, 5), (2, 7)]]
    answers = _run(model, *requests)
    for req, (total, scaled) in zip(requests, answers):
        np.testing.assert_allclose(total, req["x"].sum(axis=1, keepdims=True), rtol=1e-5)
        np.testing.assert_array_equal(scaled, req["x"] * np.float32(0.5))


def test_check_accepts_any_length_of_a_variable_dim_but_not_another_rank(tmp_path: Path) -> None:
    model = _model(tmp_path, onnx_models.dynamic_dim(tmp_path / "dyn.onnx"))
    arrays, batch = model.check({"x": np.zeros((4, 11), np.float32)})
    assert batch == 4 and list(arrays) == ["x"]
    with pytest.raises(ValueError, match=r"input 'x' has shape \[4, 11, 1\], expected \[-1, -1\]"):
        model.check({"x": np.zeros((4, 11, 1), np.float32)})


def test_check_wants_exact_shape_when_model_does_not_batch(tmp_path: Path) -> None:
    model = _model(tmp_path, onnx_models.fixed_batch(tmp_path / "fixed.onnx"), max_batch_size=0)
    assert model.check({"x": np.ones((1, 3), np.float32)})[1] == 1
    with pytest.raises(ValueError, match=r"input 'x' has shape \[2, 3\], expected \[1, 3\]"):
        model.check({"x": np.ones((2, 3), np.float32)})
    first, second = _run(model, {"x": np.array([[-1, 2, -3]], np.float32)}, {"x": np.array([[4, -5, 6]], np.float32)})
    np.testing.assert_array_equal(first[0], [[0, 2, 0]])
    np.testing.assert_array_equal(second[0], [[4, 0, 6]])


def test_infer_keeps_integer_outputs_when_model_returns_int64(tmp_path: Path) -> None:
    model = _model(tmp_path, onnx_models.int64_input(tmp_path / "int64.onnx"))
    ids = [np.array([[1, 2, 3]], np.int64), np.array([[4, 5, 6], [7, 8, 9]], np.int64)]
    answers = _run(model, *({"ids": i} for i in ids))
    for i, (tripled, as_float) in zip(ids, answers):
        assert tripled.dtype == np.int64 and as_float.dtype == np.float32
        np.testing.assert_array_equal(tripled, i * 3)


def test_infer_fails_only_the_group_whose_run_fails_when_onnxruntime_raises(multi: Any) -> None:
    # A good group next to one whose feed onnxruntime refuses (object arrays): only the latter fails.
    good = _ab(2, 4)
    answers = multi.infer([(good, 2), ({"a": np.zeros((1, 5), object), "b": np.zeros((1, 5), object)}, 1)])
    np.testing.assert_array_equal(answers[0][0], good["a"] + good["b"])
    assert isinstance(answers[1], str) and answers[1].startswith("onnxruntime failed: ")


class _CountingSession:
    """The runner's real onnxruntime session, counting the runs it is asked for."""

    def __init__(self, session: Any) -> None:
        self.session, self.feeds = session, []

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> Any:
        self.feeds.append({n: a.shape for n, a in feed.items()})
        return self.session.run(names, feed)


def test_infer_runs_once_per_shape_group_when_requests_batch(tmp_path: Path) -> None:
    model = _model(tmp_path, onnx_models.dynamic_dim(tmp_path / "dyn.onnx"))
    model.session = counting = _CountingSession(model.session)
    requests = [{"x": np.ones((rows, length), np.float32)} for rows, length in [(2, 3), (1, 5), (3, 3), (1, 5)]]
    _run(model, *requests)
    assert sorted(f["x"] for f in counting.feeds) == [(2, 5), (5, 3)]  # two runs: 2+3 rows of 3, 1+1 of 5


def test_infer_runs_each_request_alone_when_model_does_not_batch(tmp_path: Path) -> None:
    model = _model(tmp_path, onnx_models.fixed_batch(tmp_path / "fixed.onnx"), max_batch_size=0)
    model.session = counting = _CountingSession(model.session)
    _run(model, {"x": np.ones((1, 3), np.float32)}, {"x": np.ones((1, 3), np.float32)})
    assert counting.feeds == [{"x": (1, 3)}, {"x": (1, 3)}]


def test_check_refuses_non_finite_and_out_of_range_values_when_batched_with_good_ones(tmp_path: Path) -> None:
    """Issue 17's validation inside the check/infer core: the bounds are inclusive, a bad request is
    refused alone, and NaN is refused even on an input without a declared range."""
    model = _model(tmp_path, onnx_models.multi_input(tmp_path / "multi.onnx"), inputs={"a": {"range": [-1.0, 1.0]}})
    edge = {"a": np.array([[-1.0, 1.0, 0.0, 0.5]], np.float32), "b": np.full((1, 4), 7.0, np.float32)}
    over = {"a": np.array([[1.0, 1.001, 0.0, 0.0]], np.float32), "b": np.zeros((1, 4), np.float32)}
    nan_b = {"a": np.zeros((1, 4), np.float32), "b": np.array([[0.0, np.nan, np.inf, 0.0]], np.float32)}
    answers = _run(model, edge, over, nan_b)
    np.testing.assert_array_equal(answers[0][0], edge["a"] + edge["b"])
    assert isinstance(answers[1], ValueError)
    assert str(answers[1]).startswith("input 'a' has 1 value(s) outside [-1, 1] out of 4")
    assert isinstance(answers[2], ValueError)
    assert str(answers[2]).startswith("input 'b' has 2 non-finite value(s) (NaN or +-Inf) out of 4")


def test_check_values_refuses_one_non_finite_value_when_the_rest_is_finite() -> None:
    # One +Inf among finite values (min finite, max not); a lone NaN in a one-element tensor.
    with pytest.raises(ValueError, match=r"^input 'x' has 1 non-finite value\(s\) \(NaN or \+-Inf\) out of 4; "
                                         r"expected finite values$"):
        runner.check_values("x", np.array([0.0, np.inf, 1.0, 2.0], np.float32), None)
    with pytest.raises(ValueError, match=r"^input 'x' has 1 non-finite .* out of 1; expected finite values in "
                                         r"\[-1, 2\]$"):
        runner.check_values("x", np.array([np.nan], np.float32), (-1.0, 2.0))
    runner.check_values("x", np.zeros((0, 4), np.float32), (-1.0, 1.0))  # an empty tensor has nothing wrong


def test_check_values_counts_only_values_beyond_the_bounds_when_integers_have_a_range() -> None:
    # Integers have no NaN, but a declared range still applies; values on the bounds are inside it.
    with pytest.raises(ValueError, match=r"^input 'ids' has 1 value\(s\) outside \[0, 9\] out of 4 \(seen 0 to 11\)$"):
        runner.check_values("ids", np.array([0, 9, 11, 5], np.int64), (0.0, 9.0))
    with pytest.raises(ValueError, match=r"has 2 value\(s\) outside \[-1, 1\] out of 4 \(seen -3 to 2\)$"):
        runner.check_values("a", np.array([-1.0, -3.0, 2.0, 1.0], np.float32), (-1.0, 1.0))
    runner.check_values("ids", np.array([0, 9], np.int64), (0.0, 9.0))
    runner.check_values("ids", np.array([-5, 99], np.int64), None)  # no range, no float: nothing to check


def test_check_reads_the_first_dim_as_batch_when_max_batch_size_is_one(tmp_path: Path) -> None:
    model = _model(tmp_path, onnx_models.multi_input(tmp_path / "multi.onnx"), max_batch_size=1)
    req = _ab(1, 5)
    arrays, batch = model.check(req)
    assert batch == 1 and list(arrays) == ["a", "b"]
    (answer,) = _run(model, req)
    np.testing.assert_array_equal(answer[0], req["a"] + req["b"])


def test_infer_answers_in_config_order_and_types_when_config_differs_from_graph(tmp_path: Path) -> None:
    """A hand-written config may list the outputs in another order than the graph, and ask for a wider
    type: each answer holds exactly the config's outputs, in its order and of its types."""

    def edit(cfg: Any) -> None:
        outputs = [mc.ModelOutput() for _ in cfg.output]
        for o, src in zip(outputs, reversed(cfg.output)):
            o.CopyFrom(src)
            o.data_type = mc.TYPE_FP64
        del cfg.output[:]
        cfg.output.extend(outputs)

    model = _model(tmp_path, onnx_models.multi_input(tmp_path / "multi.onnx"), edit=edit)
    requests = [_ab(2, 1), _ab(1, 2)]
    for req, (diff, total) in zip(requests, _run(model, *requests)):
        assert diff.dtype == np.float64 and total.dtype == np.float64 and diff.flags.c_contiguous
        np.testing.assert_array_equal(diff, (req["a"] - req["b"]).astype(np.float64))
        np.testing.assert_array_equal(total, (req["a"] + req["b"]).astype(np.float64))


def test_infer_still_runs_later_groups_when_an_earlier_group_fails(multi: Any) -> None:
    good = _ab(2, 4)
    answers = multi.infer([({"a": np.zeros((1, 5), object), "b": np.zeros((1, 5), object)}, 1), (good, 2)])
    assert isinstance(answers[0], str) and answers[0].startswith("onnxruntime failed: ")
    np.testing.assert_array_equal(answers[1][0], good["a"] + good["b"])


def test_initialize_applies_the_runner_parameters_when_the_config_sets_them(tmp_path: Path) -> None:
    """The session is built from the config's parameters: the ONNX file's name, thread counts, and the
    graph optimisation level (the load errors need the stub's TritonModelException: server tests)."""
    from build_tools.runner_params import (
        RUNNER_PARAM_INTER,
        RUNNER_PARAM_INTRA,
        RUNNER_PARAM_OPT_LEVEL,
    )

    onnx_file = onnx_models.multi_input(tmp_path / "multi.onnx")

    def params(**values: str) -> Callable[[Any], None]:
        def edit(cfg: Any) -> None:
            for key, value in values.items():
                cfg.parameters[key].string_value = value
        return edit

    model = _model(tmp_path / "a", onnx_file, edit=params(**{
        RUNNER_PARAM_INTRA: "2", RUNNER_PARAM_INTER: "3", RUNNER_PARAM_OPT_LEVEL: "basic"}))
    opts = model.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 3)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert model.max_batch_size == 8 and model.output_names == ["sum:0", "diff"]

    defaults = _model(tmp_path / "b", onnx_file, edit=lambda cfg: cfg.parameters.clear())
    opts = defaults.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_check_still_checks_later_inputs_when_an_optional_one_is_absent(tmp_path: Path) -> None:
    model = _model(tmp_path, onnx_models.multi_input(tmp_path / "multi.onnx"), inputs={"a": {"optional": True}})
    arrays, batch = model.check({"b": np.zeros((3, 4), np.float32)})
    assert list(arrays) == ["b"] and batch == 3
    with pytest.raises(ValueError, match=r"input 'b' has shape \[3, 5\], expected \[-1, 4\]"):
        model.check({"b": np.zeros((3, 5), np.float32)})
