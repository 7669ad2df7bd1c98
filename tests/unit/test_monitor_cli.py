"""`triton-monitor`: the console contract (one-line errors, exit codes) and what import-labels and status print."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from control.db import Database
from control.monitor import feedback
from control.monitor.cli import main
from control.monitor.contract import write_predictions
from tests.support.monitoring import records

ROOT = Path(__file__).resolve().parents[2]


def test_import_labels_prints_the_counts_when_files_are_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    (tmp_path / "a.csv").write_text("request_id,label\nr1,3\nr2,4\nr1,5\n")
    assert main(["import-labels", str(tmp_path / "a.csv"), "--db", db, "--spec", str(ROOT / "deploy.yaml")]) == 0
    assert capsys.readouterr().out == "imported 2 label(s); 1 duplicate(s) dropped (the first label of an id wins)\n"


def test_import_labels_fails_with_one_line_naming_the_line_when_a_label_is_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    (tmp_path / "a.jsonl").write_text('{"request_id": "r1", "label": 3}\n{"request_id": "r2", "label": 10}\n')
    assert main(["import-labels", str(tmp_path / "a.jsonl"), "--db", db, "--spec", str(ROOT / "deploy.yaml")]) == 1
    err = capsys.readouterr().err
    assert err == "triton-monitor: error: a.jsonl line 2.label: expected an integer 0..9, got 10\n"


def test_status_prints_each_version_and_the_label_counts_when_the_log_has_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with Database(url) as db:
        feedback.migrate(db)
        recs, truth = records(np.random.default_rng(0), 250)
        write_predictions(db, recs)
        feedback.ingest(db, [feedback.Label(r.request_id, int(t)) for r, t in zip(recs, truth)], "test",
                        now=recs[-1].ts + 5)
    assert main(["status", "--db", url, "--spec", str(ROOT / "deploy.yaml"), "--repository", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("clf v1: window 250, max PSI -, chi2 p -, accuracy 0.9")  # no reference: no drift
    assert "over 250" in out[0] and out[0].endswith("alarms: none")
    assert out[1] == "labels: 250 accepted, 0 duplicate, 0 late, 0 pending, 0 unknown"
