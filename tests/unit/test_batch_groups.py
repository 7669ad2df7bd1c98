"""The runners' shared batching: which requests share a run, what the run is fed, whose rows are whose."""

from __future__ import annotations

import numpy as np

from build_tools.python_models import batch_groups
from build_tools.python_models.batch_groups import Member


def _rows(rows: int, width: int, start: float = 0.0) -> np.ndarray:
    return (start + np.arange(rows * width, dtype=np.float32)).reshape(rows, width)


def test_group_joins_requests_when_names_and_non_batch_dims_agree() -> None:
    a, b, c, d = _rows(2, 3), _rows(1, 5), _rows(4, 3), _rows(1, 3)
    groups = batch_groups.group([(0, {"x": a}, 2), (1, {"x": b}, 1), (2, {"x": c}, 4), (3, {"y": d}, 1)], True)
    assert [[m.index for m in g] for g in groups] == [[0, 2], [1], [3]]  # first-seen order, names count
    assert groups[0][1] == Member(2, {"x": c}, 4)


def test_group_keys_positional_inputs_by_every_input_when_arrays_are_a_list() -> None:
    first = [_rows(1, 3), _rows(1, 2)]
    same = [_rows(2, 3), _rows(2, 2)]
    other = [_rows(1, 3), _rows(1, 4)]
    groups = batch_groups.group([(0, first, 1), (1, other, 1), (2, same, 2)], True)
    assert [[m.index for m in g] for g in groups] == [[0, 2], [1]]


def test_group_runs_every_request_alone_when_model_does_not_batch() -> None:
    requests = [(i, {"x": _rows(1, 3)}, 1) for i in range(3)]
    assert [[m.index for m in g] for g in batch_groups.group(requests, False)] == [[0], [1], [2]]


def test_feed_returns_a_lone_request_uncopied_when_group_has_one_member() -> None:
    arrays = {"x": _rows(2, 3)}
    assert batch_groups.feed([Member(5, arrays, 2)]) is arrays
    listed = [_rows(2, 3)]
    assert batch_groups.feed([Member(5, listed, 2)]) is listed


def test_feed_concatenates_rows_in_member_order_when_group_has_several() -> None:
    a, b = {"x": _rows(2, 3), "y": _rows(2, 1, 50)}, {"x": _rows(1, 3, 100), "y": _rows(1, 1, 200)}
    fed = batch_groups.feed([Member(0, a, 2), Member(1, b, 1)])
    assert list(fed) == ["x", "y"]
    np.testing.assert_array_equal(fed["x"], np.concatenate([a["x"], b["x"]]))
    np.testing.assert_array_equal(fed["y"], [[50], [51], [200]])
    listed = batch_groups.feed([Member(0, [a["x"], a["y"]], 2), Member(1, [b["x"], b["y"]], 1)])
    assert isinstance(listed, list) and len(listed) == 2
    np.testing.assert_array_equal(listed[1], [[50], [51], [200]])


def test_split_gives_each_member_its_own_rows_when_runs_are_shared() -> None:
    members = [Member(4, {}, 2), Member(0, {}, 1), Member(2, {}, 3)]
    out, scores = _rows(6, 2), _rows(6, 1, 10)
    split = list(batch_groups.split(members, [out, scores]))
    assert [i for i, _ in split] == [4, 0, 2]
    np.testing.assert_array_equal(split[0][1][0], out[0:2])
    np.testing.assert_array_equal(split[1][1][1], scores[2:3])
    np.testing.assert_array_equal(split[2][1][0], out[3:6])
    assert all(r.flags.c_contiguous for _, rows in split for r in rows)


def test_split_returns_whole_outputs_when_a_request_runs_alone() -> None:
    # A non-batching model's outputs have no batch dim to slice: they go back whole.
    out = np.arange(3, dtype=np.float32)
    ((index, rows),) = batch_groups.split([Member(7, {}, 1)], [out])
    assert index == 7 and len(rows) == 1 and rows[0] is out
