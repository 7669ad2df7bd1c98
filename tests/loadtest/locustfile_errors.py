"""Users for the Locust tests: some break every request or expect the wrong answers (their runs must
fail), one expects exactly what the model answers offline (its label-checked run must pass).

Run with the user's name so that only it runs:
    locust -f tests/loadtest/locustfile_errors.py WrongInputNameUser --headless ...
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loadtest.common import spec_sample
from loadtest.locustfile import *  # noqa: F403  (the options and the thresholds)
from loadtest.users import GrpcEnsembleUser, HttpClassifierUser
from tests.support.samples import offline_labels


class WrongInputNameUser(HttpClassifierUser):
    input_name = "not_an_input"


def _relabel(built: list[tuple[list[Any], np.ndarray]], batch: int, labels: np.ndarray) -> list[Any]:
    sample = spec_sample()
    return [(inputs, labels[sample.indices(k * batch, batch)]) for k, (inputs, _) in enumerate(built)]


class OfflineLabelsHttpUser(HttpClassifierUser):
    """Expects the offline model's own answers: with --check-labels not one request may fail."""

    def _build_requests(self) -> list[Any]:
        return _relabel(super()._build_requests(), self.batch, offline_labels())


class OfflineLabelsGrpcEnsembleUser(GrpcEnsembleUser):
    def _build_requests(self) -> list[Any]:
        return _relabel(super()._build_requests(), self.batch, offline_labels())


class WrongLabelsUser(HttpClassifierUser):
    """Expects the next digit up from what the model answers: with --check-labels every request fails."""

    def _build_requests(self) -> list[Any]:
        return _relabel(super()._build_requests(), self.batch, (offline_labels() + 1) % 10)
