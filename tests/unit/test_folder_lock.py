"""build_tools/folder_lock.py: one flock-with-deadline for the lifecycle steps and the stub healer."""

from __future__ import annotations

import time
from pathlib import Path

from build_tools.folder_lock import folder_lock


def test_folder_lock_reports_true_when_folder_free(tmp_path: Path) -> None:
    with folder_lock(tmp_path, 1.0) as got:
        assert got is True
    with folder_lock(tmp_path, 0.0) as got:  # released on exit
        assert got is True


def test_folder_lock_reports_false_when_held_past_deadline(tmp_path: Path) -> None:
    # flock locks belong to an open file description: a second open in the same process conflicts.
    with folder_lock(tmp_path, 1.0) as first:
        assert first
        started = time.monotonic()
        with folder_lock(tmp_path, 0.3) as second:
            waited = time.monotonic() - started
            assert second is False
    assert 0.3 <= waited < 2.0
