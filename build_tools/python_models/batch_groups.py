"""Requests that share one model run, for the embedded runners (onnx_runner, torch_runner).

Triton hands execute() several requests at once. Requests whose inputs agree in everything but the
batch dimension can be concatenated into one run; the run's outputs are then split back, row by row, to
the requests in the order they were concatenated. The runners import this module from the installed
package, as they import `build_tools.runner_params`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

# A request's checked inputs: by name (onnx_runner) or in config order (torch_runner).
Arrays = dict[str, np.ndarray] | list[np.ndarray]


class Member(NamedTuple):
    index: int  # the request's position in execute()'s list
    arrays: Arrays
    batch: int  # rows of the request (1 when the model does not batch)


def _shape_key(arrays: Arrays) -> Hashable:
    if isinstance(arrays, dict):
        return tuple((name, a.shape[1:]) for name, a in arrays.items())
    return tuple(a.shape[1:] for a in arrays)


def group(requests: Iterable[tuple[int, Arrays, int]], batching: bool) -> list[list[Member]]:
    """Requests (index, arrays, batch) that can share a run, in first-seen order.

    With batching, requests with the same inputs and the same non-batch dims share a group; without it
    (max_batch_size 0: the first dim is part of the shape) every request runs alone.
    """
    groups: dict[Hashable, list[Member]] = {}
    for index, arrays, batch in requests:
        key = _shape_key(arrays) if batching else index
        members = groups.get(key)
        if members is None:
            groups[key] = [Member(index, arrays, batch)]
        else:
            members.append(Member(index, arrays, batch))
    return list(groups.values())


def feed(members: Sequence[Member]) -> Arrays:
    """The group's inputs: a lone request's arrays as they are (no copy), else each input's rows
    concatenated in member order."""
    first = members[0].arrays
    if len(members) == 1:
        return first
    if isinstance(first, dict):
        return {name: np.concatenate([m.arrays[name] for m in members]) for name in first}
    return [np.concatenate([m.arrays[k] for m in members]) for k in range(len(first))]


def split(members: Sequence[Member], results: Sequence[np.ndarray]) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(request index, its outputs) per member: each member's rows of the run's outputs, in `feed` order.

    Row slices of a C-contiguous output stay C-contiguous, and a lone request gets the outputs whole.
    """
    if len(members) == 1:
        yield members[0].index, list(results)
        return
    offset = 0
    for m in members:
        end = offset + m.batch
        yield m.index, [r[offset:end] for r in results]
        offset = end
