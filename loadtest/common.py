"""What every load tool shares: the served models' names and the sample to send (both from the spec),
and the response checks.

The sample is the spec's labelled evaluation set of the classifier (``models.<classifier>.evaluation``;
for the showcase, the 500 held-out digits): raw tensors for the classifier, the same images encoded as
PNG for the ensemble (an image already in the model's layout passes the showcase's preprocessing
bit-identical, so both see the same pixels). The model gets about 98.6 % of these right, so a check
against the dataset's label fails about 1.4 % of requests by design; the shape and label-range checks
never should.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np

from build_tools.served import ClassifierNames, load_classifier_names
from loadtest.errors import ResponseCheckError


@functools.lru_cache(maxsize=1)
def served_names() -> ClassifierNames:
    """The classifier and ensemble the load tools call, from the spec ($TRITON_DEPLOY_SPEC or deploy.yaml)."""
    return load_classifier_names()

NUM_CLASSES = 10


def sample_description() -> str:
    """How reports name the sample: the spec's description of the set, and its size."""
    ev = served_names().evaluation
    return f"{ev.description if ev else 'the spec evaluation set'}, {len(spec_sample())} images"


@dataclass(frozen=True)
class Sample:
    """Images to send: ``images`` float32 [N, 1, H, W] (raw 0..255), ``pngs`` the same images as PNG."""

    images: np.ndarray
    labels: np.ndarray
    pngs: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One image's tensor shape without the batch dimension ([1, H, W])."""
        return tuple(self.images.shape[1:])

    def indices(self, start: int, batch_size: int) -> np.ndarray:
        """``batch_size`` consecutive items from ``start``, wrapping around the sample."""
        return (start + np.arange(batch_size)) % len(self)

    def tensor_batch(self, start: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices(start, batch_size)
        return np.ascontiguousarray(self.images[idx]), self.labels[idx]

    def png_batch(self, start: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """An object array [batch, 1] of PNG bytes (the ensemble's BYTES input) and the labels."""
        idx = self.indices(start, batch_size)
        arr = np.empty((batch_size, 1), dtype=object)
        for row, i in enumerate(idx):
            arr[row, 0] = self.pngs[i]
        return arr, self.labels[idx]


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def spec_sample() -> Sample:
    """The spec's labelled evaluation set of the classifier (loaded once per process)."""
    from clients.datasets import spec_evaluation_set

    data, _ = spec_evaluation_set(served_names())
    images = data.images.astype(np.float32)[:, None, :, :]
    pngs = tuple(encode_png(img) for img in data.images)
    return Sample(images=images, labels=data.labels, pngs=pngs)


def check_probabilities(
    probabilities: np.ndarray | None, batch_size: int, expected: np.ndarray | None = None
) -> np.ndarray:
    """The predicted labels; raises ResponseCheckError when the response is not a valid answer.

    Valid: shape [batch_size, 10], finite values in [0, 1] whose argmax is a label 0..9; with
    ``expected``, every predicted label must equal it.
    """
    if probabilities is None:
        raise ResponseCheckError("the response has no probabilities output")
    if probabilities.shape != (batch_size, NUM_CLASSES):
        raise ResponseCheckError(
            f"the probabilities have shape {list(probabilities.shape)}, expected [{batch_size}, {NUM_CLASSES}]"
        )
    if not np.isfinite(probabilities).all() or probabilities.min() < 0 or probabilities.max() > 1.0001:
        raise ResponseCheckError("the output holds values outside [0, 1] (not probabilities)")
    labels = probabilities.argmax(axis=1)
    if expected is not None and not np.array_equal(labels, expected):
        wrong = np.flatnonzero(labels != expected)
        raise ResponseCheckError(
            f"{len(wrong)} of {batch_size} predicted labels differ from the expected ones "
            f"(first: predicted {int(labels[wrong[0]])}, expected {int(expected[wrong[0]])})"
        )
    return labels
