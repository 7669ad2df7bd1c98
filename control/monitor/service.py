"""The drift monitor service: one HTTP port with

  GET  /metrics   Prometheus metrics (below), from the latest update
  POST /labels    label feedback: {"request_id": "...", "label": 3} or a list of them (control.monitor.feedback)
  GET  /health    200 once the first update has run, 503 before or while updates fail

A background thread recomputes every `monitoring.drift.interval_s` (a scrape never touches the
database). Metric names (docs/monitoring.md lists them with their meaning):

  tdk_monitor_input_psi{model,version,stat}                       PSI of an input statistic vs the reference
  tdk_monitor_prediction_chi2_statistic{model,version}            chi-square of predicted-class counts
  tdk_monitor_prediction_chi2_p_value{model,version}              its p-value
  tdk_monitor_prediction_class_share_ratio{model,version,class}   predicted-class shares over the window
  tdk_monitor_window_records{model,version,window}                records in the input / label window
  tdk_monitor_accuracy_ratio{model,version,role,bound}            accuracy from labels; bound=estimate|lower|upper
  tdk_monitor_reference_accuracy_ratio{model,version}             held-out accuracy from reference.json
  tdk_monitor_label_coverage_ratio{model,version}                 labelled share of the label window
  tdk_monitor_label_delay_seconds{model,version,quantile}         label time - prediction time (0.5, 0.9)
  tdk_monitor_labels_received_total{outcome}                      accepted / duplicate labels (all sources)
  tdk_monitor_labels_rejected_total                               malformed label requests (this process)
  tdk_monitor_labels{state}                                       late / pending / unknown labels
  tdk_monitor_check_alarm{model,version,check}                    1 when a check fails by the spec's thresholds
  tdk_monitor_threshold{threshold}                                the spec's thresholds, for the alert rules
  tdk_monitor_last_update_timestamp_seconds, tdk_monitor_update_duration_seconds, tdk_monitor_update_errors_total
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from build_tools.errors import ToolkitError
from build_tools.spec import DriftSpec
from control.db import Database
from control.monitor import feedback
from control.monitor.drift import LabelStatus, References, Snapshot, canary_worse, label_status, snapshots

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20
CHECKS: tuple[str, ...] = ("input_drift", "prediction_drift", "accuracy_drop", "canary_worse")


@dataclass
class State:
    snapshots: list[Snapshot]
    labels: LabelStatus
    outcomes: dict[str, int]
    at: float
    seconds: float


def alarms(snaps: Sequence[Snapshot], spec: DriftSpec) -> dict[tuple[str, str], dict[str, bool]]:
    """Each version's verdicts; canary_worse compares a canary with its model's champion."""
    champions = {s.model: s for s in snaps if s.role == "champion"}
    return {
        (s.model, s.version): {
            "input_drift": s.input_drift(spec),
            "prediction_drift": s.prediction_drift(spec),
            "accuracy_drop": s.accuracy_drop(spec),
            "canary_worse": s.role == "canary" and canary_worse(champions.get(s.model), s),
        }
        for s in snaps
    }


class Monitor:
    """Computes the figures from the database and serves them; `update()` is one round."""

    def __init__(self, db: Database, references: References, spec: DriftSpec, num_classes: int = 10,
                 registry: Database | None = None) -> None:
        self.db = db
        self.registry = registry  # the lifecycle registry's database when it is not the log's
        self.references = references
        self.spec = spec
        self.num_classes = num_classes
        feedback.migrate(db)
        self.state: State | None = None
        self.update_errors = 0
        self.rejected = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # -- computing ---------------------------------------------------------------------------------
    def update(self, now: float | None = None) -> State:
        start = time.perf_counter()
        now = time.time() if now is None else now
        snaps = snapshots(self.db, self.references, self.spec, self.registry)
        state = State(snaps, label_status(self.db, self.spec, now), feedback.outcome_counts(self.db), now,
                      time.perf_counter() - start)
        with self._lock:
            self.state = state
        return state

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.update()
                if self._failing:
                    logger.info("monitor update works again")
                self._failing = False
            except ToolkitError as e:
                self.update_errors += 1
                if not self._failing:
                    logger.error("monitor update failed (retrying every %.0f s): %s", self.spec.interval_s, e)
                self._failing = True
            self._stop.wait(self.spec.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="monitor-update", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def healthy(self) -> bool:
        return self.state is not None and not self._failing

    # -- labels -------------------------------------------------------------------------------------
    def post_labels(self, payload: Any) -> feedback.IngestResult:
        try:
            labels = feedback.parse_payload(payload, self.num_classes)
        except feedback.LabelError:
            self.rejected += 1
            raise
        return feedback.ingest(self.db, labels, source="http")

    # -- metrics ------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        with self._lock:
            state = self.state
        spec = self.spec
        thresholds = GaugeMetricFamily("tdk_monitor_threshold", "The spec's drift thresholds (monitoring.drift)",
                                       labels=["threshold"])
        for name in ("psi_warn", "psi_alert", "chi2_p_value", "max_accuracy_drop", "confidence", "min_window",
                     "min_labels", "window", "label_window"):
            thresholds.add_metric([name], float(getattr(spec, name)))
        yield thresholds
        errors = CounterMetricFamily("tdk_monitor_update_errors", "Monitor updates that failed")
        errors.add_metric([], self.update_errors)
        yield errors
        rejected = CounterMetricFamily("tdk_monitor_labels_rejected", "Malformed label requests refused (HTTP 400)")
        rejected.add_metric([], self.rejected)
        yield rejected
        if state is None:
            return
        yield GaugeMetricFamily("tdk_monitor_last_update_timestamp_seconds", "When the figures were computed",
                                value=state.at)
        yield GaugeMetricFamily("tdk_monitor_update_duration_seconds", "How long the last update took",
                                value=state.seconds)
        received = CounterMetricFamily("tdk_monitor_labels_received", "Labels received, by outcome (first label wins)",
                                       labels=["outcome"])
        for outcome, n in state.outcomes.items():
            received.add_metric([outcome], n)
        yield received
        lab = GaugeMetricFamily("tdk_monitor_labels", "Labels that are late (long after their prediction), pending "
                                "(no prediction yet, in the grace period) or unknown (none after it)",
                                labels=["state"])
        for name in ("late", "pending", "unknown"):
            lab.add_metric([name], getattr(state.labels, name))
        yield lab

        mv = ["model", "version"]
        psi = GaugeMetricFamily("tdk_monitor_input_psi", "PSI of an input statistic over the window vs the reference",
                                labels=[*mv, "stat"])
        chi_stat = GaugeMetricFamily("tdk_monitor_prediction_chi2_statistic",
                                     "Chi-square of the predicted-class counts vs the reference shares", labels=mv)
        chi_p = GaugeMetricFamily("tdk_monitor_prediction_chi2_p_value", "p-value of that chi-square test", labels=mv)
        shares = GaugeMetricFamily("tdk_monitor_prediction_class_share_ratio", "Predicted-class shares over the window",
                                   labels=[*mv, "class"])
        window = GaugeMetricFamily("tdk_monitor_window_records", "Records in the input window and the label window",
                                   labels=[*mv, "window"])
        acc = GaugeMetricFamily("tdk_monitor_accuracy_ratio", "Accuracy from labels with its Wilson interval",
                                labels=[*mv, "role", "bound"])
        ref_acc = GaugeMetricFamily("tdk_monitor_reference_accuracy_ratio", "Held-out accuracy (reference.json)",
                                    labels=mv)
        coverage = GaugeMetricFamily("tdk_monitor_label_coverage_ratio", "Labelled share of the label window",
                                     labels=mv)
        delay = GaugeMetricFamily("tdk_monitor_label_delay_seconds", "Label time minus prediction time",
                                  labels=[*mv, "quantile"])
        alarm = GaugeMetricFamily("tdk_monitor_check_alarm", "1 when a check fails by the spec's thresholds",
                                  labels=[*mv, "check"])
        verdicts = alarms(state.snapshots, spec)
        for s in state.snapshots:
            key = [s.model, s.version]
            for stat, value in s.psi.items():
                psi.add_metric([*key, stat], value)
            if s.chi2 is not None:
                chi_stat.add_metric(key, s.chi2.statistic)
                chi_p.add_metric(key, s.chi2.p_value)
            for c, share in enumerate(s.class_shares):
                shares.add_metric([*key, str(c)], share)
            window.add_metric([*key, "input"], s.window)
            window.add_metric([*key, "labels"], s.labelled)
            if s.accuracy is not None:
                for bound, value in (("estimate", s.accuracy.estimate), ("lower", s.accuracy.low),
                                     ("upper", s.accuracy.high)):
                    acc.add_metric([*key, s.role or "none", bound], value)
            if s.reference_accuracy is not None:
                ref_acc.add_metric(key, s.reference_accuracy)
            if s.coverage is not None:
                coverage.add_metric(key, s.coverage)
            if s.delay_p50_s is not None and s.delay_p90_s is not None:
                delay.add_metric([*key, "0.5"], s.delay_p50_s)
                delay.add_metric([*key, "0.9"], s.delay_p90_s)
            for check in CHECKS:
                alarm.add_metric([*key, check], float(verdicts[(s.model, s.version)][check]))
        yield from (psi, chi_stat, chi_p, shares, window, acc, ref_acc, coverage, delay, alarm)


class _Collector:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        return self.monitor.collect()


def _handler(monitor: Monitor, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "triton-monitor"

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: dict[str, Any]) -> None:
            self._send(code, (json.dumps(data) + "\n").encode())

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/health":
                ok = monitor.healthy
                self._json(200 if ok else 503, {"healthy": ok})
            else:
                self._json(404, {"error": f"no such path {path!r}; expected /metrics, /health or POST /labels"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path != "/labels":
                self._json(404, {"error": f"no such path {path!r}; labels go to POST /labels"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length <= 0 or length > MAX_BODY_BYTES:
                monitor.rejected += 1
                self._json(413 if length > MAX_BODY_BYTES else 411,
                           {"error": f"Content-Length must be 1..{MAX_BODY_BYTES} bytes, got "
                                     f"{self.headers.get('Content-Length')!r}"})
                return
            try:
                payload = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                monitor.rejected += 1
                self._json(400, {"error": f"body: not JSON ({e}); expected {{\"request_id\": ..., \"label\": ...}} "
                                          "or a list of them"})
                return
            try:
                result = monitor.post_labels(payload)
            except feedback.LabelError as e:
                self._json(400, {"error": str(e)})
                return
            except ToolkitError as e:
                logger.error("storing labels failed: %s", e)
                self._json(503, {"error": f"labels not stored: {e}"})
                return
            self._json(200, result.as_dict())

    return Handler


class MonitorServer:
    """The monitor's HTTP server and update thread; a context manager for tests and the CLI."""

    def __init__(self, monitor: Monitor, host: str = "127.0.0.1", port: int = 0) -> None:
        self.monitor = monitor
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(monitor))  # type: ignore[arg-type]
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler(monitor, self.registry))
        except OSError as e:
            raise ToolkitError(f"monitor: cannot listen on {host}:{port} ({e.strerror}); choose another --port") from e
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> MonitorServer:
        self.monitor.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="monitor-http", daemon=True)
        self._thread.start()
        logger.info("monitor on %s", self.url)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.monitor.stop()

    def __enter__(self) -> MonitorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_update(monitor: Monitor, after: float, timeout_s: float = 30.0) -> State:
    """The first state computed after `after` (time.time()); for tests and the demo."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = monitor.state
        if state is not None and state.at > after:
            return state
        time.sleep(0.05)
    raise ToolkitError(f"monitor: no update within {timeout_s:.0f} s")


def open_references(repositories: Sequence[str | Path]) -> References:
    return References([Path(r) for r in repositories])
