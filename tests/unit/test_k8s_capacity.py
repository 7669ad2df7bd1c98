"""The capacity plan and the autoscaling simulation (build_tools/k8s/capacity.py), on the committed
benchmark results and on small made-up ones whose answers are known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from build_tools.errors import ToolkitError
from build_tools.k8s import capacity as cap

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "results.json"


def _bench(tmp_path: Path, points: list[tuple[int, float, float]]) -> Path:
    """(concurrency, req/s, p99 ms) points of target t/m."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"cpu_split": {"server": [1]}, "points": [
        {"server": "Triton, dynamic batching on", "target": "t/m", "batch_size": 1, "concurrency": c,
         "failures": 0, "throughput_rps": rps, "latency_ms": {"p99": p99}} for c, rps, p99 in points]}))
    return path


def test_per_replica_throughput_takes_best_point_within_slo_when_read(tmp_path: Path) -> None:
    bench = _bench(tmp_path, [(1, 100.0, 5.0), (4, 300.0, 40.0), (16, 400.0, 150.0)])
    measured = cap.per_replica_throughput(bench, "t/m", 100.0)
    assert (measured.rps_at_slo, measured.concurrency_at_slo, measured.peak_rps) == (300.0, 4, 400.0)


def test_per_replica_throughput_raises_when_no_point_meets_slo(tmp_path: Path) -> None:
    bench = _bench(tmp_path, [(1, 100.0, 500.0)])
    with pytest.raises(ToolkitError, match="no point of t/m has p99 within it"):
        cap.per_replica_throughput(bench, "t/m", 100.0)
    with pytest.raises(ToolkitError, match="targets there: t/m"):
        cap.per_replica_throughput(bench, "other", 100.0)


def test_plan_rounds_replicas_up_when_rate_not_multiple(tmp_path: Path) -> None:
    measured = cap.per_replica_throughput(_bench(tmp_path, [(4, 1000.0, 20.0)]), "t/m", 100.0)
    assert cap.plan(measured, 7000.0, 0.7).replicas == 10  # 7000 / 700
    assert cap.plan(measured, 7001.0, 0.7).replicas == 11


def test_committed_bench_has_ensemble_figure_when_read() -> None:
    measured = cap.per_replica_throughput(BENCH, "triton-http/mnist", 100.0)
    assert measured.rps_at_slo > 0 and measured.p99_ms_at_slo <= 100.0


def test_simulation_holds_replicas_when_load_at_target(tmp_path: Path) -> None:
    measured = cap.per_replica_throughput(_bench(tmp_path, [(4, 1000.0, 20.0)]), "t/m", 100.0)
    res = cap.simulate(measured, cap.Ramp(100, 100, 10, 600), cap.SimOptions(min_replicas=2))
    assert set(res.replicas) == {2}  # far below the targets: nothing to do, never below the minimum


def test_simulation_scales_to_cover_rate_when_load_ramps(tmp_path: Path) -> None:
    measured = cap.per_replica_throughput(_bench(tmp_path, [(4, 1000.0, 20.0)]), "t/m", 100.0)
    res = cap.simulate(measured, cap.Ramp(200, 10_000, 300, 900), cap.SimOptions(pod_start_s=60))
    s = cap.summary(res)
    assert s["final_ready"] >= 11 and s["final_utilisation"] < 1
    # The generated HPA's policies: up at most double or +4 pods per minute, down one pod per minute.
    for t in range(60, len(res.replicas)):
        before = res.replicas[t - 60]
        assert before - 1 <= res.replicas[t] <= max(2 * before, before + 4)
    assert min(res.replicas) == 2 and max(res.replicas) > 11


def test_simulation_queues_longer_when_pods_start_slower(tmp_path: Path) -> None:
    measured = cap.per_replica_throughput(_bench(tmp_path, [(4, 1000.0, 20.0)]), "t/m", 100.0)
    ramp = cap.Ramp(200, 10_000, 120, 600)
    fast = cap.summary(cap.simulate(measured, ramp, cap.SimOptions(pod_start_s=10)))
    slow = cap.summary(cap.simulate(measured, ramp, cap.SimOptions(pod_start_s=180)))
    assert slow["seconds_queue_over_slo"] > fast["seconds_queue_over_slo"]
    assert slow["max_backlog_requests"] > fast["max_backlog_requests"]


def test_capacity_command_prints_plan_and_writes_plot_when_run(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "build_tools.cli", "capacity", "--rate", "5000",
                             "--ramp-s", "120", "--hold-s", "300", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "capacity plan: 5,000 requests/s needs" in result.stdout
    assert (tmp_path / "capacity.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert data["plan"]["replicas"] >= 1 and len(data["series"]["t"]) == 421


def test_capacity_command_defaults_target_to_the_specs_ensemble_when_the_spec_renames_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from build_tools.cli import main
    from build_tools.served import load_classifier_names

    ensemble = load_classifier_names(ROOT / "deploy.yaml").ensemble
    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    data["ensembles"] = {"digits_pipeline": data["ensembles"][ensemble]}
    spec = tmp_path / "deploy.yaml"  # only names are read from it, no model file
    spec.write_text(yaml.safe_dump(data))
    bench = _bench(tmp_path, [(1, 100.0, 5.0), (4, 300.0, 40.0)])
    rows = json.loads(bench.read_text())
    for p in rows["points"]:
        p["target"] = "triton-http/digits_pipeline"
    bench.write_text(json.dumps(rows))
    code = main(["capacity", "--spec", str(spec), "--bench", str(bench), "--rate", "500", "--ramp-s", "10",
                 "--hold-s", "10", "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "triton-http/digits_pipeline" in out.out
