"""Locust users that load the served models through tritonclient (HTTP and gRPC).

``TritonUser`` (abstract) owns everything: it makes one tritonclient per simulated user, prebuilds the
requests from the MNIST sample, times each call, checks the answer (shape [batch, 10], valid
probabilities, a label 0..9, and with ``--check-labels`` the expected label) and reports every call
through Locust's request event, so Locust's statistics, CSV/HTML reports and thresholds see them.
Concrete users only say which protocol and which model.

Addresses: HTTP users use Locust's ``--host`` (``http://HOST:PORT``); gRPC users use ``--grpc-host
HOST:PORT``, or ``--host`` when it is ``grpc://HOST:PORT``, or else --host's host name with Triton's
default gRPC port 8001.

Importing this module imports Locust and prepares gRPC for gevent (Locust runs users as greenlets): without
``grpc.experimental.gevent.init_gevent()`` before the first channel, a blocking gRPC call would stall
every user of the process.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, ClassVar

import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import User, task

from build_tools.errors import ClientError
from loadtest.common import (
    CLASSIFIER,
    CLASSIFIER_INPUT,
    ENSEMBLE,
    ENSEMBLE_INPUT,
    OUTPUT,
    check_probabilities,
    mnist_sample,
)
from loadtest.errors import ResponseCheckError
from loadtest.options import grpc_address, http_address

grpc_gevent.init_gevent()

_user_numbers = itertools.count()

# While the server cannot be reached, each user waits 50 ms, 100 ms, ... up to 2 s between calls: a
# closed loop of refused connections would otherwise spin thousands of failures a second and burn the
# load generator's CPU. The first answer from the server ends the back-off.
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
_UNREACHABLE_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "502", "503", "504"}


def backoff_seconds(failures_in_a_row: int) -> float:
    """The wait before the next call after this many unreachable-server failures in a row (jittered)."""
    if failures_in_a_row <= 0:
        return 0.0
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures_in_a_row - 1))
    return ceiling * random.uniform(0.5, 1.0)


def _client_error(message: str, cause: BaseException) -> ClientError:
    error = ClientError(message)
    error.__cause__ = cause
    return error


class TritonUser(User):
    """One simulated client: a closed loop of inference calls (no wait between them)."""

    abstract = True
    protocol: ClassVar[str] = "http"  # "http" or "grpc"
    ensemble: ClassVar[bool] = False  # False: the classifier with raw tensors; True: the ensemble with PNGs
    input_name: ClassVar[str | None] = None  # default: the model's input (tests override it to break it)
    batch_size: ClassVar[int | None] = None  # default: --batch-size

    @property
    def model(self) -> str:
        return ENSEMBLE if self.ensemble else CLASSIFIER

    def _option(self, name: str, default: Any) -> Any:
        options = getattr(self.environment, "parsed_options", None)
        value = getattr(options, name, None) if options is not None else None
        return default if value is None else value

    unreachable_streak = 0

    def wait_time(self) -> float:
        return backoff_seconds(self.unreachable_streak)

    def on_start(self) -> None:
        self.batch = int(self.batch_size or self._option("batch_size", 1))
        self.check_labels = bool(self._option("check_labels", False))
        if self.protocol == "grpc":
            import tritonclient.grpc as tc

            self.client_module: Any = tc
            self.url = grpc_address(self.host, self._option("grpc_host", None))
            self.client: Any = tc.InferenceServerClient(self.url)
            self.outputs = [tc.InferRequestedOutput(OUTPUT)]
        else:
            import tritonclient.http as tc

            self.client_module = tc
            self.url = http_address(self.host)
            self.client = tc.InferenceServerClient(self.url, connection_timeout=30.0, network_timeout=60.0)
            self.outputs = [tc.InferRequestedOutput(OUTPUT, binary_data=True)]
        self.requests = self._build_requests()
        # Users start at different points of the sample, so concurrent users send different digits.
        self.position = (next(_user_numbers) * 7) % len(self.requests)
        self.request_name = f"{self.model} b{self.batch}"

    def _build_requests(self) -> list[tuple[list[Any], np.ndarray]]:
        tc = self.client_module
        sample = mnist_sample()
        input_name = self.input_name or (ENSEMBLE_INPUT if self.ensemble else CLASSIFIER_INPUT)
        built = []
        for start in range(0, len(sample), self.batch):
            if self.ensemble:
                data, labels = sample.png_batch(start, self.batch)
                tensor = tc.InferInput(input_name, list(data.shape), "BYTES")
            else:
                data, labels = sample.tensor_batch(start, self.batch)
                tensor = tc.InferInput(input_name, list(data.shape), "FP32")
            if self.protocol == "http":
                tensor.set_data_from_numpy(data, binary_data=True)
            else:
                tensor.set_data_from_numpy(data)
            built.append(([tensor], labels))
        return built

    @task
    def infer(self) -> None:
        inputs, labels = self.requests[self.position]
        self.position = (self.position + 1) % len(self.requests)
        exception: Exception | None = None
        unreachable = False
        length = 0
        start = time.perf_counter()
        try:
            try:
                result = self.client.infer(self.model, inputs, outputs=self.outputs)
            finally:
                elapsed_ms = (time.perf_counter() - start) * 1000.0
            probabilities = result.as_numpy(OUTPUT)
            length = 0 if probabilities is None else int(probabilities.nbytes)
            check_probabilities(probabilities, self.batch, labels if self.check_labels else None)
        except self.client_module.InferenceServerException as e:
            exception = _client_error(f"{self.model}: {e.message() or e}", e)
            unreachable = str(e.status()) in _UNREACHABLE_STATUSES
        except OSError as e:  # connection refused or reset (tritonclient.http lets these through)
            exception = _client_error(f"{self.model}: {type(e).__name__}: {e}", e)
            unreachable = True
        except ResponseCheckError as e:
            exception = e
        self.unreachable_streak = self.unreachable_streak + 1 if unreachable else 0
        self.environment.events.request.fire(
            request_type=self.protocol.upper(),
            name=self.request_name,
            response_time=elapsed_ms,
            response_length=length,
            exception=exception,
            context={"model": self.model, "batch_size": self.batch, "url": self.url},
        )

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


# Concrete users: one line of configuration each.


class HttpClassifierUser(TritonUser):
    protocol, ensemble = "http", False


class HttpEnsembleUser(TritonUser):
    protocol, ensemble = "http", True


class GrpcClassifierUser(TritonUser):
    protocol, ensemble = "grpc", False


class GrpcEnsembleUser(TritonUser):
    protocol, ensemble = "grpc", True
