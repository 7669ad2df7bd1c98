"""Model monitoring inside Triton: predictions and inputs as Prometheus metrics, and the sampled
prediction log, for a Python-backend model that serves a classifier (the lifecycle router, or an
embedded runner served without a router).

Used from `initialize`/`execute` of those models (they pass their `triton_python_backend_utils` in, so
this module imports nothing from Triton and is testable without a server). Settings come from the
model config's `monitoring.*` parameters (build_tools.runner_params), written from the spec's
`monitoring:` section.

Cost on the request path: a copy of each answered request's arrays into a pending list. A background
thread does the rest every `flush_ms`, vectorised over everything pending (argmax, top probability,
the input statistics, histograms, log records) and sends the Triton metric calls (each a round trip
from the stub to the server); the log writer's thread hands records to the database sink process.
Metric names, types and labels: docs/monitoring.md ("Metrics from inside Triton").
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.runner_params import (
    MONITOR_PARAM_DATABASE,
    MONITOR_PARAM_ENABLED,
    MONITOR_PARAM_FLUSH_MS,
    MONITOR_PARAM_INPUT,
    MONITOR_PARAM_KEEP_INPUTS,
    MONITOR_PARAM_MAX_DAYS,
    MONITOR_PARAM_MAX_ROWS,
    MONITOR_PARAM_MODEL,
    MONITOR_PARAM_OUTPUT,
    MONITOR_PARAM_QUEUE,
    MONITOR_PARAM_SAMPLE,
    MONITOR_PARAM_SCALE,
)
from control.monitor.log_writer import LogBatch, PredictionLogWriter, Retention
from control.monitor.stats import (
    PIXEL_STATS,
    STAT_BUCKETS,
    TOP_PROBABILITY_BUCKETS,
    CumulativeHistogram,
    image_stats,
    le_label,
)

logger = logging.getLogger(__name__)

# A log record's statistics: the pixel ones, then the image's original size (contract.STAT_NAMES order).
RECORD_STATS: tuple[str, ...] = (*PIXEL_STATS, "original_size")

# Overrides the spec's database for every monitored model of a server (tests, compose stacks).
DATABASE_ENV = "TDK_MONITORING_DATABASE_URL"
DEFAULT_DATABASE = "sqlite:///monitoring/predictions.db"

# Metric names (docs/monitoring.md). Histograms are cumulative `le` counters (see CumulativeHistogram).
PREDICTIONS = "tdk_serving_predictions_total"
TOP_PROBABILITY = "tdk_serving_top_probability"
INPUT_STAT = {  # statistic -> metric base name (unit suffix per Prometheus conventions)
    "mean_intensity": "tdk_serving_input_mean_intensity_ratio",
    "ink_fraction": "tdk_serving_input_ink_fraction_ratio",
    "bbox_size": "tdk_serving_input_bbox_size_pixels",
    "com_offset": "tdk_serving_input_com_offset_pixels",
    "original_size": "tdk_serving_input_original_size_pixels",
}
REJECTED = "tdk_serving_input_rejected_total"
LOG_RECORDS = "tdk_serving_prediction_log_records_total"


def _param(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def monitoring_enabled(config: dict[str, Any]) -> bool:
    return _param(config, MONITOR_PARAM_ENABLED, "false").lower() == "true"


def resolve_database_url(url: str, model_folder: str | Path) -> str:
    """The environment's URL if set; a relative SQLite path resolves against the folder that holds the
    model repository (a relative path means nothing to the server process's working folder)."""
    url = os.environ.get(DATABASE_ENV) or url
    if url.startswith(("postgresql://", "postgres://")):
        return url
    path = url.removeprefix("sqlite:///")
    if path == ":memory:" or Path(path).is_absolute():
        return url
    return f"sqlite:///{Path(model_folder).resolve().parent.parent / path}"


@dataclass(frozen=True)
class MonitorSettings:
    model: str
    input: str
    output: str
    input_scale: float
    database_url: str
    sample_rate: float
    keep_inputs_rate: float
    retention: Retention
    queue_size: int
    flush_s: float

    @classmethod
    def from_config(cls, config: dict[str, Any], model_folder: str | Path, default_model: str) -> MonitorSettings:
        inputs = [i["name"] for i in config.get("input", [])]
        labelled = [o["name"] for o in config.get("output", []) if o.get("label_filename")]
        outputs = labelled or [o["name"] for o in config.get("output", [])]
        return cls(
            model=_param(config, MONITOR_PARAM_MODEL, default_model),
            input=_param(config, MONITOR_PARAM_INPUT, inputs[0] if inputs else ""),
            output=_param(config, MONITOR_PARAM_OUTPUT, outputs[0] if outputs else ""),
            input_scale=float(_param(config, MONITOR_PARAM_SCALE, "255")),
            database_url=resolve_database_url(_param(config, MONITOR_PARAM_DATABASE, DEFAULT_DATABASE), model_folder),
            sample_rate=float(_param(config, MONITOR_PARAM_SAMPLE, "1")),
            keep_inputs_rate=float(_param(config, MONITOR_PARAM_KEEP_INPUTS, "0")),
            retention=Retention(
                max_rows=int(_param(config, MONITOR_PARAM_MAX_ROWS, "100000")),
                max_days=float(_param(config, MONITOR_PARAM_MAX_DAYS, "7")),
            ),
            queue_size=int(_param(config, MONITOR_PARAM_QUEUE, "10000")),
            flush_s=int(_param(config, MONITOR_PARAM_FLUSH_MS, "500")) / 1000.0,
        )


def class_names(config: dict[str, Any], output: str, model_folder: str | Path) -> list[str] | None:
    """The output's labels file (one class name a line), or None: classes are then their indices."""
    for out in config.get("output", []):
        if out["name"] == output and out.get("label_filename"):
            path = Path(model_folder) / out["label_filename"]
            if path.is_file():
                return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return None


class PendingCounters:
    """Counter increments accumulated on the request path and sent to Triton in one go.

    Metric objects are created once per label set (first flush that needs them) and cached.
    """

    def __init__(self, family: Any) -> None:
        self.family = family
        self._metrics: dict[tuple[tuple[str, str], ...], Any] = {}
        self._pending: dict[tuple[tuple[str, str], ...], float] = {}

    def ensure(self, labels: tuple[tuple[str, str], ...]) -> None:
        """Create the series now, at 0: a counter that exists from the start makes rate() and
        increase() correct from the first event (Prometheus's advice for known label sets)."""
        if labels not in self._metrics:
            self._metrics[labels] = self.family.Metric(labels=dict(labels))

    def add(self, labels: tuple[tuple[str, str], ...], value: float) -> None:
        if value:
            self._pending[labels] = self._pending.get(labels, 0.0) + value

    def take(self) -> dict[tuple[tuple[str, str], ...], float]:
        pending, self._pending = self._pending, {}
        return pending

    def clear(self) -> None:
        """Drop the metric objects before the family goes (Triton refuses a family deleted first)."""
        self._metrics.clear()

    def send(self, pending: dict[tuple[tuple[str, str], ...], float]) -> None:
        for labels, value in pending.items():
            metric = self._metrics.get(labels)
            if metric is None:
                metric = self._metrics[labels] = self.family.Metric(labels=dict(labels))
            metric.increment(value)


class HistogramExport:
    """One Prometheus histogram (`<name>_bucket{le}`, `_sum`, `_count`) as three counter families."""

    def __init__(self, pb_utils: Any, name: str, description: str, bounds: Sequence[float]) -> None:
        kind = pb_utils.MetricFamily.COUNTER
        self.bounds = [*bounds, float("inf")]
        self.buckets = PendingCounters(pb_utils.MetricFamily(
            name=f"{name}_bucket", description=f"{description} (cumulative bucket counts)", kind=kind))
        self.sums = PendingCounters(pb_utils.MetricFamily(
            name=f"{name}_sum", description=f"{description} (sum of observed values)", kind=kind))
        self.counts = PendingCounters(pb_utils.MetricFamily(
            name=f"{name}_count", description=f"{description} (number of observations)", kind=kind))
        self._hists: dict[tuple[tuple[str, str], ...], CumulativeHistogram] = {}
        self._lock = threading.Lock()

    def add(self, labels: tuple[tuple[str, str], ...], values: np.ndarray) -> None:
        with self._lock:
            hist = self._hists.get(labels)
            if hist is None:
                hist = self._hists[labels] = CumulativeHistogram(self.bounds[:-1])
            hist.add(values)

    def flush(self) -> None:
        with self._lock:
            taken = [(labels, *hist.take()) for labels, hist in self._hists.items()]
        for labels, cumulative, total, count in taken:
            if not count:
                continue
            for b in self.bounds:  # every bucket of a label set exists (at 0) from its first flush on
                self.buckets.ensure((*labels, ("le", le_label(b))))
            self.buckets.send({(*labels, ("le", le_label(b))): float(c) for b, c in zip(self.bounds, cumulative) if c})
            self.sums.send({labels: total} if total else {})
            self.counts.send({labels: float(count)})

    def clear(self) -> None:
        for counters in (self.buckets, self.sums, self.counts):
            counters.clear()


class InputStatsExport:
    """The input statistics histograms (one per statistic) for one model input."""

    def __init__(self, pb_utils: Any, stats: Sequence[str]) -> None:
        self.stats = list(stats)
        self.hists = {
            s: HistogramExport(pb_utils, INPUT_STAT[s], f"Input statistic {s} per image", STAT_BUCKETS[s])
            for s in self.stats
        }

    def add(self, labels: tuple[tuple[str, str], ...], values: dict[str, np.ndarray]) -> None:
        for s, v in values.items():
            self.hists[s].add(labels, v)

    def flush(self) -> None:
        for h in self.hists.values():
            h.flush()

    def clear(self) -> None:
        for h in self.hists.values():
            h.clear()


class Ticker:
    """A daemon thread calling `fn` every `interval_s` (and once more at `close()`)."""

    def __init__(self, interval_s: float, fn: Any, name: str) -> None:
        self.interval_s = interval_s
        self.fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception as e:
                logger.warning("%s: %s", self._thread.name, e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.fn()


class ServingMonitor:
    """Metrics and the prediction log for one classifier-serving Python-backend model.

    `observe()` (in `execute`) only copies the answered requests' arrays into a pending list; a
    background thread takes the list every `flush_ms` and does everything else in one vectorised pass
    over all of it (argmax, top probability, input statistics, histograms, log records), then sends the
    metric counts to Triton. Per-call numpy overhead dominates at batch sizes of 1-10, so batching the
    work across `execute()` calls is what keeps its cost small. Beyond `queue_size` pending images the
    newest are dropped (counted: tdk_serving_prediction_log_records_total{outcome="dropped"}) instead of blocking.
    """

    def __init__(self, pb_utils: Any, config: dict[str, Any], model_folder: str | Path, default_model: str) -> None:
        self.settings = s = MonitorSettings.from_config(config, model_folder, default_model)
        self.classes = class_names(config, s.output, model_folder)
        kind = pb_utils.MetricFamily.COUNTER
        self.predictions = PendingCounters(pb_utils.MetricFamily(
            name=PREDICTIONS, description="Predictions by top-1 class, per model and version", kind=kind))
        self.top_probability = HistogramExport(
            pb_utils, TOP_PROBABILITY, "Top-1 probability of each prediction", TOP_PROBABILITY_BUCKETS)
        self.inputs = InputStatsExport(pb_utils, PIXEL_STATS)
        self.log_records = PendingCounters(pb_utils.MetricFamily(
            name=LOG_RECORDS, description="Prediction log records by outcome (written, dropped, failed)", kind=kind))
        self._logged = {"written": 0, "dropped": 0, "failed": 0}
        for outcome in self._logged:
            self.log_records.ensure((("model", s.model), ("outcome", outcome)))
        self._random = random.Random()
        self._np_random = np.random.default_rng()
        self._lock = threading.Lock()
        # (version, request ids, rows per request, inputs, outputs, time answered, original sizes)
        self._pending: list[tuple[str, list[str], list[int], np.ndarray | None, np.ndarray, float,
                                  np.ndarray | None]] = []
        self._pending_rows = 0
        self.dropped = 0  # images never accounted for: the pending list was full
        self.writer = PredictionLogWriter(
            s.database_url, s.model, queue_size=s.queue_size, retention=s.retention, tick_s=s.flush_s,
        )
        self._ticker = Ticker(s.flush_s, self.process, f"monitor-{s.model}")

    def _class(self, index: int) -> str:
        if self.classes is not None and 0 <= index < len(self.classes):
            return self.classes[index]
        return str(index)

    def observe(self, version: str, request_ids: Sequence[str], inputs: Sequence[np.ndarray],
                outputs: Sequence[np.ndarray], original_sizes: Sequence[np.ndarray] | None = None) -> None:
        """Account for answered requests of one version (per request: its id, its input rows, its output
        rows, and optionally each row's original image size). Copies the arrays (the backend's buffers are
        released after the response) and returns."""
        if not outputs:
            return
        sizes = [len(o) for o in outputs]
        # np.concatenate copies, even of a single array.
        self.observe_batch(version, request_ids, sizes, np.concatenate(inputs) if len(inputs) == len(outputs)
                           else None, np.concatenate(outputs), copied=True,
                           original_sizes=np.concatenate(original_sizes) if original_sizes else None)

    def observe_batch(self, version: str, request_ids: Sequence[str], sizes: Sequence[int],
                      inputs: np.ndarray | None, outputs: np.ndarray, copied: bool = False,
                      original_sizes: np.ndarray | None = None) -> None:
        """The same for requests already concatenated (rows of request k follow those of request k-1).
        `original_sizes`: sqrt(height * width) of each row's image as sent (the router's side input)."""
        rows = len(outputs)
        with self._lock:
            if self._pending_rows + rows > self.settings.queue_size:
                self.dropped += rows
                return
            self._pending_rows += rows
        if not copied:
            inputs = None if inputs is None else np.array(inputs)
            outputs = np.array(outputs)
        if original_sizes is not None:
            original_sizes = np.array(original_sizes, dtype=np.float64).reshape(-1)
            if len(original_sizes) != rows:
                original_sizes = None  # not one per image: left out rather than misattributed
        item = (str(version), list(request_ids), list(sizes), inputs, outputs, time.time(), original_sizes)
        with self._lock:
            self._pending.append(item)

    def process(self) -> None:
        """Everything pending, in one pass per version; then the metric counts go to Triton."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._pending_rows = 0
        by_version: dict[str, list[Any]] = {}
        for item in pending:
            by_version.setdefault(item[0], []).append(item)
        for version, items in by_version.items():
            self._account(version, items)
        self.flush()

    def _account(self, version: str, items: list[Any]) -> None:
        s = self.settings
        probs = np.concatenate([it[4] for it in items])
        probs = probs.reshape(len(probs), -1)
        with_inputs = all(it[3] is not None for it in items)
        images = np.concatenate([it[3] for it in items]) if with_inputs else None
        predicted = probs.argmax(axis=1)
        top = probs[np.arange(len(probs)), predicted].astype(np.float64)
        stats = image_stats(images, s.input_scale) if images is not None and images.ndim >= 3 else None
        if stats is not None:
            # original_size: the image as the client sent it, when the router was told (an ensemble's
            # preprocessing); a model-ready tensor was sent at its own size.
            own = float(np.sqrt(images.shape[-1] * images.shape[-2]))
            original = np.concatenate([it[6] if it[6] is not None else np.full(len(it[4]), own) for it in items])
            stats = np.column_stack([stats, original])
        base = (("model", s.model), ("version", version))
        counts = np.bincount(predicted, minlength=probs.shape[1])
        for index in np.flatnonzero(counts):
            self.predictions.add((*base, ("class", self._class(int(index)))), float(counts[index]))
        self.top_probability.add(base, top)
        if stats is not None:
            self.inputs.add((*base, ("input", s.input)), {name: stats[:, k] for k, name in enumerate(PIXEL_STATS)})
        self._log(version, items, predicted, top, images, stats)

    def _log(self, version: str, items: list[Any], predicted: np.ndarray, top: np.ndarray,
             images: np.ndarray | None, stats: np.ndarray | None) -> None:
        """The sampled records of one pass as one column batch for the writer: per record only its id
        and row are touched in Python; everything else is numpy, and the rows are made in the sink."""
        s = self.settings
        ids: list[str] = []
        rows: list[int] = []
        stamps: list[float] = []
        row = 0
        for _, request_ids, sizes, _, _, ts, _ in items:
            for request_id, size in zip(request_ids, sizes):
                if s.sample_rate >= 1.0 or self._random.random() < s.sample_rate:
                    ids.append(request_id)
                    rows.append(row)
                    stamps.append(ts)
                    # One record per image: a request of several images gets "<id>/<k>" for rows after the first.
                    for k in range(1, size):
                        ids.append(f"{request_id}/{k}")
                        rows.append(row + k)
                        stamps.append(ts)
                row += size
        if not ids:
            return
        index = np.asarray(rows, dtype=np.int64)
        kept: dict[int, bytes] = {}
        if s.keep_inputs_rate > 0 and images is not None:
            chosen = np.flatnonzero(self._np_random.random(len(index)) < s.keep_inputs_rate)
            if len(chosen):
                scaled = np.asarray(images[index[chosen]], dtype=np.float32) * np.float32(255.0 / s.input_scale)
                raw = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
                kept = {int(c): raw[j].tobytes() for j, c in enumerate(chosen)}
        self.writer.offer_batch(LogBatch(
            s.model, version, ids, np.asarray(stamps, dtype=np.float64), predicted[index].astype(np.int64),
            top[index], RECORD_STATS if stats is not None else (),
            stats[index] if stats is not None else np.zeros((len(index), 0)), kept,
        ))

    def flush(self) -> None:
        """Send pending metric counts to Triton (from the background thread)."""
        self.predictions.send(self.predictions.take())
        self.top_probability.flush()
        self.inputs.flush()
        w = self.writer
        now = {"written": w.written, "dropped": w.dropped + self.dropped, "failed": w.failed}
        delta = {k: now[k] - self._logged[k] for k in now}
        self._logged = now
        model = ("model", self.settings.model)
        self.log_records.send({(model, ("outcome", k)): float(v) for k, v in delta.items() if v})

    def close(self) -> None:
        self._ticker.close()  # its last run processes what is pending
        self.writer.close()
        self.flush()
        for exported in (self.predictions, self.top_probability, self.inputs, self.log_records):
            exported.clear()
