"""The profiler's summaries that need no server: py-spy's raw samples by leaf frame."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.profile import top_frames


def test_top_frames_ranks_leaf_frames_by_share_when_given_pyspy_raw_output(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text("main (m.py:1);execute (m.py:9);run (ort.py:3) 6\n"
                   "main (m.py:1);execute (m.py:9);decode (p.py:4) 3\n"
                   "main (m.py:1);poll (stub) 1\n"
                   "main (m.py:1);execute (m.py:9);run (ort.py:3) 2\n"
                   "not a sample line\n")
    frames = top_frames(raw)
    assert frames[0] == ("run (ort.py:3)", pytest.approx(8 / 12))
    assert [f for f, _ in frames] == ["run (ort.py:3)", "decode (p.py:4)", "poll (stub)"]
    assert sum(share for _, share in frames) == pytest.approx(1.0)


def test_top_frames_is_empty_when_nothing_was_sampled(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text("")
    assert top_frames(raw) == []
