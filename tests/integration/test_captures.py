"""Photo-like captures through the served `mnist` ensemble: every degradation class reaches its floor.

The floors (tests/support/captures.py) are ones the unit tests show a class misses when the step
that handles it is switched off, so removing a step from the served model fails its class here.
"""

from __future__ import annotations

import numpy as np
import pytest

from build_tools.served import load_classifier_names
from build_tools.server import TritonServer
from clients.capture_eval import Target, classify, evaluate_captures
from clients.captures import NAMES, make_captures
from clients.datasets import mnist_holdout
from tests.support.captures import FLOORS, PER_CLASS, SEED

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def captures():
    data = mnist_holdout()
    return make_captures(data.images, data.labels, NAMES, PER_CLASS, SEED)


@pytest.mark.parametrize("name", NAMES)
def test_ensemble_reaches_floor_when_captures_degraded(embedded_server: TritonServer, captures, name: str) -> None:
    payloads, labels = captures.of(name)
    target = Target.from_names(embedded_server.grpc_url, "grpc", load_classifier_names())
    predicted, failed = classify(target, payloads, batch_size=25, concurrency=2)
    assert failed == 0
    accuracy = float((predicted == labels).mean())
    assert accuracy >= FLOORS[name], f"{name}: {accuracy:.2f} < floor {FLOORS[name]}"


def test_capture_evaluation_reports_every_class_when_run_against_server(embedded_server: TritonServer) -> None:
    target = Target.from_names(embedded_server.http_url, "http", load_classifier_names())
    ev = evaluate_captures(target, ["mixed", "exif_rotation"], per_class=20)
    assert ev.clean.n == 500 and ev.clean.accuracy >= 0.97
    assert [r.name for r in ev.classes] == ["mixed", "exif_rotation"]
    assert all(r.n == 20 and r.errors == 0 for r in ev.classes)
    assert ev.overall == pytest.approx(np.mean([r.accuracy for r in ev.classes]))
