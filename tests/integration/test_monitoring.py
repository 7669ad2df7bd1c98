"""Monitoring inside Triton, against the real server: the prediction and input metrics on the metrics
endpoint move by exactly the requests sent, rejected images are counted by reason, and every answered
request leaves one record in the prediction log (SQLite in the session server; PostgreSQL in a second
server below)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from build_tools.build import build_repositories
from build_tools.errors import ClientError, DatabaseError
from build_tools.server import ServerOptions, TritonServer
from build_tools.spec import DeploySpec, FlavorSpec, load_spec
from clients.datasets import mnist_holdout
from clients.images import bytes_batch, encode_png
from control.db import Database
from control.monitor import contract
from control.monitor.serving import DATABASE_ENV, INPUT_STAT, LOG_RECORDS, PREDICTIONS, REJECTED
from triton_api import TritonClient
from triton_api.metrics import metric_series, metric_value, scrape

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "models/mnist/mnist_cnn.onnx"
N = 40


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """N held-out digits (uint8 [N, 28, 28]) and their offline ONNX Runtime classes."""
    holdout = mnist_holdout()
    images = holdout.images[:N]
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"image": images.astype(np.float32)[:, None]})[0]
    return images, scores.argmax(axis=1)


FLUSH_S = load_spec(ROOT / "deploy.yaml").monitoring.flush_ms / 1000.0


def settle(metrics_url: str, read: Callable[[str], float], want: float, timeout_s: float = 20.0) -> float:
    """Scrape until `read` reaches `want` (the monitor flushes every flush_ms), then once more a flush
    later so a count that overshoots is seen too; returns the last value."""
    deadline = time.monotonic() + timeout_s + 2 * FLUSH_S
    value = read(scrape(metrics_url))
    while value < want and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read(scrape(metrics_url))
    time.sleep(FLUSH_S + 0.2)
    return read(scrape(metrics_url))


def quiet_snapshot(metrics_url: str) -> str:
    """The metrics once earlier tests' pending counts have been flushed (two flush intervals)."""
    time.sleep(2 * FLUSH_S + 0.2)
    return scrape(metrics_url)


def class_counts(text: str, model: str) -> dict[str, float]:
    return {lab["class"]: v for lab, v in metric_series(text, PREDICTIONS) if lab.get("model") == model}


def total(text: str, name: str, **labels: str) -> float:
    return metric_value(text, name, **labels) or 0.0


def test_prediction_metrics_count_exactly_the_requests_when_digits_go_through_the_ensemble(
    embedded_server: TritonServer, served_root: Path, digits
) -> None:
    images, expected = digits
    url = embedded_server.metrics_url
    before = quiet_snapshot(url)
    run = uuid.uuid4().hex[:8]
    ids = [f"mon-{run}-{i}" for i in range(N)]
    with TritonClient(embedded_server.http_url) as client:
        for request_id, image in zip(ids, images):
            client.infer("mnist", {"image_bytes": bytes_batch([encode_png(image)])}, request_id=request_id)

    def sent(text: str) -> float:
        return total(text, PREDICTIONS, model="mnist_classifier") - total(before, PREDICTIONS, model="mnist_classifier")

    assert settle(url, sent, N) == N
    after = scrape(url)
    # Per class: exactly the offline predictions of the digits sent (the class label comes from labels.txt).
    now, then = class_counts(after, "mnist_classifier"), class_counts(before, "mnist_classifier")
    moved = {c: v - then.get(c, 0.0) for c, v in now.items()}
    want = {str(c): float(n) for c, n in zip(*np.unique(expected, return_counts=True))}
    assert {c: v for c, v in moved.items() if v} == want
    series = metric_series(after, PREDICTIONS)
    assert all(lab["version"] == "1" for lab, _ in series if lab["model"] == "mnist_classifier")
    # The top-1 probability histogram: _count, the +Inf bucket and every bucket at most that.
    for name, kw in [("tdk_serving_top_probability_count", {}), ("tdk_serving_top_probability_bucket", {"le": "+Inf"})]:
        moved_total = total(after, name, model="mnist_classifier", **kw) - total(
            before, name, model="mnist_classifier", **kw)
        assert moved_total == N, name
    buckets = sorted(
        (float(lab["le"]), v) for lab, v in metric_series(after, "tdk_serving_top_probability_bucket")
        if lab["model"] == "mnist_classifier"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "cumulative buckets must not decrease"
    # Input statistics: the preprocessing step (all five, from the images it produced) and the router's input.
    for stat, base in INPUT_STAT.items():
        moved_pre = total(after, f"{base}_count", model="mnist_preprocess") - total(
            before, f"{base}_count", model="mnist_preprocess")
        assert moved_pre == N, stat
    for stat in ("mean_intensity", "ink_fraction", "bbox_size", "com_offset"):
        base = INPUT_STAT[stat]
        assert total(after, f"{base}_count", model="mnist_classifier", input="image") - total(
            before, f"{base}_count", model="mnist_classifier", input="image") == N
    # 28x28 PNGs: original_size is 28 for every one, so its sum moved by 28 * N.
    assert total(after, "tdk_serving_input_original_size_pixels_sum", model="mnist_preprocess") - total(
        before, "tdk_serving_input_original_size_pixels_sum", model="mnist_preprocess") == pytest.approx(28.0 * N)

    # The prediction log: one record per request, with the version, the class and the statistics.
    db_path = served_root / "monitoring" / "predictions.db"
    assert db_path.is_file(), f"no prediction log at {db_path}"
    with Database(f"sqlite:///{db_path}") as db:
        rows: list = []
        deadline = time.monotonic() + 10
        while len(rows) < N and time.monotonic() < deadline:
            rows = db.query(
                "SELECT * FROM predictions WHERE request_id LIKE ? ORDER BY id", (f"mon-{run}-%",))
            time.sleep(0.2)
    records = {r.request_id: r for r in map(contract.prediction_from_row, rows)}
    assert len(rows) == N and set(records) == set(ids)
    for request_id, image, cls in zip(ids, images, expected):
        rec = records[request_id]
        assert (rec.model, rec.version, rec.predicted) == ("mnist_classifier", "1", int(cls))
        assert 0.0 < rec.top_prob <= 1.0
        assert set(rec.stats) == {"mean_intensity", "ink_fraction", "bbox_size", "com_offset", "original_size"}
        assert rec.stats["original_size"] == 28.0  # the 28x28 PNG as sent
        assert rec.stats["mean_intensity"] == pytest.approx(float(image.mean()) / 255.0, rel=1e-5)
        if rec.input is not None:  # kept for a sample: the model-ready input, byte for byte
            assert rec.input == image.tobytes()
    assert total(scrape(url), LOG_RECORDS, model="mnist_classifier", outcome="written") - total(
        before, LOG_RECORDS, model="mnist_classifier", outcome="written") >= N


def logged_records(served_root: Path, prefix: str, n: int,
                   timeout_s: float = 15.0) -> dict[str, contract.PredictionRecord]:
    """The session server's prediction log records whose request id starts with `prefix` (waits for n)."""
    with Database(f"sqlite:///{served_root / 'monitoring' / 'predictions.db'}") as db:
        rows: list = []
        deadline = time.monotonic() + timeout_s
        while len(rows) < n and time.monotonic() < deadline:
            rows = db.query("SELECT * FROM predictions WHERE request_id LIKE ? ORDER BY id", (prefix + "%",))
            time.sleep(0.2)
    return {r.request_id: r for r in map(contract.prediction_from_row, rows)}


def test_prediction_log_records_carry_the_size_sent_when_images_of_several_sizes_go_through_the_ensemble(
    embedded_server: TritonServer, served_root: Path, digits
) -> None:
    """original_size travels from preprocessing (the image's header) to the router, which writes the
    record: each record holds sqrt(width x height) of the image as the client sent it."""
    from PIL import Image

    images, _ = digits
    sizes = [(28, 28), (56, 56), (90, 40), (200, 150), (64, 256)]
    run = uuid.uuid4().hex[:8]
    sent: dict[str, float] = {}
    with TritonClient(embedded_server.http_url) as client:
        for i, (w, h) in enumerate(sizes):
            digit = Image.fromarray(np.asarray(images[i], dtype=np.uint8), mode="L").resize((w, h), Image.BILINEAR)
            request_id = f"size-{run}-{i}"
            client.infer("mnist", {"image_bytes": bytes_batch([encode_png(np.asarray(digit))])}, request_id=request_id)
            sent[request_id] = float(np.sqrt(w * h))
        # Several images in one request: one record each, each with its own size.
        pair = [encode_png(np.asarray(Image.fromarray(images[7], mode="L").resize((w, w)))) for w in (33, 120)]
        client.infer("mnist", {"image_bytes": bytes_batch(pair)}, request_id=f"size-{run}-pair")
        sent[f"size-{run}-pair"], sent[f"size-{run}-pair/1"] = 33.0, 120.0
        # A model-ready tensor straight to the router: no preprocessing, its own size.
        client.infer("mnist_classifier_router", {"image": images[8].astype(np.float32)[None, None]},
                     request_id=f"size-{run}-tensor")
        sent[f"size-{run}-tensor"] = 28.0
    records = logged_records(served_root, f"size-{run}-", len(sent))
    assert {rid: rec.stats.get("original_size") for rid, rec in records.items()} == pytest.approx(sent)


def test_rejected_images_are_counted_by_reason_when_preprocessing_refuses_them(embedded_server: TritonServer) -> None:
    url = embedded_server.metrics_url
    before = quiet_snapshot(url)
    bad = {"empty": b"", "not_an_image": b"definitely not a PNG", "too_small": encode_png(np.full((4, 4), 200))}
    with TritonClient(embedded_server.http_url) as client:
        for payload in bad.values():
            with pytest.raises(ClientError):
                client.infer("mnist", {"image_bytes": bytes_batch([payload])})
        # The server keeps serving, and a good image is not counted as rejected.
        client.infer("mnist", {"image_bytes": bytes_batch([encode_png(mnist_holdout().images[0])])})

    def rejected(text: str) -> float:
        return total(text, REJECTED, model="mnist_preprocess") - total(before, REJECTED, model="mnist_preprocess")

    assert settle(url, rejected, len(bad)) == len(bad)
    after = scrape(url)
    for reason in bad:
        assert total(after, REJECTED, model="mnist_preprocess", reason=reason) - total(
            before, REJECTED, model="mnist_preprocess", reason=reason) == 1, reason


def test_torchscript_runner_counts_its_own_predictions_when_served_directly(
    embedded_server: TritonServer, digits
) -> None:
    images, expected = digits
    url = embedded_server.metrics_url
    model = "mnist_classifier_torchscript"
    before = quiet_snapshot(url)
    if f'model="{model}"' not in before:
        pytest.skip(f"{model} is not served here (no PyTorch in this environment)")
    with TritonClient(embedded_server.http_url) as client:
        for i, image in enumerate(images[:8]):
            client.infer(model, {"image": image.astype(np.float32)[None, None]}, request_id=f"ts-{i}")

    def sent(text: str) -> float:
        return total(text, PREDICTIONS, model=model) - total(before, PREDICTIONS, model=model)

    assert settle(url, sent, 8) == 8
    now, then = class_counts(scrape(url), model), class_counts(before, model)
    moved = {c: v - then.get(c, 0.0) for c, v in now.items() if v - then.get(c, 0.0)}
    assert moved == {str(c): float(n) for c, n in zip(*np.unique(expected[:8], return_counts=True))}


def test_prediction_log_lands_in_postgresql_when_the_server_is_pointed_at_it(
    project_spec: DeploySpec, tmp_path: Path, postgres_url: str, digits
) -> None:
    """A second server logging to a real PostgreSQL through the environment override. Its classifier has
    no lifecycle, so no router: the embedded ONNX Runtime runner watches its own predictions."""
    out = tmp_path / "repo"
    clf = project_spec.models["mnist_classifier"]
    models = {"mnist_classifier": clf.model_copy(update={
        "formats": ["onnx"], "torchscript": type(clf.torchscript)(), "lifecycle": None,
        "instance_groups": {"embedded": clf.instance_groups["embedded"][:1]},
    })}
    spec = project_spec.model_copy(update={
        "flavors": {"embedded": FlavorSpec(output=str(out))}, "models": models, "ensembles": {},
    })
    spec = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"flush_ms": 100})})
    build_repositories(spec, ["embedded"])
    images, expected = digits
    server = TritonServer(ServerOptions(model_repositories=[out], log_file=tmp_path / "triton.log",
                                        workdir=tmp_path / "server", env={DATABASE_ENV: postgres_url}))
    server.start()
    try:
        run = uuid.uuid4().hex[:8]
        with TritonClient(server.grpc_url, protocol="grpc") as client:
            for i, image in enumerate(images[:10]):
                client.infer("mnist_classifier", {"image": image.astype(np.float32)[None, None]},
                             request_id=f"pg-{run}-{i}")
        with Database(postgres_url) as db:
            rows: list = []
            deadline = time.monotonic() + 15
            while len(rows) < 10 and time.monotonic() < deadline:
                time.sleep(0.2)
                try:
                    rows = db.query("SELECT * FROM predictions WHERE request_id LIKE ? ORDER BY id", (f"pg-{run}-%",))
                except DatabaseError:  # the table appears with the writer's first connection
                    continue
        got = {r.request_id: (r.model, r.version, r.predicted) for r in map(contract.prediction_from_row, rows)}
        assert got == {f"pg-{run}-{i}": ("mnist_classifier", "1", int(c)) for i, c in enumerate(expected[:10])}
        # The runner's metrics count the same ten requests (warmup requests come first, so compare after).
        text = scrape(server.metrics_url)
        assert metric_value(text, LOG_RECORDS, model="mnist_classifier", outcome="failed") == 0
    finally:
        server.stop()
