"""The prediction log's writer inside Triton: records go into a bounded queue on the request path and
reach the database in batches from one background thread, so serving never waits on the database.

`offer()` never blocks: when the queue is full the record is dropped and counted (`dropped`), which the
monitor exports. The thread hands whatever has queued (up to `batch_size` records) to the sink process
(control.monitor.sink: the database side, with the retention) and reads back how many were written or
failed. A sink that died is started again; its batch counts as failed. Nothing here raises into serving.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from control.monitor.contract import PredictionRecord
from control.monitor.sink import LogBatch, Retention, apply_retention, encode_batch

__all__ = ["LogBatch", "PredictionLogWriter", "Retention", "apply_retention", "sink_python"]

logger = logging.getLogger(__name__)


def sink_python() -> str:
    """The interpreter of this environment, for the sink process. Inside the Python-backend stub
    sys.executable is the stub itself; the virtualenv's interpreter is under sys.prefix."""
    for candidate in (Path(sys.prefix) / "bin" / "python3", Path(sys.prefix) / "bin" / "python"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    if sys.executable and Path(sys.executable).name.startswith("python"):
        return sys.executable
    return shutil.which("python3") or "python3"


PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this copy of control/


def sink_environment() -> dict[str, str]:
    """The sink runs this very copy of the package: on the ngc flavor that is a copy in the model's
    folder, installed nowhere (the stub's sys.path is not the interpreter's). It also starts in that
    folder, which `python -m` puts first on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class PredictionLogWriter:
    """A bounded queue in front of the sink process, and the thread that drains it.

    `on_tick` (optional) runs on the same thread about every `tick_s` (the monitor flushes its metric
    counts there), so the request path makes neither database nor metric round trips.
    """

    def __init__(
        self,
        database_url: str,
        model: str,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        retention: Retention | None = None,
        retention_interval_s: float = 60.0,
        tick_s: float = 0.5,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.database_url = database_url
        self.model = model
        self.batch_size = batch_size
        self.retention = retention or Retention()
        self.retention_interval_s = retention_interval_s
        self.tick_s = tick_s
        self.on_tick = on_tick
        self.queue_size = queue_size
        self._queue: collections.deque[LogBatch] = collections.deque()
        self._queued = 0  # records in the queue
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._pending = 0  # offered, not yet answered by the sink
        self.dropped = 0  # queue full: never written
        self.written = 0
        self.failed = 0  # the database (or the sink) refused them
        self.deleted = 0  # by the retention
        self._sink: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{model}", daemon=True)
        self._thread.start()

    # -- the request path --------------------------------------------------------------------
    def offer(self, record: PredictionRecord) -> bool:
        """Queue one record; False (and counted as dropped) when the queue is full. Never blocks."""
        return self.offer_many([record]) == 1

    def offer_many(self, records: Sequence[PredictionRecord]) -> int:
        """Queue records; those beyond the queue's room are dropped and counted. Returns how many were queued."""
        return sum(self.offer_batch(b) for b in LogBatch.from_records(records))

    def offer_batch(self, batch: LogBatch) -> int:
        """Queue a batch of records (one lock, one wake-up); the records beyond the queue's room are
        dropped and counted. Returns how many were queued."""
        with self._ready:
            room = max(0, self.queue_size - self._queued)
            taken = batch if len(batch) <= room else batch.head(room)
            if len(taken):
                self._queue.append(taken)
                self._queued += len(taken)
                self._pending += len(taken)
                self._ready.notify()
            self.dropped += len(batch) - len(taken)
        return len(taken)

    # -- the background thread ---------------------------------------------------------------
    def _start_sink(self) -> subprocess.Popen[bytes]:
        if self._sink is None or self._sink.poll() is not None:
            self._sink = subprocess.Popen(
                [sink_python(), "-m", "control.monitor.sink", self.database_url, self.model,
                 "--max-rows", str(self.retention.max_rows), "--max-days", str(self.retention.max_days),
                 "--retention-interval-s", str(self.retention_interval_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=sink_environment(), cwd=PACKAGE_ROOT,
            )
        return self._sink

    def _write(self, batches: list[LogBatch]) -> None:
        count = sum(len(b) for b in batches)
        try:
            sink = self._start_sink()
            assert sink.stdin is not None and sink.stdout is not None
            sink.stdin.write(encode_batch(batches))
            sink.stdin.flush()
            reply = sink.stdout.readline()
            result = json.loads(reply) if reply else {"failed": count}
        except (OSError, ValueError) as e:  # the sink died or answered nonsense: restart it next time
            logger.warning("prediction log: sink failed, %d record(s) lost: %s", count, e)
            result = {"failed": count}
            self._close_sink()
        self.written += int(result.get("written", 0))
        self.failed += int(result.get("failed", 0))
        self.deleted += int(result.get("deleted", 0))
        with self._ready:
            self._pending -= count

    def _take(self, timeout_s: float) -> list[LogBatch]:
        """Queued batches, whole, up to about batch_size records (at least one batch when any)."""
        with self._ready:
            if not self._queue and not self._stop.is_set():
                self._ready.wait(timeout_s)
            taken: list[LogBatch] = []
            count = 0
            while self._queue and (not taken or count + len(self._queue[0]) <= self.batch_size):
                batch = self._queue.popleft()
                taken.append(batch)
                count += len(batch)
            self._queued -= count
            return taken

    def _tick(self) -> None:
        if self.on_tick is not None:
            try:
                self.on_tick()
            except Exception as e:
                logger.warning("prediction log: periodic callback failed: %s", e)

    def _run(self) -> None:
        try:
            self._start_sink()  # connect and migrate now, not on the first request
        except OSError as e:
            logger.warning("prediction log: cannot start the sink process (retried on write): %s", e)
        next_tick = time.monotonic() + self.tick_s
        while True:
            batch = self._take(max(0.0, next_tick - time.monotonic()))
            if batch:
                self._write(batch)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.tick_s
                self._tick()
            if self._stop.is_set():
                with self._ready:
                    if not self._queue:
                        return

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything offered so far is written (or failed); True when it was."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._ready:
                if self._pending == 0:
                    return True
            time.sleep(0.02)
        return False

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            if sink.stdin is not None:
                sink.stdin.close()
            sink.wait(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            sink.kill()
            sink.wait()

    def close(self, timeout_s: float = 3.0) -> None:
        """Write what is queued, run the last tick, stop the thread and the sink."""
        self._stop.set()
        with self._ready:
            self._ready.notify()
        self._thread.join(timeout_s)
        self._tick()
        self._close_sink()
