"""Drift snapshots and the monitor service on SQLite and a real PostgreSQL (records written through the
contract), and the service's HTTP endpoints (real sockets, real Prometheus text)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from build_tools.spec import DriftSpec
from control.db import Database
from control.monitor import feedback
from control.monitor.contract import STAT_NAMES, write_predictions
from control.monitor.drift import References, snapshot, snapshots
from control.monitor.feedback import Label
from control.monitor.service import Monitor, MonitorServer, alarms
from control.registry import Registry
from tests.support.monitoring import records, reference_from, synthetic_stats
from triton_api.metrics import metric_series, metric_value

SPEC = DriftSpec(window=500, min_window=200, min_labels=100, label_window=1000)


def _reference(rng: np.random.Generator, version: str = "1"):
    stats = synthetic_stats(rng, 5000)
    return reference_from(stats, rng.integers(0, 10, 5000), accuracy=0.98, version=version)


def test_snapshot_is_quiet_when_the_window_matches_the_reference(database_url: str) -> None:
    rng = np.random.default_rng(1)
    ref = _reference(rng)
    with Database(database_url) as db:
        feedback.migrate(db)
        write_predictions(db, records(rng, 600)[0])
        snap = snapshot(db, "clf", "1", ref, SPEC)
        assert snap.window == 500 and set(snap.psi) == set(STAT_NAMES)
        assert max(snap.psi.values()) < SPEC.psi_warn
        assert snap.chi2 is not None and snap.chi2.p_value > SPEC.chi2_p_value
        assert not snap.input_drift(SPEC) and not snap.prediction_drift(SPEC)
        assert snap.accuracy is None and snap.coverage == 0.0  # no labels yet


def test_snapshot_flags_input_and_prediction_drift_when_inputs_shift_and_one_class_dominates(
    database_url: str,
) -> None:
    rng = np.random.default_rng(2)
    ref = _reference(rng)
    with Database(database_url) as db:
        feedback.migrate(db)
        write_predictions(db, records(rng, 500, shift=1.5, dominant=4)[0])
        snap = snapshot(db, "clf", "1", ref, SPEC)
        assert min(snap.psi[n] for n in ("mean_intensity", "ink_fraction", "bbox_size")) > SPEC.psi_alert
        assert snap.chi2 is not None and snap.chi2.p_value < 1e-10
        assert snap.input_drift(SPEC) and snap.prediction_drift(SPEC)


def test_snapshot_publishes_nothing_when_the_window_is_below_min_window(database_url: str) -> None:
    rng = np.random.default_rng(3)
    with Database(database_url) as db:
        feedback.migrate(db)
        write_predictions(db, records(rng, 150, shift=3.0)[0])
        snap = snapshot(db, "clf", "1", _reference(rng), SPEC)
        assert snap.window == 150 and snap.psi == {} and snap.chi2 is None and not snap.input_drift(SPEC)


def test_accuracy_drops_with_a_wilson_interval_when_labels_disagree_with_predictions(database_url: str) -> None:
    rng = np.random.default_rng(4)
    ref = _reference(rng)
    with Database(database_url) as db:
        feedback.migrate(db)
        recs, truth = records(rng, 400, accuracy=0.80)
        write_predictions(db, recs)
        # Labels for 300 of the 400, arriving 30 s after each prediction; one unknown id.
        feedback.ingest(db, [Label(r.request_id, int(t)) for r, t in zip(recs[:300], truth[:300])], "t",
                        now=recs[299].ts + 30)
        snap = snapshot(db, "clf", "1", ref, SPEC)
        assert snap.labelled == 300 and snap.coverage == pytest.approx(0.75)
        assert snap.accuracy is not None and 0.72 < snap.accuracy.estimate < 0.88
        assert snap.accuracy.low < snap.accuracy.estimate < snap.accuracy.high
        assert snap.accuracy.high < 0.98 - SPEC.max_accuracy_drop and snap.accuracy_drop(SPEC)
        assert snap.delay_p50_s is not None and 30 <= snap.delay_p50_s <= 33


def test_canary_is_worse_only_when_the_intervals_separate(database_url: str) -> None:
    rng = np.random.default_rng(5)
    with Database(database_url) as db:
        feedback.migrate(db)
        registry = Registry(db)
        registry.add("clf", 1, "a" * 64, "v1.onnx", "first", "champion", {}, "test", 90.0)
        registry.add("clf", 2, "b" * 64, "v2.onnx", "second", "canary", {}, "test", 10.0)
        refs = References([])
        refs.add(_reference(rng, "1"))
        refs.add(_reference(rng, "2"))
        champ, t1 = records(rng, 300, version="1", prefix="a", accuracy=0.97)
        close, t2 = records(rng, 300, version="2", prefix="b", accuracy=0.95)
        write_predictions(db, champ + close)
        feedback.ingest(db, [Label(r.request_id, int(t)) for r, t in zip(champ + close, [*t1, *t2])], "t")
        verdicts = alarms(snapshots(db, refs, SPEC), SPEC)
        assert not verdicts[("clf", "2")]["canary_worse"]  # 95 % vs 97 % on 300 labels: overlapping
        bad, t3 = records(rng, 300, version="2", prefix="c", accuracy=0.70, start_ts=5000.0)
        write_predictions(db, bad)
        feedback.ingest(db, [Label(r.request_id, int(t)) for r, t in zip(bad, t3)], "t")
        spec = DriftSpec(window=500, min_window=200, min_labels=100, label_window=300)
        by = {(s.model, s.version): s for s in snapshots(db, refs, spec)}
        assert by[("clf", "2")].role == "canary" and by[("clf", "1")].role == "champion"
        assert alarms(list(by.values()), spec)[("clf", "2")]["canary_worse"]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/labels", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_monitor_service_takes_labels_and_exports_metrics_when_scraped(database_url: str) -> None:
    rng = np.random.default_rng(6)
    refs = References([])
    refs.add(_reference(rng))
    with Database(database_url) as db:
        monitor = Monitor(db, refs, DriftSpec(window=300, min_window=200, min_labels=50, interval_s=0.2))
        recs, truth = records(rng, 300, shift=2.0)
        write_predictions(db, recs)
        with MonitorServer(monitor) as server:
            status, body = _post(server.url, json.dumps(
                [{"request_id": r.request_id, "label": int(t)} for r, t in zip(recs[:100], truth[:100])]).encode())
            assert (status, body) == (200, {"accepted": 100, "duplicate": 0})
            assert _post(server.url, b'{"request_id": "r0", "label": 1}') == (200, {"accepted": 0, "duplicate": 1})
            status, body = _post(server.url, b'{"request_id": "r0", "label": 11}')
            assert status == 400 and "body.label: expected an integer 0..9, got 11" in body["error"]
            status, body = _post(server.url, b"not json")
            assert status == 400 and "not JSON" in body["error"]
            monitor.update()
            with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
                text = r.read().decode()
            with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
                assert r.status == 200
        mv = {"model": "clf", "version": "1"}
        assert metric_value(text, "tdk_monitor_labels_received_total", outcome="accepted") == 100
        assert metric_value(text, "tdk_monitor_labels_received_total", outcome="duplicate") == 1
        assert metric_value(text, "tdk_monitor_labels_rejected_total") == 2
        assert metric_value(text, "tdk_monitor_window_records", window="input", **mv) == 300
        psi = {lab["stat"]: v for lab, v in metric_series(text, "tdk_monitor_input_psi")}
        assert set(psi) == set(STAT_NAMES) and psi["mean_intensity"] > 0.25
        assert metric_value(text, "tdk_monitor_check_alarm", check="input_drift", **mv) == 1.0
        assert metric_value(text, "tdk_monitor_threshold", threshold="psi_alert") == 0.25
        bounds = {lab["bound"]: v for lab, v in metric_series(text, "tdk_monitor_accuracy_ratio")}
        assert bounds["lower"] < bounds["estimate"] < bounds["upper"]
        assert metric_value(text, "tdk_monitor_label_coverage_ratio", **mv) == pytest.approx(100 / 300)
        assert metric_value(text, "tdk_monitor_reference_accuracy_ratio", **mv) == 0.98
        assert metric_value(text, "tdk_monitor_prediction_chi2_p_value", **mv) is not None
