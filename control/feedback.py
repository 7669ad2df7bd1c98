"""Labelled feedback for fine-tuning: served inputs whose ground truth arrived later.

Two sources, one shape (`Feedback`: uint8 inputs shaped like the model's input without the batch axis,
int64 labels):

* the prediction log (`control.monitor.contract`): records that kept their model-ready input, joined by
  request id with the `labels` table; an id logged more than once counts once, with its latest record;
  the newest `window` of them;
* an exported file (`.npz` with `images` and `labels`).

`split` holds a seeded share back from training: the fine-tune gate compares candidate and champion on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build_tools.errors import FinetuneError
from control.db import Database
from control.monitor import contract

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Feedback:
    """inputs: uint8 [N, *input dims]; labels: int64 [N]; request_ids: where they came from ('' for a file)."""

    inputs: np.ndarray
    labels: np.ndarray
    request_ids: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Feedback:
        return Feedback(self.inputs[index], self.labels[index], tuple(self.request_ids[i] for i in index), self.source)


def _shaped(flat: np.ndarray, dims: tuple[int, ...], what: str) -> np.ndarray:
    size = int(np.prod(dims))
    if flat.size % size:
        raise FinetuneError(f"{what}: {flat.size} values do not make inputs of shape {list(dims)} ({size} each)")
    return flat.reshape(-1, *dims)


def from_database(
    db: Database, log_model: str, dims: tuple[int, ...], window: int, num_classes: int | None = None
) -> Feedback:
    """The newest `window` labelled requests of `log_model` that kept their input (latest record per id)."""
    contract.migrate(db)
    size = int(np.prod(dims))
    # An input of another size (another model logging under this name) or a label outside the classes
    # is not feedback for this model: left out before the window is counted.
    rows = db.query(
        "SELECT p.request_id, p.ts, p.input, l.label FROM predictions p"
        " JOIN labels l ON l.request_id = p.request_id"
        " WHERE p.model = ? AND p.input IS NOT NULL AND length(p.input) = ? AND l.label >= 0 AND l.label < ?"
        " AND p.id = (SELECT MAX(p2.id) FROM predictions p2 WHERE p2.request_id = p.request_id AND p2.model = ?)"
        " ORDER BY p.ts DESC, p.id DESC LIMIT ?",
        (log_model, size, num_classes if num_classes is not None else 2**31 - 1, log_model, window),
    )
    kept = list(rows)
    kept.reverse()  # oldest first
    inputs = (np.frombuffer(b"".join(bytes(r["input"]) for r in kept), dtype=np.uint8).copy()
              if kept else np.zeros(0, np.uint8))
    logger.info("feedback: %d labelled request(s) of %s with their input (window %d)", len(kept), log_model, window)
    return Feedback(
        inputs=inputs.reshape(-1, *dims), labels=np.array([int(r["label"]) for r in kept], dtype=np.int64),
        request_ids=tuple(str(r["request_id"]) for r in kept), source=f"prediction log ({log_model})",
    )


def from_file(path: Path, dims: tuple[int, ...], num_classes: int | None = None) -> Feedback:
    """An exported set: `images` (uint8, any shape that reshapes to the input's) and `labels`."""
    try:
        with np.load(path) as data:
            missing = sorted({"images", "labels"} - set(data.files))
            if missing:
                raise FinetuneError(f"{path}: needs arrays 'images' and 'labels'; missing {missing}, has {data.files}")
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError) as e:
        raise FinetuneError(f"{path}: cannot read it as .npz: {e}") from e
    if images.dtype != np.uint8:
        raise FinetuneError(f"{path}: 'images' must be uint8 (model-ready pixels 0-255), got {images.dtype}")
    inputs = _shaped(images, dims, f"{path}: 'images' {list(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(inputs):
        raise FinetuneError(f"{path}: 'labels' must be one integer per image ({len(inputs)}), got {list(labels.shape)}")
    labels = labels.astype(np.int64)
    if num_classes is not None and len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
        raise FinetuneError(f"{path}: labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return Feedback(inputs, labels, ("",) * len(labels), str(path))


def split(feedback: Feedback, holdback: float, seed: int) -> tuple[Feedback, Feedback]:
    """(train, held back): a seeded random share of every request held back, never trained on."""
    order = np.random.default_rng(seed).permutation(len(feedback))
    n_back = max(1, round(len(feedback) * holdback))
    return feedback.take(np.sort(order[n_back:])), feedback.take(np.sort(order[:n_back]))
