"""The prediction log's tables and the reference file, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import math
from pathlib import Path

from control.db import Database
from control.monitor.contract import (
    STAT_NAMES,
    PredictionRecord,
    Reference,
    finite_edges,
    migrate,
    prediction_from_row,
    write_predictions,
)


def test_prediction_log_round_trips_records_with_inputs_when_written_and_read(database_url: str) -> None:
    with Database(database_url) as db:
        migrate(db)
        migrate(db)  # idempotent
        pixels = bytes(range(256)) * 3 + bytes(16)
        records = [
            PredictionRecord("r1", 1.5, "m", "1", 7, 0.93, {n: 0.25 for n in STAT_NAMES}, pixels),
            PredictionRecord("r1", 2.5, "m", "2", 1, 0.51),
        ]
        assert write_predictions(db, records) == 2
        rows = db.query("SELECT * FROM predictions ORDER BY ts")
        assert [prediction_from_row(r) for r in rows] == records
        db.execute("INSERT INTO labels (request_id, label, ts) VALUES (?, ?, ?)", ("r1", 7, 3.0))
        joined = db.query("SELECT p.version, l.label FROM predictions p JOIN labels l USING (request_id) ORDER BY p.ts")
        assert [(r["version"], r["label"]) for r in joined] == [("1", 7), ("2", 7)]


def test_reference_round_trips_open_bin_edges_when_written_beside_a_version(tmp_path: Path) -> None:
    ref = Reference(model="m", version="1", n=100, accuracy=0.98, classes=[0.1] * 10,
                    stats={"mean_intensity": {"edges": [None, 0.1, 0.2, None], "probs": [0.2, 0.5, 0.3]}})
    ref.write(tmp_path)
    back = Reference.read(tmp_path)
    assert back == ref
    edges = finite_edges(back.stats["mean_intensity"]["edges"])
    assert edges[0] == -math.inf and edges[-1] == math.inf and edges[1:3] == [0.1, 0.2]
