"""The prediction log's database side, as its own process: `python -m control.monitor.sink URL MODEL`.

The writer inside Triton (control.monitor.log_writer) sends it batches on stdin (a 4-byte little-endian
length, then the pickled rows: pickle is several times cheaper than JSON for the stub that encodes
them, and both ends are this package) and reads one JSON line back per batch:
{"written": n, "failed": n, "deleted": n}. Why a process: the
Python-backend stub embeds the system libpython while the virtualenv's standard library may come
from another build of the same Python (then `ssl`, which the PostgreSQL driver needs, cannot load in
the stub); and the database work then never competes with `execute()` for the stub's interpreter.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from control.db import Database
from control.monitor import contract
from control.monitor.contract import PredictionRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    max_rows: int = 100_000  # per model; 0 = no row limit
    max_days: float = 7.0  # 0 = no age limit


def apply_retention(db: Database, model: str, retention: Retention, now: float | None = None) -> int:
    """Delete the model's rows beyond the retention; returns how many were deleted."""
    deleted = 0
    if retention.max_days > 0:
        cutoff = (time.time() if now is None else now) - retention.max_days * 86400.0
        deleted += db.execute("DELETE FROM predictions WHERE model = ? AND ts < ?", (model, cutoff))
    if retention.max_rows > 0:
        # The id of the newest row beyond the limit; it and everything older go.
        row = db.query_one(
            "SELECT id FROM predictions WHERE model = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
            (model, retention.max_rows),
        )
        if row is not None:
            deleted += db.execute("DELETE FROM predictions WHERE model = ? AND id <= ?", (model, int(row["id"])))
    return deleted


_LENGTH = struct.Struct("<I")


def encode_batch(records: list[PredictionRecord]) -> bytes:
    payload = pickle.dumps(
        [(r.request_id, r.ts, r.model, r.version, r.predicted, r.top_prob, r.stats, r.input) for r in records],
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    return _LENGTH.pack(len(payload)) + payload


def decode_batch(payload: bytes) -> list[PredictionRecord]:
    return [
        PredictionRecord(request_id=str(rid), ts=float(ts), model=str(model), version=str(version),
                         predicted=int(predicted), top_prob=float(top), stats=dict(stats), input=raw)
        for rid, ts, model, version, predicted, top, stats, raw in pickle.loads(payload)  # our own writer only
    ]


def read_batch(stream: BinaryIO) -> bytes | None:
    """One length-prefixed batch from the stream; None at its end."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    payload = stream.read(size)
    return payload if len(payload) == size else None


class Sink:
    """Writes batches to the database, connecting (and migrating) lazily and again after a failure."""

    def __init__(self, url: str, model: str, retention: Retention, retention_interval_s: float = 60.0) -> None:
        self.url = url
        self.model = model
        self.retention = retention
        self.retention_interval_s = retention_interval_s
        self._db: Database | None = None
        self._next_retention = time.monotonic() + retention_interval_s

    def _database(self) -> Database:
        if self._db is None:
            db = Database(self.url)
            if db.dialect == "sqlite":
                # WAL without a sync per commit: a crash may lose the last batches, never corrupt the file.
                db.execute("PRAGMA synchronous=NORMAL")
            contract.migrate(db)
            self._db = db
        return self._db

    def connect(self) -> None:
        try:
            self._database()
        except Exception as e:
            logger.warning("prediction log: database not reachable yet (retried on write): %s", e)

    def write(self, records: list[PredictionRecord]) -> dict[str, Any]:
        result = {"written": 0, "failed": 0, "deleted": 0}
        try:
            result["written"] = contract.write_predictions(self._database(), records)
        except Exception as e:  # counted and reported back; the next batch reconnects
            result["failed"] = len(records)
            logger.warning("prediction log: %d record(s) not written: %s", len(records), e)
            self.close()
        if time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + self.retention_interval_s
            try:
                result["deleted"] = apply_retention(self._database(), self.model, self.retention)
            except Exception as e:
                logger.warning("prediction log: retention failed: %s", e)
                self.close()
        return result

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("model")
    parser.add_argument("--max-rows", type=int, default=Retention.max_rows)
    parser.add_argument("--max-days", type=float, default=Retention.max_days)
    parser.add_argument("--retention-interval-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="prediction-log sink: %(message)s", stream=sys.stderr)
    sink = Sink(args.url, args.model, Retention(args.max_rows, args.max_days), args.retention_interval_s)
    sink.connect()
    try:
        while (payload := read_batch(sys.stdin.buffer)) is not None:
            try:
                records = decode_batch(payload)
            except (ValueError, TypeError, pickle.UnpicklingError) as e:
                logger.warning("prediction log: unreadable batch: %s", e)
                result: dict[str, Any] = {"written": 0, "failed": 0, "deleted": 0, "error": str(e)}
            else:
                result = sink.write(records)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
