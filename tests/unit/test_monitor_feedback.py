"""Label feedback on SQLite and a real PostgreSQL: validation, first-label-wins, late/pending/unknown, import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from build_tools.spec import DriftSpec
from control.db import Database
from control.monitor import feedback
from control.monitor.contract import write_predictions
from control.monitor.drift import label_status
from control.monitor.feedback import Label, LabelError
from tests.support.monitoring import records


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"label": 3}, r"body.request_id: missing"),
        ({"request_id": "a"}, r"body.label: missing; expected the true class, an integer 0..9"),
        ({"request_id": "a", "label": 10}, r"body.label: expected an integer 0..9, got 10"),
        ({"request_id": "a", "label": True}, r"body.label: expected an integer 0..9, got True"),
        ({"request_id": "a", "label": "seven"}, r"got 'seven'"),
        ({"request_id": "", "label": 1}, r"body.request_id: expected 1 to 256 characters"),
        ({"request_id": "a", "label": 1, "lable": 2}, r"unknown field\(s\) \['lable'\]"),
        ([{"request_id": "a", "label": 1}, {"request_id": "b", "label": -1}], r"\[1\].label"),
        ([], r"an empty list"),
        ("a,1", r"expected an object"),
    ],
)
def test_parse_payload_names_the_bad_field_when_an_item_is_malformed(payload: object, message: str) -> None:
    with pytest.raises(LabelError, match=message):
        feedback.parse_payload(payload, num_classes=10)


def test_ingest_keeps_the_first_label_and_counts_duplicates_when_an_id_repeats(database_url: str) -> None:
    with Database(database_url) as db:
        feedback.migrate(db)
        first = feedback.ingest(db, [Label("a", 1), Label("b", 2), Label("a", 7)], "http", now=10.0)
        assert first.as_dict() == {"accepted": 2, "duplicate": 1}
        second = feedback.ingest(db, [Label("b", 5), Label("c", 3)], "http", now=11.0)
        assert second.as_dict() == {"accepted": 1, "duplicate": 1}
        rows = {r["request_id"]: int(r["label"]) for r in db.query("SELECT request_id, label FROM labels")}
        assert rows == {"a": 1, "b": 2, "c": 3}
        assert feedback.outcome_counts(db) == {"accepted": 3, "duplicate": 2}


def test_label_status_counts_late_pending_and_unknown_when_labels_and_predictions_race(database_url: str) -> None:
    spec = DriftSpec(unknown_label_grace_s=60, late_label_s=3600)
    rng = np.random.default_rng(0)
    with Database(database_url) as db:
        feedback.migrate(db)
        recs, _ = records(rng, 3, start_ts=1000.0)  # ids r0, r1, r2
        write_predictions(db, recs)
        feedback.ingest(db, [Label("r0", 1)], "t", now=1010.0)          # on time
        feedback.ingest(db, [Label("r1", 1)], "t", now=1000.0 + 7200)   # two hours later: late
        feedback.ingest(db, [Label("x-old", 1)], "t", now=2000.0)       # no prediction, past the grace period
        feedback.ingest(db, [Label("x-new", 1)], "t", now=9000.0)       # no prediction yet, within it
        status = label_status(db, spec, now=9030.0)
        assert (status.late, status.pending, status.unknown) == (1, 1, 1)
        # The prediction of the pending id arrives (the log is written in batches): it joins.
        write_predictions(db, records(rng, 1, prefix="x-new", start_ts=8990.0)[0])
        db.execute("UPDATE predictions SET request_id = 'x-new' WHERE request_id = 'x-new0'")
        status = label_status(db, spec, now=9030.0)
        assert (status.late, status.pending, status.unknown) == (1, 0, 1)


def test_import_files_stores_csv_and_jsonl_when_every_line_is_valid(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("request_id,label\nr1,3\nr2,4\n")
    (tmp_path / "b.jsonl").write_text('{"request_id": "r3", "label": 5}\n\n{"request_id": "r1", "label": 9}\n')
    with Database(database_url) as db:
        feedback.migrate(db)
        result = feedback.import_files(db, [tmp_path / "a.csv", tmp_path / "b.jsonl"], 10)
        assert result.as_dict() == {"accepted": 3, "duplicate": 1}
        sources = {r["source"] for r in db.query("SELECT source FROM labels")}
        assert sources == {"import:a.csv", "import:b.jsonl"}


def test_import_files_writes_nothing_and_names_the_line_when_one_line_is_bad(database_url: str,
                                                                             tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("request_id,label\nr1,3\n")
    (tmp_path / "b.jsonl").write_text('{"request_id": "r3", "label": 5}\n{"request_id": "r4", "label": 12}\n')
    (tmp_path / "c.csv").write_text("id,label\nr1,3\n")
    with Database(database_url) as db:
        feedback.migrate(db)
        with pytest.raises(LabelError, match=r"b.jsonl line 2.label: expected an integer 0..9, got 12"):
            feedback.import_files(db, [tmp_path / "a.csv", tmp_path / "b.jsonl"], 10)
        with pytest.raises(LabelError, match=r"header lacks \['request_id'\]"):
            feedback.import_files(db, [tmp_path / "c.csv"], 10)
        with pytest.raises(LabelError, match=r"expected .csv or .jsonl"):
            feedback.import_files(db, [tmp_path / "c.txt"], 10)
        assert db.query("SELECT * FROM labels") == []
