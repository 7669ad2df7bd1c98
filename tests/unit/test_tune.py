"""The tuner's pieces that need no server: the objective, the frontier, and the spec write-back."""

from __future__ import annotations

import shutil
from pathlib import Path

from build_tools.spec import load_spec
from loadtest.tune import Settings, Trial, TuneResult, better, current_settings, frontier, write_back, write_report

ROOT = Path(__file__).resolve().parents[2]


def _trial(rps: float, p99: float, slow: int = 0, failures: int = 0, instances: int = 1) -> Trial:
    return Trial(Settings(instances, 1, 0, 64), rps, p99 / 2, p99, p99 * 1.2, slow, failures)


def test_better_prefers_throughput_within_target_when_target_given() -> None:
    fast_but_late, slower_in_time = _trial(900, 40), _trial(700, 15)
    assert better(slower_in_time, fast_but_late, p99_target_ms=20)
    assert better(fast_but_late, slower_in_time, p99_target_ms=None)
    # A trial with a request over 250 ms never beats a clean one, whatever its throughput.
    assert not better(_trial(5000, 10, slow=1), slower_in_time, p99_target_ms=None)
    # Nothing qualifies: the lowest p99 wins.
    assert better(_trial(100, 30), _trial(900, 60), p99_target_ms=20)


def test_frontier_keeps_only_undominated_trials_when_some_are_worse_on_both() -> None:
    a, b, c = _trial(1000, 20, instances=1), _trial(800, 10, instances=2), _trial(700, 25, instances=3)
    assert frontier([a, b, c]) == [b, a]


def test_write_back_keeps_comments_and_changes_only_tuned_fields_when_spec_is_the_project_spec(
    tmp_path: Path,
) -> None:
    spec_path = tmp_path / "deploy.yaml"
    shutil.copy(ROOT / "deploy.yaml", spec_path)
    for rel in ("models",):
        (tmp_path / rel).symlink_to(ROOT / rel)
    before = spec_path.read_text()
    # Every field differs from the committed settings, so each of the four lines must change.
    committed = current_settings(load_spec(ROOT / "deploy.yaml"), "mnist_classifier")
    tuned = Settings(instances=committed.instances + 1, intra_op_threads=committed.intra_op_threads + 1,
                     max_queue_delay_us=committed.max_queue_delay_us + 100, max_batch_size=64)
    write_back(spec_path, "mnist_classifier", tuned)
    after = spec_path.read_text()
    comments = [line.strip() for line in before.splitlines() if line.strip().startswith("#")]
    assert comments and all(c in after for c in comments)
    spec = load_spec(spec_path)
    assert current_settings(spec, "mnist_classifier") == tuned
    # Everything else is as it was: the other models, and the lines the tuner does not own.
    assert current_settings(spec, "mnist_preprocess") == current_settings(
        load_spec(ROOT / "deploy.yaml"), "mnist_preprocess")
    changed = [(x, y) for x, y in zip(before.splitlines(), after.splitlines(), strict=True) if x != y]
    assert len(changed) == 4, changed


def test_candidates_keep_max_batch_size_at_least_what_warmups_and_ensembles_need_when_searching() -> None:
    from loadtest.tune import candidates, min_max_batch_size

    spec = load_spec(ROOT / "deploy.yaml")
    need = min_max_batch_size(spec, "mnist_classifier")
    assert need == 256  # the mnist ensemble batches up to 256
    start = current_settings(spec, "mnist_classifier")
    dims = dict(candidates(start, 256, cpus=1, min_batch=need))
    assert {s.max_batch_size for s in dims["max_batch_size"]} == {256}
    assert {s.instances for s in dims["instances"]} == {1, 2, 3, 4}


def test_report_lists_server_cpu_per_request_when_trials_measured_it(tmp_path: Path) -> None:
    measured = _trial(900, 12, instances=1)
    measured.cpu_ms_per_request = 0.412
    unmeasured = _trial(800, 15, instances=2)
    result = TuneResult("m", 16, None, measured.settings, measured.settings, [measured, unmeasured], "why")
    write_report(result, tmp_path, "test machine")
    text = (tmp_path / "tune_m.md").read_text()
    assert "server CPU ms/request" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert "| 0.412 | **chosen**" in rows[0] and "| – |" in rows[1]
