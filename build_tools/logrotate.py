"""Size-bounded server log: tritonserver's output through a pipe into a file that rotates.

Triton 2.51 writes one log (stdout or `--log-file`) and never rotates it. The harness gives it a pipe
instead and this copier writes the lines to the log file; past `max_bytes` the file becomes `.1`
(older ones shift up to `.<backups>`, the oldest is dropped), so the log costs at most
(backups + 1) x max_bytes of disk whatever a client makes the server print.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)


class RotatingLog:
    """Copies `source` (the server's stdout+stderr) into `path` from a thread, rotating by size."""

    def __init__(self, source: BinaryIO, path: Path, max_bytes: int, backups: int, append: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self._source = source
        self._out = open(path, "ab" if append else "wb")  # noqa: SIM115 - closed by the copier thread
        self._size = self._out.tell()
        self._thread = threading.Thread(target=self._copy, name="tritonserver-log", daemon=True)
        self._thread.start()

    def _rotate(self) -> None:
        self._out.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._out = open(self.path, "wb")  # noqa: SIM115
        self._size = 0
        self.rotations += 1

    def _copy(self) -> None:
        try:
            for line in iter(self._source.readline, b""):
                if self._size + len(line) > self.max_bytes and self._size > 0:
                    self._rotate()
                self._out.write(line)
                self._out.flush()  # the harness reads the tail while the server runs
                self._size += len(line)
        except (OSError, ValueError) as e:  # the pipe or the file went away: the server is gone
            logger.debug("server log copier stopped: %s", e)
        finally:
            with contextlib.suppress(OSError):
                self._out.close()
            with contextlib.suppress(OSError):
                self._source.close()

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait until everything the (exited) server wrote is in the file."""
        self._thread.join(timeout_s)
