"""The load tools' MNIST sample relabelled with what the model answers offline, so that load tests can
check every label (the data set's own labels are wrong for 1.4 % of the digits, by the model's error)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest.common import Sample, spec_sample

ONNX = Path(__file__).resolve().parents[2] / "models" / "mnist" / "mnist_cnn.onnx"


@functools.lru_cache(maxsize=1)
def offline_labels() -> np.ndarray:
    """ONNX Runtime's answer for every sample digit, on the same file the server serves."""
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": spec_sample().images})[0].argmax(axis=1)


def relabelled_sample(shift: int = 0) -> Sample:
    """The sample expecting the offline answers (``shift`` 0) or answers ``shift`` classes off (never right)."""
    sample = spec_sample()
    return Sample(images=sample.images, labels=(offline_labels() + shift) % 10, pngs=sample.pngs)
