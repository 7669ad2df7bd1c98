"""The MNIST showcase: served predictions equal offline ONNX Runtime; preprocessing follows MNIST; bad images
get their own errors while their batch neighbours are answered."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from build_tools.errors import ClientError
from build_tools.server import TritonServer
from clients.datasets import mnist_holdout
from clients.evaluate import EvalSettings, evaluate
from clients.images import bytes_batch, encode_png
from triton_api import PROTOCOLS, TritonClient

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "models/mnist/mnist_cnn.onnx"


@pytest.fixture(scope="module")
def holdout():
    return mnist_holdout()


@pytest.fixture(scope="module")
def offline(holdout) -> np.ndarray:
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": holdout.images.astype(np.float32)[:, None]})[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_served_predictions_equal_offline_when_holdout_evaluated(
    embedded_server: TritonServer, holdout, protocol: str
) -> None:
    settings = EvalSettings(
        urls={"http": embedded_server.http_url, "grpc": embedded_server.grpc_url},
        onnx=ONNX, classifier_model="mnist_classifier", ensemble_model="mnist",
        protocols=[protocol], batch_size=32, concurrency=4, progress=False,
    )
    ev = evaluate(settings, holdout)
    assert ev.ok, ev.failures
    assert {r.name for r in ev.results} == {"classifier", "ensemble"}
    for r in ev.results:
        assert r.n == 500 and r.parity_disagreements == 0 and not r.errors
        assert r.parity_max_abs_diff <= 1e-5
        assert r.accuracy == pytest.approx(ev.offline_accuracy)
    assert ev.offline_accuracy >= 0.97


def test_preprocessing_returns_mnist_pixels_when_given_mnist_png(embedded_server: TritonServer, holdout) -> None:
    images = holdout.images[:64]
    with TritonClient(embedded_server.grpc_url, "grpc") as client:
        out = client.infer("mnist_preprocess", {"image_bytes": bytes_batch(encode_png(i) for i in images)}, ["image"])
    assert out["image"].dtype == np.float32 and out["image"].shape == (64, 1, 28, 28)
    assert np.array_equal(out["image"][:, 0], images.astype(np.float32))


def _canvas(digit: np.ndarray, size: tuple[int, int], at: tuple[int, int], scale: int, invert: bool) -> bytes:
    """An MNIST digit drawn big and off-centre on a larger canvas, optionally dark ink on white paper."""
    big = np.asarray(Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR))
    canvas = np.zeros(size, np.uint8)
    canvas[at[0]: at[0] + big.shape[0], at[1]: at[1] + big.shape[1]] = big
    if invert:
        canvas = 255 - canvas
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("case", "size", "at", "scale", "invert"),
    [
        ("inverted_28x28", (28, 28), (0, 0), 1, True),
        ("off_centre_corner", (120, 160), (2, 100), 2, False),
        ("inverted_off_centre", (96, 96), (40, 0), 2, True),
        ("shifted_within_28x28", (28, 28), (0, 0), 1, False),
    ],
)
def test_ensemble_classifies_digit_when_inverted_or_off_centre(
    embedded_server: TritonServer, holdout, offline: np.ndarray, case: str, size, at, scale: int, invert: bool
) -> None:
    # Digits the offline model gets right, so a miss is the preprocessing's fault.
    chosen = np.where(offline.argmax(axis=1) == holdout.labels)[0][:50]
    payloads = []
    for i in chosen:
        digit = holdout.images[i]
        if case == "shifted_within_28x28":
            # 4 px down and left, filled with background: the digit touches the border, off-centre.
            digit = np.pad(digit, ((4, 0), (0, 4)))[:28, 4:]
        payloads.append(_canvas(digit, size, at, scale, invert))
    with TritonClient(embedded_server.http_url) as client:
        probs = client.infer("mnist", {"image_bytes": bytes_batch(payloads)}, ["probabilities"])["probabilities"]
    accuracy = float((probs.argmax(axis=1) == holdout.labels[chosen]).mean())
    assert accuracy >= 0.94, f"{case}: {accuracy:.2f}"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height in its header (and carries no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bad_inputs(good_png: bytes) -> dict[str, tuple[bytes, str]]:
    one_pixel = io.BytesIO()
    Image.new("L", (1, 1), 0).save(one_pixel, format="PNG")
    return {
        "empty": (b"", "empty image bytes"),
        "not_an_image": (b"GIF? no, just text pretending to be an image", "not an image"),
        "truncated_png": (good_png[: len(good_png) // 2], "truncated"),
        "decompression_bomb": (_png_header_only(100000, 100000), "decompression bomb"),
        "one_pixel": (one_pixel.getvalue(), "1x1 pixels"),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_images_get_own_errors_when_batched_with_good_ones(
    embedded_server: TritonServer, holdout, offline: np.ndarray, protocol: str
) -> None:
    """Concurrent single-image requests share dynamic batches; each bad one fails alone, with its reason."""
    url = embedded_server.http_url if protocol == "http" else embedded_server.grpc_url
    good = [(encode_png(holdout.images[i]), int(offline[i].argmax())) for i in range(10)]
    bad = _bad_inputs(good[0][0])
    jobs: list[tuple[str, bytes, str | int]] = []
    for (name, (payload, reason)), (png, label) in zip(bad.items(), good):
        jobs += [(name, payload, reason), (f"good_{label}", png, label)]
    jobs += [(f"good_{label}", png, label) for png, label in good[len(bad):]]

    def send(job: tuple[str, bytes, str | int]) -> tuple[str, str | int, object]:
        name, payload, expect = job
        with TritonClient(url, protocol) as client:
            try:
                out = client.infer("mnist", {"image_bytes": bytes_batch([payload])}, ["probabilities"])
            except ClientError as e:
                return name, expect, e
        return name, expect, int(out["probabilities"].argmax())

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    for name, expect, got in results:
        if name.startswith("good_"):
            assert got == expect, f"{name}: {got}"
        else:
            assert isinstance(got, ClientError), f"{name} was accepted"
            assert str(expect) in str(got), f"{name}: {got}"
            assert "mnist_preprocess" in str(got)
    with TritonClient(url, protocol) as client:
        assert client.is_ready()


def test_request_error_names_element_when_one_image_of_many_is_bad(embedded_server: TritonServer, holdout) -> None:
    payloads = [encode_png(holdout.images[0]), b"", encode_png(holdout.images[1])]
    with TritonClient(embedded_server.http_url) as client:
        with pytest.raises(ClientError, match=r"image 1: empty image bytes"):
            client.infer("mnist", {"image_bytes": bytes_batch(payloads)}, ["probabilities"])
        out = client.infer("mnist", {"image_bytes": bytes_batch(payloads[::2])}, ["probabilities"])
    assert out["probabilities"].shape == (2, 10)


def _evaluate_cli(server: TritonServer, version: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients.evaluate", "--http-url", server.http_url, "--grpc-url", server.grpc_url,
         "--classifier-model", "t_mnist_versions", "--path", "classifier", "--model-version", version,
         "--onnx", str(ONNX), "--report-dir", str(tmp_path / f"v{version}"), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_evaluate_exits_nonzero_when_served_version_differs_from_reference(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    """Version 2 has slightly noisy weights: accuracy stays above the threshold, parity does not."""
    same = _evaluate_cli(embedded_server, "1", tmp_path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "PASS" in same.stdout
    broken = _evaluate_cli(embedded_server, "2", tmp_path)
    assert broken.returncode == 1, broken.stdout
    assert "top-1 prediction(s) differ from offline ONNX Runtime" in broken.stdout
    assert "below the threshold" not in broken.stdout  # it is parity, not accuracy, that fails
    assert (tmp_path / "v2" / "evaluation.json").is_file() and (tmp_path / "v2" / "evaluation.md").is_file()
    assert list((tmp_path / "v2").glob("confusion_*.png"))
