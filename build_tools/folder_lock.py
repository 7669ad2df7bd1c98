"""Flock a folder until a deadline, and say whether the lock was got.

The lifecycle steps (control/rollout.py) and the stub healer's reloads (build_tools/healer.py) take
the same exclusive flock on a model repository folder, so a heal never puts back a config that a
step just replaced. The lock is on the folder itself: no lock file appears in the (drift-checked)
repository. Callers decide what a missed deadline means: rollout refuses the step, the healer goes
ahead (a step stuck behind a dead stub must not keep the model down).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.1


@contextlib.contextmanager
def folder_lock(folder: Path, timeout_s: float) -> Iterator[bool]:
    """Hold an exclusive flock on `folder` for the `with` body; yields True when it got the lock
    within `timeout_s`, False when it did not (the body then runs without it). Raises OSError when
    the folder cannot be opened."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout_s
        got = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(POLL_S)
        yield got
    finally:
        os.close(fd)  # releases the flock
