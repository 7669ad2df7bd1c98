"""The prediction log's database side, as its own process: `python -m control.monitor.sink URL MODEL`.

The writer inside Triton (control.monitor.log_writer) sends it batches on stdin (a 4-byte little-endian
length, then pickled `LogBatch` columns: numpy arrays pickle in one piece, where per-record objects cost
the stub microseconds each; both ends are this package) and reads one JSON line back per message:
{"written": n, "failed": n, "deleted": n}. The rows are made here, off the stub. Why a process: the
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

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
        # Count on the (model, ts) index, then the oldest rows beyond the limit go. (An OFFSET to the
        # limit's row read 200,000 table rows a minute: 0.3 s of the server's CPU at the default limit.)
        row = db.query_one("SELECT COUNT(*) AS n FROM predictions WHERE model = ?", (model,))
        excess = int(row["n"]) - retention.max_rows if row is not None else 0
        if excess > 0:
            deleted += db.execute(
                "DELETE FROM predictions WHERE id IN"
                " (SELECT id FROM predictions WHERE model = ? ORDER BY id LIMIT ?)", (model, excess))
    return deleted


_LENGTH = struct.Struct("<I")


@dataclass
class LogBatch:
    """Prediction-log records of one model and version, column by column: what the serving monitor
    hands over after its vectorised pass (no per-record objects in the stub)."""

    model: str
    version: str
    request_ids: list[str]
    ts: np.ndarray  # float64 [n], seconds since the epoch
    predicted: np.ndarray  # int64 [n]
    top_prob: np.ndarray  # float64 [n]
    stat_names: tuple[str, ...]
    stats: np.ndarray  # float64 [n, len(stat_names)]
    inputs: dict[int, bytes] = field(default_factory=dict)  # row -> the kept model-ready input

    def __len__(self) -> int:
        return len(self.request_ids)

    def head(self, n: int) -> LogBatch:
        """The first n records (what fits in a nearly full queue)."""
        return LogBatch(self.model, self.version, self.request_ids[:n], self.ts[:n], self.predicted[:n],
                        self.top_prob[:n], self.stat_names, self.stats[:n],
                        {r: b for r, b in self.inputs.items() if r < n})

    @classmethod
    def from_records(cls, records: Sequence[PredictionRecord]) -> list[LogBatch]:
        """Records as batches: one per run of records sharing model, version and statistic names."""
        out: list[LogBatch] = []
        start = 0
        for i in range(1, len(records) + 1):
            prev = records[i - 1]
            if i < len(records) and (records[i].model, records[i].version, tuple(records[i].stats)) == (
                    prev.model, prev.version, tuple(prev.stats)):
                continue
            run = records[start:i]
            names = tuple(prev.stats)
            out.append(cls(
                prev.model, prev.version, [r.request_id for r in run],
                np.array([r.ts for r in run], dtype=np.float64), np.array([r.predicted for r in run], dtype=np.int64),
                np.array([r.top_prob for r in run], dtype=np.float64), names,
                np.array([[r.stats[k] for k in names] for r in run], dtype=np.float64).reshape(len(run), len(names)),
                {k: r.input for k, r in enumerate(run) if r.input is not None},
            ))
            start = i
        return out

    def rows(self) -> Iterator[contract.PredictionRow]:
        """The table's rows; stats as JSON text with sorted keys (finite values: repr is valid JSON)."""
        order = sorted(range(len(self.stat_names)), key=self.stat_names.__getitem__)
        template = "{" + ", ".join(f"{json.dumps(self.stat_names[k])}: %r" for k in order) + "}"
        stats = np.nan_to_num(self.stats[:, order], nan=0.0, posinf=0.0, neginf=0.0).tolist()
        inputs = self.inputs
        for i, (rid, ts, predicted, top, st) in enumerate(
                zip(self.request_ids, self.ts.tolist(), self.predicted.tolist(), self.top_prob.tolist(), stats)):
            yield rid, ts, self.model, self.version, predicted, top, template % tuple(st), inputs.get(i)

    def to_wire(self) -> tuple[Any, ...]:
        return (self.model, self.version, self.request_ids, self.ts, self.predicted, self.top_prob,
                self.stat_names, self.stats, self.inputs)


def encode_batch(batches: Sequence[LogBatch]) -> bytes:
    payload = pickle.dumps([b.to_wire() for b in batches], protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def decode_batch(payload: bytes) -> list[LogBatch]:
    batches = []
    for wire in pickle.loads(payload):  # our own writer only
        model, version, ids, ts, predicted, top, names, stats, inputs = wire
        batches.append(LogBatch(str(model), str(version), list(ids), np.asarray(ts, dtype=np.float64),
                                np.asarray(predicted, dtype=np.int64), np.asarray(top, dtype=np.float64),
                                tuple(names), np.asarray(stats, dtype=np.float64), dict(inputs)))
    return batches


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

    def write(self, batches: Sequence[LogBatch]) -> dict[str, Any]:
        result = {"written": 0, "failed": 0, "deleted": 0}
        count = sum(len(b) for b in batches)
        try:
            result["written"] = contract.write_prediction_rows(
                self._database(), [row for b in batches for row in b.rows()])
        except Exception as e:  # counted and reported back; the next batch reconnects
            result["failed"] = count
            logger.warning("prediction log: %d record(s) not written: %s", count, e)
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
                batches = decode_batch(payload)
            except (ValueError, TypeError, pickle.UnpicklingError) as e:
                logger.warning("prediction log: unreadable batch: %s", e)
                result: dict[str, Any] = {"written": 0, "failed": 0, "deleted": 0, "error": str(e)}
            else:
                result = sink.write(batches)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
