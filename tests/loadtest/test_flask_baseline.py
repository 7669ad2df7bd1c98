"""The seed's Flask baseline answers like the model does (Flask test client and a started process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from build_tools.served import load_classifier_names
from loadtest import loadgen
from loadtest.baseline.app import create_app
from loadtest.common import spec_sample
from loadtest.servers import baseline
from tests.support.samples import relabelled_sample


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    return create_app().test_client()


def _reference(images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(load_classifier_names().onnx), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


def test_predict_answers_the_models_label_when_one_digit_is_posted(client) -> None:  # type: ignore[no-untyped-def]
    sample = spec_sample()
    images, _ = sample.tensor_batch(0, 1)
    response = client.post("/predict", json={"image": images[0, 0].astype(np.uint8).tolist()})
    assert response.status_code == 200
    body = response.get_json()
    expected = _reference(images)
    assert body["labels"] == [int(expected.argmax())]
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-5)


def test_predict_answers_each_digit_when_a_batch_is_posted(client) -> None:  # type: ignore[no-untyped-def]
    images, _ = spec_sample().tensor_batch(10, 8)
    response = client.post("/predict", json={"images": images[:, 0].tolist()})
    assert response.status_code == 200
    body = response.get_json()
    assert len(body["labels"]) == 8 and np.asarray(body["probabilities"]).shape == (8, 10)
    assert body["labels"] == _reference(images).argmax(axis=1).tolist()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"pixels": [1, 2]}, 'missing "image"'),
        ({"image": [[1, 2], [3, 4]]}, "has shape [1, 1, 2, 2]"),
        ({"image": "seven"}, "not a numeric array"),
        ([1, 2, 3], "expected a JSON object"),
    ],
)
def test_predict_answers_400_naming_the_problem_when_input_is_malformed(
    client, payload: object, message: str  # type: ignore[no-untyped-def]
) -> None:
    response = client.post("/predict", json=payload)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_dev_server_serves_the_load_generator_without_failures_when_started_as_the_seed_did(
    tmp_path: Path,
) -> None:
    with baseline("flask-dev", tmp_path / "flask.log") as server:
        target = loadgen.flask_target(server.address, relabelled_sample(), batch_size=2)
        result = loadgen.run_load(target, concurrency=2, duration_s=0.5, warmup_s=0.1, check_labels=True)
        wrong = loadgen.flask_target(server.address, relabelled_sample(shift=3), batch_size=2)
        refused = loadgen.run_load(wrong, concurrency=1, duration_s=0.3, warmup_s=0.1, check_labels=True)
    assert result.failures == 0, result.first_error
    assert result.requests > 0 and result.latency_ms["p99"] > 0
    # the labels really are checked: answers that differ from the expected ones are failures
    assert refused.failures == refused.requests > 0
    assert "differ from the expected" in (refused.first_error or "")
