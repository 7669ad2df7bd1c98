"""A closed-loop load for lifecycle checks (tests, the demo): threads that send requests back to back and count
every outcome, so a switch that loses a request shows up as a failure."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from build_tools.served import ClassifierNames
from triton_api import TritonClient


@dataclass
class LoadCounts:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class ClosedLoop:
    """`threads` workers over HTTP and gRPC, alternating the tensor path (router) and the bytes path
    (ensemble); each waits for its answer before sending the next request."""

    def __init__(self, http_url: str, grpc_url: str, names: ClassifierNames, router: str, image: np.ndarray,
                 png: bytes, threads: int = 4) -> None:
        self.targets = (http_url, grpc_url)
        self.names, self.router = names, router
        self.image = image.astype(np.float32)[None]
        self.png = np.array([[png]], dtype=object)
        self.threads = threads
        self.counts = LoadCounts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _work(self, index: int) -> None:
        protocol = "http" if index % 2 == 0 else "grpc"
        client = TritonClient(self.targets[index % 2], protocol, timeout_s=60)
        i = 0
        try:
            while not self._stop.is_set():
                i += 1
                try:
                    n = self.names
                    if i % 2:
                        client.infer(self.router, {n.classifier_input: self.image}, [n.classifier_output],
                                     request_id=f"{index}-{i}")
                    else:
                        client.infer(n.ensemble, {n.ensemble_input: self.png}, [n.ensemble_output])
                    with self._lock:
                        self.counts.ok += 1
                except Exception as e:  # every failure counts, whatever its type
                    with self._lock:
                        self.counts.failed += 1
                        self.counts.errors.append(f"{protocol}: {e}")
        finally:
            client.close()

    def wait_for(self, requests: int, timeout_s: float = 60.0) -> None:
        """Block until `requests` more requests have been answered (the load is really running)."""
        target = self.counts.ok + requests
        deadline = time.monotonic() + timeout_s
        while self.counts.ok < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"load stalled: {self.counts.ok} answered, waited for {target}")
            time.sleep(0.05)

    def __enter__(self) -> ClosedLoop:
        self._workers = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()
        self.wait_for(20)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(timeout=90)
