"""`make lifecycle-demo`: a second MNIST version through the whole lifecycle on the embedded server.

Perturbs the trained classifier's weights (a stand-in for a retrained model with the same interface),
stages it (lint, accuracy gate, load), sends it 10% of the traffic, prints the per-version numbers from
the metrics endpoint, promotes it, then rolls back to the first version; a closed-loop load runs all
along and the request counts at the end show that none was lost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def perturbed_copy(src: Path, dst: Path, scale: float, seed: int = 0) -> Path:
    """Copy an ONNX model with Gaussian noise (`scale` x each weight tensor's std) on its float weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for i, init in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.size < 2:
            continue
        noisy = arr + rng.normal(0.0, scale * float(arr.std() or 1.0), arr.shape).astype(np.float32)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst
