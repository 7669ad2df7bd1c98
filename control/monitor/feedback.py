"""Label feedback: ground truth that arrives after the prediction, keyed by request id.

Labels come from the monitor's HTTP endpoint (POST /labels) or a bulk import (CSV or JSONL); both go
through `ingest`, which validates every item before writing any (a bad batch is refused whole, with
the item and field named) and stores them in the contract's `labels` table. Outcomes:

  accepted   a new request id
  duplicate  the id already had a label: the first label wins, the new one is dropped and counted

Whether a label is late (long after its prediction) or unknown (no prediction with that id) depends
on the prediction log, which is written in batches off the request path: a label may arrive before its
prediction. Those are read from the tables by `label_status` (the drift module) rather than decided
here; an unknown id simply waits in the table and joins when its prediction arrives.

The outcome counts live in the database (namespace "monitoring_feedback"), so the HTTP endpoint and the
import command add to the same figures and they survive a restart of the monitor.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from build_tools.errors import ToolkitError
from control.db import Database, Migration
from control.monitor import contract

logger = logging.getLogger(__name__)

NAMESPACE = "monitoring_feedback"
OUTCOMES: tuple[str, ...] = ("accepted", "duplicate")
MAX_ID_CHARS = 256

MIGRATIONS = (
    Migration(1, ("CREATE TABLE label_outcomes (outcome TEXT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0)",)),
)


class LabelError(ToolkitError):
    """A label item (or file line) is malformed: names the item, the field, the bad value, what is expected."""


@dataclass(frozen=True)
class Label:
    request_id: str
    label: int


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicate: int

    def as_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicate": self.duplicate}


def migrate(db: Database) -> None:
    contract.migrate(db)
    db.migrate(NAMESPACE, MIGRATIONS)


def parse_item(item: Any, num_classes: int, where: str = "item") -> Label:
    """One label from a decoded JSON object (or a CSV row); LabelError names what is wrong."""
    if not isinstance(item, Mapping):
        raise LabelError(f"{where}: expected an object {{\"request_id\": ..., \"label\": ...}}, "
                         f"got {type(item).__name__}")
    unknown = sorted(set(item) - {"request_id", "label"})
    if unknown:
        raise LabelError(f"{where}: unknown field(s) {unknown}; allowed: request_id, label")
    if "request_id" not in item:
        raise LabelError(f"{where}.request_id: missing; expected the id the prediction was made under")
    rid = item["request_id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise LabelError(f"{where}.request_id: expected a string, got {rid!r}")
    rid = str(rid).strip()
    if not rid or len(rid) > MAX_ID_CHARS:
        raise LabelError(f"{where}.request_id: expected 1 to {MAX_ID_CHARS} characters, got {rid!r}")
    if "label" not in item:
        raise LabelError(f"{where}.label: missing; expected the true class, an integer 0..{num_classes - 1}")
    raw = item["label"]
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw.strip())
    if value is None or not 0 <= value < num_classes:
        raise LabelError(f"{where}.label: expected an integer 0..{num_classes - 1}, got {raw!r}")
    return Label(rid, value)


def parse_payload(payload: Any, num_classes: int) -> list[Label]:
    """The HTTP body: one object, or a list of them."""
    if isinstance(payload, list):
        if not payload:
            raise LabelError("body: an empty list; expected at least one {\"request_id\": ..., \"label\": ...}")
        return [parse_item(item, num_classes, f"[{i}]") for i, item in enumerate(payload)]
    return [parse_item(payload, num_classes, "body")]


def read_file(path: Path, num_classes: int) -> list[Label]:
    """A bulk file: CSV with a header `request_id,label`, or JSONL (one object per line), by suffix."""
    kind = path.suffix.lower()
    if kind not in (".csv", ".jsonl", ".ndjson"):
        raise LabelError(f"{path}: unknown file type {path.suffix!r}; expected .csv or .jsonl")
    try:
        text = path.read_text()
    except OSError as e:
        raise LabelError(f"{path}: cannot read ({e.strerror})") from e
    labels: list[Label] = []
    if kind == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = {"request_id", "label"} - set(reader.fieldnames or ())
        if missing:
            raise LabelError(f"{path}: the CSV header lacks {sorted(missing)}; expected a header row request_id,label")
        for row in reader:
            labels.append(parse_item(row, num_classes, f"{path.name} line {reader.line_num}"))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabelError(f"{path.name} line {n}: not JSON ({e.msg})") from e
            labels.append(parse_item(item, num_classes, f"{path.name} line {n}"))
    return labels


def ingest(db: Database, labels: Sequence[Label], source: str, now: float | None = None) -> IngestResult:
    """Store labels in one transaction; the first label of an id wins, later ones are counted duplicates.

    Duplicates inside one batch count too (the first occurrence wins)."""
    now = time.time() if now is None else now
    accepted = 0
    with db.transaction():
        for lab in labels:
            accepted += db.execute(
                "INSERT INTO labels (request_id, label, ts, source) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (request_id) DO NOTHING",
                (lab.request_id, lab.label, now, source),
            )
        result = IngestResult(accepted, len(labels) - accepted)
        for outcome, n in result.as_dict().items():
            if n:
                _bump(db, outcome, n)
    logger.debug("labels from %s: %s", source, result)
    return result


def _bump(db: Database, outcome: str, n: int) -> None:
    # An upsert: the HTTP endpoint and an import may count at the same time.
    db.execute("INSERT INTO label_outcomes (outcome, n) VALUES (?, ?)"
               " ON CONFLICT (outcome) DO UPDATE SET n = label_outcomes.n + excluded.n", (outcome, n))


def outcome_counts(db: Database) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for row in db.query("SELECT outcome, n FROM label_outcomes"):
        counts[row["outcome"]] = int(row["n"])
    return counts


def import_files(db: Database, paths: Iterable[Path], num_classes: int) -> IngestResult:
    """Validate every file first, then store them all (nothing is written when one line is bad)."""
    batches = [(p, read_file(p, num_classes)) for p in paths]
    accepted = duplicate = 0
    with db.transaction():
        for path, labels in batches:
            r = ingest(db, labels, source=f"import:{path.name}")
            accepted, duplicate = accepted + r.accepted, duplicate + r.duplicate
    return IngestResult(accepted, duplicate)
