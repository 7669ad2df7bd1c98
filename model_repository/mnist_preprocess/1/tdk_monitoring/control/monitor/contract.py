"""What the prediction log's writers and readers agree on: the tables, the input statistics, the reference.

Writers: the Python-backend models inside Triton (a sampled record per request, batched off the request
path). Readers: the monitor service (drift, accuracy against late labels), fine-tuning (labelled inputs).
Both go through `control.db` (SQLite by default, PostgreSQL when the URL says so), namespace "monitoring".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from control.db import Database, Migration

NAMESPACE = "monitoring"

# Every metric the project exports is `tdk_<subsystem>_...` (Prometheus naming: one namespace, the
# exporter as the subsystem); Triton's own keep `nv_`. docs/monitoring.md, "Metric names".
METRIC_NAMESPACE = "tdk"
METRIC_PREFIXES: dict[str, str] = {
    "serving": "tdk_serving_",  # the Python-backend models inside Triton (control.monitor.serving)
    "router": "tdk_router_",  # the lifecycle router inside Triton (its traffic split)
    "monitor": "tdk_monitor_",  # the drift monitor service (control.monitor.service)
    "healer": "tdk_healer_",  # the stub watchdog (build_tools.healer)
}

# The cheap per-image statistics computed while preprocessing, in this order. Units: intensities are
# in [0, 1] on the model-ready input image (ink bright); sizes are pixels; the offset is the distance in
# pixels between the ink's centre of mass and the image centre; original_size is sqrt(height * width)
# of the image as the client sent it (from the preprocessing step, through the router's
# original_size_input; a model-ready tensor sent straight to the router: its own size).
STAT_NAMES: tuple[str, ...] = (
    "mean_intensity", "ink_fraction", "bbox_size", "com_offset", "original_size",
)

MIGRATIONS = (
    Migration(
        1,
        (
            # One sampled record per request. request_id may repeat (clients choose it): the log keeps
            # every record; the label join takes the latest record of an id.
            "CREATE TABLE predictions ("
            " id {serial_pk}, request_id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, model TEXT NOT NULL,"
            " version TEXT NOT NULL, predicted INTEGER NOT NULL, top_prob DOUBLE PRECISION NOT NULL,"
            " stats TEXT NOT NULL DEFAULT '{}', input {blob})",
            "CREATE INDEX predictions_ts ON predictions (model, ts)",
            "CREATE INDEX predictions_request ON predictions (request_id)",
            # Ground truth that arrives later, keyed by request id; the first label of an id wins.
            "CREATE TABLE labels ("
            " request_id TEXT PRIMARY KEY, label INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL,"
            " source TEXT NOT NULL DEFAULT '')",
        ),
    ),
)


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    ts: float  # seconds since the epoch, when the server answered
    model: str
    version: str
    predicted: int
    top_prob: float
    stats: dict[str, float] = field(default_factory=dict)  # keys from STAT_NAMES
    # The model-ready input as uint8 bytes (one byte per pixel), kept for a sample so fine-tuning can
    # train on labelled traffic; None when not kept.
    input: bytes | None = None


def migrate(db: Database) -> None:
    db.migrate(NAMESPACE, MIGRATIONS)


# A row as the predictions table takes it: request_id, ts, model, version, predicted, top_prob,
# stats (JSON text), input (bytes or None).
PredictionRow = tuple[str, float, str, str, int, float, str, "bytes | None"]


def write_prediction_rows(db: Database, rows: Sequence[PredictionRow]) -> int:
    """Insert rows in one transaction (one driver call for all of them); returns how many."""
    with db.transaction():
        db.execute_many(
            "INSERT INTO predictions (request_id, ts, model, version, predicted, top_prob, stats, input)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows)


def write_predictions(db: Database, records: Sequence[PredictionRecord]) -> int:
    """Insert records in one transaction; returns how many."""
    return write_prediction_rows(db, [
        (r.request_id, r.ts, r.model, r.version, int(r.predicted), float(r.top_prob),
         json.dumps(r.stats, sort_keys=True), r.input) for r in records])


def prediction_from_row(row: dict[str, Any]) -> PredictionRecord:
    raw = row.get("input")
    return PredictionRecord(
        request_id=row["request_id"], ts=float(row["ts"]), model=row["model"], version=str(row["version"]),
        predicted=int(row["predicted"]), top_prob=float(row["top_prob"]), stats=json.loads(row["stats"] or "{}"),
        input=bytes(raw) if raw is not None else None,
    )


@dataclass
class Reference:
    """The distributions drift is measured against, computed at build time from the model's held-out data
    and stored beside the version as `reference.json` (in the version's folder of the model repository).

    `stats[name]` is {"edges": bin edges (len k+1; the first and last are -inf/+inf written as null),
    "probs": the held-out share per bin (len k, sums to 1)}. `classes` is the held-out share of each predicted class.
    `accuracy` is the version's held-out accuracy, `n` the number of held-out images.
    """

    model: str
    version: str
    n: int
    accuracy: float
    classes: list[float]
    stats: dict[str, dict[str, list[float | None]]]

    FILENAME = "reference.json"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Reference:
        data = json.loads(text)
        return cls(**{k: data[k] for k in ("model", "version", "n", "accuracy", "classes", "stats")})

    def write(self, folder: Path) -> Path:
        path = folder / self.FILENAME
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Reference:
        return cls.from_json((folder / cls.FILENAME).read_text())


def finite_edges(edges: Sequence[float | None]) -> list[float]:
    """Bin edges with the open ends (null in JSON) as -inf/+inf, for numpy.digitize and friends."""
    last = len(edges) - 1
    return [(float("-inf") if i == 0 else float("inf")) if e is None else float(e) for i, e in enumerate(edges)
            if i in (0, last) or e is not None]
