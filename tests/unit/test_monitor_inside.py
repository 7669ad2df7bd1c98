"""Monitoring inside Triton without a server: the input statistics, the cumulative histograms, the
prediction log writer (bounded queue, drops, the sink process, retention) on SQLite and PostgreSQL,
the reference, and what the spec puts into the generated configs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from build_tools.build import build_repositories
from build_tools.config import read_config
from build_tools.errors import SpecError
from build_tools.spec import FlavorSpec, load_spec, parse_spec
from control.db import Database
from control.monitor import contract
from control.monitor.contract import PredictionRecord, Reference, finite_edges
from control.monitor.log_writer import PredictionLogWriter, Retention, apply_retention
from control.monitor.reference import compute_reference, quantile_bins
from control.monitor.serving import resolve_database_url
from control.monitor.stats import PIXEL_STATS, CumulativeHistogram, image_stats

ROOT = Path(__file__).resolve().parents[2]


def _record(i: int, model: str = "m", ts: float | None = None) -> PredictionRecord:
    return PredictionRecord(request_id=f"r{i}", ts=time.time() if ts is None else ts, model=model, version="1",
                            predicted=i % 10, top_prob=0.9, stats={"mean_intensity": 0.1}, input=bytes([i % 256]) * 4)


def test_image_stats_measure_a_known_block_when_computed_on_a_batch() -> None:
    img = np.zeros((2, 1, 28, 28), dtype=np.float32)
    img[0, 0, 4:8, 10:20] = 255.0  # 4 x 10 block of full ink, off centre
    stats = image_stats(img)
    mean, ink, bbox, offset = stats[0]
    assert mean == pytest.approx(40 / 784) and ink == pytest.approx(40 / 784)
    assert bbox == pytest.approx(np.sqrt(4 * 10))
    # Centre of mass (5.5, 14.5) against the image centre (13.5, 13.5).
    assert offset == pytest.approx(np.hypot(8.0, 1.0))
    assert list(stats[1]) == [0.0, 0.0, 0.0, 0.0]  # blank: no ink, no box, no offset
    assert len(PIXEL_STATS) == stats.shape[1]


def test_image_stats_scale_to_full_ink_when_the_input_range_is_not_0_255() -> None:
    img = np.full((1, 28, 28), 0.5, dtype=np.float32)
    assert image_stats(img, scale=1.0)[0, 0] == pytest.approx(0.5)
    assert image_stats(img * 255.0)[0, 0] == pytest.approx(0.5)


def test_cumulative_histogram_counts_each_value_once_when_values_fall_on_bounds() -> None:
    hist = CumulativeHistogram([0.5, 0.9])
    hist.add(np.array([0.1, 0.5, 0.7, 0.9, 0.95]))
    cumulative, total, count = hist.take()
    # le=0.5 holds 0.1 and 0.5 (less or equal), le=0.9 adds 0.7 and 0.9, +Inf adds 0.95.
    assert list(cumulative) == [2, 4, 5] and count == 5 and total == pytest.approx(3.15)
    assert hist.take()[2] == 0  # taken: deltas start again


def test_writer_logs_every_record_when_the_database_keeps_up(database_url: str) -> None:
    writer = PredictionLogWriter(database_url, "m", queue_size=1000, tick_s=0.05)
    try:
        for i in range(50):
            assert writer.offer(_record(i))
        assert writer.flush(30)
    finally:
        writer.close()
    assert (writer.written, writer.dropped, writer.failed) == (50, 0, 0)
    with Database(database_url) as db:
        rows = [contract.prediction_from_row(r) for r in db.query("SELECT * FROM predictions ORDER BY id")]
    assert [r.request_id for r in rows] == [f"r{i}" for i in range(50)]
    assert rows[3].input == bytes([3]) * 4 and rows[3].stats == {"mean_intensity": 0.1}


def test_writer_drops_and_counts_instead_of_blocking_when_its_queue_is_full(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:  # keeps the writer's thread busy: nothing is drained meanwhile
        entered.set()
        release.wait(30)

    writer = PredictionLogWriter(f"sqlite:///{tmp_path / 'log.db'}", "m", queue_size=5, tick_s=0.01, on_tick=hold)
    try:
        assert entered.wait(30)
        started = time.monotonic()
        accepted = [writer.offer(_record(i)) for i in range(20)]
        assert time.monotonic() - started < 0.5, "offer() must never wait for the database"
        assert accepted == [True] * 5 + [False] * 15 and writer.dropped == 15
        release.set()
        assert writer.flush(30)
    finally:
        release.set()
        writer.on_tick = None
        writer.close()
    assert writer.written == 5


def test_writer_counts_failures_when_the_database_cannot_be_reached(tmp_path: Path) -> None:
    # A port nothing listens on: the sink cannot connect; serving must not notice beyond the count.
    writer = PredictionLogWriter("postgresql://app@127.0.0.1:1/none", "m", tick_s=0.05)
    try:
        for i in range(3):
            writer.offer(_record(i))
        assert writer.flush(60)
    finally:
        writer.close()
    assert (writer.written, writer.failed) == (0, 3)


def test_retention_keeps_the_newest_rows_and_days_when_the_log_outgrows_them(database_url: str) -> None:
    now = time.time()
    with Database(database_url) as db:
        contract.migrate(db)
        contract.write_predictions(db, [_record(i, ts=now - 10 * 86400) for i in range(5)])  # too old
        contract.write_predictions(db, [_record(i, ts=now) for i in range(5, 20)])
        contract.write_predictions(db, [_record(i, model="other", ts=now - 10 * 86400) for i in range(3)])
        assert apply_retention(db, "m", Retention(max_rows=10, max_days=7), now=now) == 10
        kept = [r["request_id"] for r in db.query("SELECT request_id FROM predictions WHERE model = 'm' ORDER BY id")]
        assert kept == [f"r{i}" for i in range(10, 20)]
        # Another model's rows are its own retention's business.
        assert len(db.query("SELECT id FROM predictions WHERE model = 'other'")) == 3


def test_relative_sqlite_path_resolves_beside_the_repository_when_the_server_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TDK_MONITORING_DATABASE_URL", raising=False)
    folder = tmp_path / "repo" / "mnist_classifier_router"
    assert resolve_database_url("sqlite:///monitoring/p.db", folder) == f"sqlite:///{tmp_path / 'monitoring/p.db'}"
    assert resolve_database_url("postgresql://a@h:1/d", folder) == "postgresql://a@h:1/d"
    monkeypatch.setenv("TDK_MONITORING_DATABASE_URL", "postgresql://b@h:2/e")
    assert resolve_database_url("sqlite:///monitoring/p.db", folder) == "postgresql://b@h:2/e"


def test_quantile_bins_are_open_ended_and_sum_to_one_when_built_from_held_out_values() -> None:
    values = np.random.default_rng(0).normal(size=1000)
    edges, probs = quantile_bins(values)
    assert edges[0] is None and edges[-1] is None and len(probs) == len(edges) - 1 == 10
    assert sum(probs) == pytest.approx(1.0) and max(probs) < 0.12
    # The monitor's rule (numpy.digitize on the finite edges) puts the same values in the same bins.
    idx = np.digitize(values, finite_edges(edges)[1:-1])
    assert list(np.bincount(idx, minlength=10) / 1000) == pytest.approx(probs)


def test_reference_records_held_out_accuracy_and_classes_when_computed_from_scores() -> None:
    inputs = np.zeros((4, 1, 28, 28), dtype=np.uint8)
    scores = np.eye(3)[[0, 1, 1, 2]]
    ref = compute_reference("m", "2", scores, inputs, np.array([0, 1, 2, 2]))
    assert (ref.n, ref.accuracy, ref.classes) == (4, 0.75, [0.25, 0.5, 0.25])
    assert set(ref.stats) == set(contract.STAT_NAMES)
    assert Reference.from_json(ref.to_json()).stats == ref.stats


def test_monitoring_spec_error_names_the_field_when_a_rate_is_out_of_range(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    data["monitoring"]["sample_rate"] = 2
    with pytest.raises(SpecError, match=r"monitoring\.sample_rate"):
        parse_spec(data, ROOT)
    data["monitoring"]["sample_rate"] = 1
    data["monitoring"]["models"]["nope"] = {}
    with pytest.raises(SpecError, match=r"monitoring\.models\.nope.*onnx models: \['mnist_classifier'\]"):
        parse_spec(data, ROOT)


def test_router_watches_and_runner_behind_it_does_not_when_monitoring_is_built(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "deploy.yaml")
    spec = spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(tmp_path / "emb")),
                                               "ngc": FlavorSpec(output=str(tmp_path / "ngc"))}})
    build_repositories(spec)
    emb = tmp_path / "emb"
    router = read_config(emb / "mnist_classifier_router" / "config.pbtxt").parameters
    assert router["monitoring.enabled"].string_value == "true"
    assert router["monitoring.model"].string_value == "mnist_classifier"
    assert router["monitoring.input"].string_value == "image"
    assert router["monitoring.output"].string_value == "probabilities"
    assert router["monitoring.input_scale"].string_value == "255.0"
    assert "monitoring.enabled" not in read_config(emb / "mnist_classifier" / "config.pbtxt").parameters
    ts = read_config(emb / "mnist_classifier_torchscript" / "config.pbtxt").parameters
    assert ts["monitoring.model"].string_value == "mnist_classifier_torchscript"
    preprocess = read_config(emb / "mnist_preprocess" / "config.pbtxt").parameters
    assert preprocess["monitoring.enabled"].string_value == "true"
    # ngc: the router and the preprocessing step watch too (a copy of the watching code beside them);
    # the models in native backends (onnxruntime, pytorch, tensorrt) cannot.
    ngc = tmp_path / "ngc"
    assert read_config(ngc / "mnist_classifier_router" / "config.pbtxt").parameters[
        "monitoring.model"].string_value == "mnist_classifier"
    preprocess_ngc = read_config(ngc / "mnist_preprocess" / "config.pbtxt").parameters
    assert preprocess_ngc["monitoring.enabled"].string_value == "true"
    for model in ("mnist_classifier", "mnist_classifier_torchscript", "mnist_classifier_trt"):
        params = read_config(ngc / model / "config.pbtxt").parameters
        assert not [k for k in params if k.startswith("monitoring.")], model
        assert not (ngc / model / "1" / "tdk_monitoring").exists()
    # reference.json beside every version, in both flavors.
    for repo in (emb, tmp_path / "ngc"):
        ref = Reference.read(repo / "mnist_classifier" / "1")
        assert ref.n == 500 and ref.accuracy == pytest.approx(0.986)
    # The embedded TorchScript twin logs its own predictions (as itself), so it has its own reference;
    # on ngc it runs in the PyTorch backend, watches nothing and needs none.
    twin = Reference.read(emb / "mnist_classifier_torchscript" / "1")
    assert twin.model == "mnist_classifier_torchscript" and twin.version == "1"
    assert twin.n == 500 and twin.classes == ref.classes
    assert not (tmp_path / "ngc" / "mnist_classifier_torchscript" / "1" / Reference.FILENAME).exists()
