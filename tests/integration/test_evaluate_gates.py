"""`triton-evaluate` fails on purpose against the real server: exit code 1 and the message of the broken rule.

The server always serves the real classifier. What changes is the reference the gate compares with
(an ONNX copy whose output is offset on purpose) or the labels of the evaluated digits, so each rule
is shown failing alone: a drift without any top-1 change, exactly one flipped prediction, and an
accuracy just below the default threshold (with parity intact).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from build_tools.server import TritonServer
from clients.datasets import mnist_holdout
from tests.support.onnx_models import with_output_offset

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "models/mnist/mnist_cnn.onnx"


@pytest.fixture(scope="module")
def offline() -> np.ndarray:
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": mnist_holdout().images.astype(np.float32)[:, None]})[0]


def _evaluate(server: TritonServer, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "clients.evaluate", "--http-url", server.http_url, "--grpc-url", server.grpc_url,
           "--path", "classifier", "--protocol", "http", "--report-dir", str(out / "report"), "--no-progress",
           *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _one_flip_offset(probs: np.ndarray) -> tuple[np.ndarray, int]:
    """An offset on one class that moves exactly one prediction to that class (and no other)."""
    top = probs.argmax(axis=1)
    best: tuple[float, int, float] | None = None
    for k in range(probs.shape[1]):
        margins = np.sort(probs[top != k].max(axis=1) - probs[top != k, k])
        gap = margins[1] - margins[0]
        if best is None or gap > best[0]:
            best = (float(gap), k, float((margins[0] + margins[1]) / 2))
    assert best is not None and best[0] > 1e-5, "no class with a clear single flip"
    offset = np.zeros(probs.shape[1], np.float32)
    offset[best[1]] = best[2]
    flipped = int(((probs + offset).argmax(axis=1) != top).sum())
    assert flipped == 1, flipped
    return offset, best[1]


def test_evaluate_exits_1_on_drift_alone_when_reference_differs_without_a_flip(
    embedded_server: TritonServer, tmp_path: Path, offline: np.ndarray
) -> None:
    reference = with_output_offset(ONNX, tmp_path / "drift.onnx", np.full(10, 2e-3, np.float32))
    proc = _evaluate(embedded_server, tmp_path, "--onnx", str(reference))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "probabilities differ from offline ONNX Runtime by up to 2.00e-03 (tolerance 1e-04)" in proc.stdout
    assert "top-1" not in proc.stdout and "below the threshold" not in proc.stdout


def test_evaluate_passes_when_drift_is_within_tolerance(embedded_server: TritonServer, tmp_path: Path) -> None:
    reference = with_output_offset(ONNX, tmp_path / "tiny.onnx", np.full(10, 5e-5, np.float32))
    proc = _evaluate(embedded_server, tmp_path, "--onnx", str(reference))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout


def test_evaluate_exits_1_when_exactly_one_prediction_differs_from_reference(
    embedded_server: TritonServer, tmp_path: Path, offline: np.ndarray
) -> None:
    offset, _ = _one_flip_offset(offline)
    reference = with_output_offset(ONNX, tmp_path / "flip.onnx", offset)
    proc = _evaluate(embedded_server, tmp_path, "--onnx", str(reference), "--parity-atol", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "classifier over http: 1 top-1 prediction(s) differ from offline ONNX Runtime" in proc.stdout
    assert "below the threshold" not in proc.stdout


def _image_folder(root: Path, offline: np.ndarray, relabelled: int, count: int = 100) -> Path:
    """``count`` held-out digits the model gets right, ``relabelled`` of them filed under a wrong label."""
    data = mnist_holdout()
    right = np.flatnonzero(offline.argmax(axis=1) == data.labels)[:count]
    for n, i in enumerate(right):
        label = int(data.labels[i]) if n >= relabelled else (int(data.labels[i]) + 1) % 10
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i]).save(folder / f"{n:03d}.png")
    return root


@pytest.mark.parametrize(("relabelled", "accuracy", "passes"), [(4, "0.9600", False), (3, "0.9700", True)])
def test_evaluate_applies_default_accuracy_threshold_when_labels_are_wrong(
    embedded_server: TritonServer, tmp_path: Path, offline: np.ndarray, relabelled: int, accuracy: str, passes: bool
) -> None:
    folder = _image_folder(tmp_path / "digits", offline, relabelled)
    proc = _evaluate(embedded_server, tmp_path, "--image-folder", str(folder), "--onnx", str(ONNX))
    assert f"{accuracy}        0" in proc.stdout, proc.stdout + proc.stderr  # accuracy, no parity disagreement
    if passes:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"classifier over http: accuracy {accuracy} is below the threshold 0.97" in proc.stdout
        assert "top-1" not in proc.stdout
