"""Locust users that load the served models through the triton_api client (HTTP and gRPC).

``TritonUser`` (abstract) owns everything: it makes one client per simulated user, prebuilds the
requests from the sample digits (model and tensor names from the spec), times each call, checks the
answer (shape [batch, 10], valid probabilities, a label 0..9, and with ``--check-labels`` the expected
label) and reports every call through Locust's request event, so Locust's statistics, CSV/HTML reports
and thresholds see them.
Concrete users only say which protocol and which model.

Refusals (the server shedding load: queue full or queue timeout, HTTP 503 / gRPC UNAVAILABLE) are not
failures: they are reported under their own name, ``<model> b<batch> refused``, so Locust counts them
apart from errors and shows how fast they came back.

Addresses: HTTP users use Locust's ``--host`` (``http://HOST:PORT``); gRPC users use ``--grpc-host
HOST:PORT``, or ``--host`` when it is ``grpc://HOST:PORT``, or else --host's host name with Triton's
default gRPC port 8001.

Importing this module imports Locust and prepares gRPC for gevent (Locust runs users as greenlets): without
``grpc.experimental.gevent.init_gevent()`` before the first channel, a blocking gRPC call would stall
every user of the process.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, ClassVar

import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import User, task

from build_tools.errors import ClientError, ServerUnreachableError
from loadtest.common import check_probabilities, served_names, spec_sample
from loadtest.loadgen import is_refusal
from loadtest.options import backoff_seconds, grpc_address, http_address
from triton_api import PreparedRequest, TritonClient

grpc_gevent.init_gevent()

_user_numbers = itertools.count()


def _refused(error: ClientError) -> bool:
    """Whether the client layer's error wraps a refusal (triton_api raises ClientError from the
    tritonclient exception)."""
    from tritonclient.utils import InferenceServerException

    cause = error.__cause__
    return isinstance(cause, InferenceServerException) and is_refusal(cause.status(), cause.message())


class TritonUser(User):
    """One simulated client: a closed loop of inference calls (no wait between them)."""

    abstract = True
    protocol: ClassVar[str] = "http"  # "http" or "grpc"
    ensemble: ClassVar[bool] = False  # False: the classifier with raw tensors; True: the ensemble with PNGs
    input_name: ClassVar[str | None] = None  # default: the model's input (tests override it to break it)
    batch_size: ClassVar[int | None] = None  # default: --batch-size

    @property
    def model(self) -> str:
        names = served_names()
        return names.ensemble if self.ensemble else names.classifier

    @property
    def output(self) -> str:
        names = served_names()
        return names.ensemble_output if self.ensemble else names.classifier_output

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
            self.url = grpc_address(self.host, self._option("grpc_host", None))
        else:
            self.url = http_address(self.host)
        self.client = TritonClient(self.url, "grpc" if self.protocol == "grpc" else "http",
                                   timeout_s=float(self._option("request_timeout", 60.0)))
        self.requests = self._build_requests()
        # Users start at different points of the sample, so concurrent users send different digits.
        self.position = (next(_user_numbers) * 7) % len(self.requests)
        self.request_name = f"{self.model} b{self.batch}"

    def _build_requests(self) -> list[tuple[PreparedRequest, np.ndarray]]:
        sample = spec_sample()
        names = served_names()
        input_name = self.input_name or (names.ensemble_input if self.ensemble else names.classifier_input)
        built = []
        for start in range(0, len(sample), self.batch):
            if self.ensemble:
                data, labels = sample.png_batch(start, self.batch)
            else:
                data, labels = sample.tensor_batch(start, self.batch)
            built.append((self.client.prepare(self.model, {input_name: data}, [self.output]), labels))
        return built

    @task
    def infer(self) -> None:
        request, labels = self.requests[self.position]
        self.position = (self.position + 1) % len(self.requests)
        exception: Exception | None = None
        unreachable = False
        refused = False
        length = 0
        start = time.perf_counter()
        try:
            try:
                result = self.client.send(request)
            finally:
                elapsed_ms = (time.perf_counter() - start) * 1000.0
            probabilities = result.get(self.output)
            length = 0 if probabilities is None else int(probabilities.nbytes)
            check_probabilities(probabilities, self.batch, labels if self.check_labels else None)
        except ClientError as e:  # the client layer's errors and ResponseCheckError (a subclass)
            refused = _refused(e)
            exception = None if refused else e
            unreachable = isinstance(e, ServerUnreachableError)
        self.unreachable_streak = self.unreachable_streak + 1 if unreachable else 0
        self.environment.events.request.fire(
            request_type=self.protocol.upper(),
            name=f"{self.request_name} refused" if refused else self.request_name,
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
