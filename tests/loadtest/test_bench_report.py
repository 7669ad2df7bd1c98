"""The benchmark's report: targets read from a run's points, Markdown and plots written from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import bench


def _point(server: str, target: str, batch: int, conc: int, rps: float, p99: float) -> dict:
    return {"server": server, "target": target, "protocol": target.split("/")[0].split("-")[-1],
            "batch_size": batch, "concurrency": conc, "duration_s": 4.0, "requests": int(rps * 4),
            "failures": 0, "throughput_rps": rps, "images_per_s": rps * batch,
            "latency_ms": {"p50": p99 / 2, "p99": p99}, "client_cpu": 0.2, "first_error": None,
            "server_cpu": {"tritonserver": 0.3, "stub:mnist_classifier": 0.6}, "server_cpu_total": 0.9}


def _report() -> dict:
    on = "Triton, dynamic batching on"
    points = [
        _point("Flask dev server", "flask-dev/mnist_classifier", 1, 1, 1000, 1.5),
        _point("Flask dev server", "flask-dev/mnist_classifier", 1, 16, 1000, 30.0),
        _point("Flask dev server", "flask-dev/mnist_classifier", 64, 4, 70, 90.0),
        _point(on, "triton-http/mnist_classifier", 1, 1, 800, 1.5),
        _point(on, "triton-http/mnist_classifier", 1, 16, 4500, 8.0),
        _point(on, "triton-http/mnist_classifier", 64, 4, 130, 60.0),
        _point(on, "triton-http/mnist", 1, 1, 400, 3.0),
        _point(on, "triton-http/mnist", 1, 16, 2000, 15.0),
    ]
    ceiling = {"cpus": [1], "intra_op_threads": 1,
               "images_per_s": {"1": 8000.0, "8": 10000.0, "64": 9000.0},
               "best_batch_size": 8, "best_images_per_s": 10000.0, "batch1_latency_ms": {"p50": 0.12, "p99": 0.3}}
    return {"started": "2026-01-01T00:00:00+00:00", "elapsed_s": 300.0, "loadavg_start": "1.0 1.0 1.0",
            "loadavg_end": "1.2 1.1 1.0",
            "machine": {"cpu_model": "Test CPU", "logical_cpus": 2, "memory_gib": 8, "onnxruntime": "1.32.0",
                        "python": "3.11", "triton_server": "2.51.0"},
            "cpu_split": {"server": [1], "client": [0], "pinned": True, "description": "server on 1, client on 0"},
            "load_shape": {"batch1_concurrency": [1, 16], "batch64_concurrency": [4]},
            "ceiling": ceiling, "points": points, "perf_analyzer": []}


def test_targets_are_ratios_of_the_runs_points_when_evaluated() -> None:
    report = _report()
    config = bench.BenchConfig(concurrency=(1, 16), batch64_concurrency=(4,))
    targets = bench.evaluate_targets(report, config)
    assert targets["a"]["value"] == pytest.approx(4.5) and targets["a"]["met"] is False
    assert targets["b"]["value"] == pytest.approx(130 * 64 / 10000, abs=1e-3) and targets["b"]["met"] is False
    assert targets["c"]["value"] == pytest.approx(4500 / 8000, abs=1e-3) and targets["c"]["met"] is False
    assert targets["d"]["value"] == pytest.approx(2000 / 4500, abs=1e-3) and targets["d"]["met"] is False
    # (b)-(d) read each side at its best concurrency: a faster point elsewhere in the shape counts
    report["points"].append(_point("Triton, dynamic batching on", "triton-http/mnist", 1, 64, 2800, 40.0))
    targets = bench.evaluate_targets(report, config)
    assert targets["d"]["value"] == pytest.approx(2800 / 4500, abs=1e-3) and targets["d"]["met"] is True
    assert targets["d"]["at_key"] == pytest.approx(2000 / 4500, abs=1e-3)
    # (e) the worst p99/p50 at c16 of classifier and ensemble; (f) any request over 250 ms fails it.
    assert targets["e"]["value"] == pytest.approx(2.0) and targets["e"]["met"] is True
    assert targets["f"] == {**targets["f"], "value": 0, "met": True}
    report["points"][4]["slow"] = {"250": 3}
    report["points"][4]["latency_ms"] = {"p50": 2.0, "p99": 9.0}
    targets = bench.evaluate_targets(report, config)
    assert targets["f"]["value"] == 3 and targets["f"]["met"] is False
    assert targets["e"]["value"] == pytest.approx(4.5) and targets["e"]["met"] is False


def test_markdown_and_plots_are_written_when_a_report_is_complete(tmp_path: Path) -> None:
    report = _report()
    config = bench.BenchConfig(concurrency=(1, 16), batch64_concurrency=(4,))
    report["targets"] = bench.evaluate_targets(report, config)
    text = bench.markdown(report, config)
    assert "| Flask dev server | flask-dev/mnist_classifier | 1,000 (1.5) | 1,000 (30.0) | 4,480 (90.0) |" in text
    assert "Test CPU, 2 logical CPUs" in text
    assert "| (a) |" in text and "**no**" in text
    paths = bench.plots(report, tmp_path)
    assert [p.name for p in paths] == ["throughput_latency.png", "ceiling.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_targets_carry_ratios_by_server_cpu_when_the_ceiling_has_cpu_time() -> None:
    report = _report()
    report["ceiling"]["images_per_cpu_s"] = {"1": 9000.0, "8": 12000.0, "64": 10000.0}
    report["ceiling"]["best_images_per_cpu_s"] = 12000.0
    # the same throughput on half the server CPU: twice the requests per CPU-second
    report["points"][5]["server_cpu_total"] = 0.45
    targets = bench.evaluate_targets(report, bench.BenchConfig(concurrency=(1, 16), batch64_concurrency=(4,)))
    assert targets["c"]["by_cpu"] == pytest.approx(4500 / 0.9 / 9000, abs=1e-3)
    assert targets["c"]["by_cpu_at"] == "c16"
    assert targets["b"]["by_cpu"] == pytest.approx(130 * 64 / 0.45 / 12000, abs=1e-3)
    assert targets["d"]["by_cpu"] == pytest.approx(2000 / 4500, abs=1e-3)
    # the wall-time verdict is unchanged by the CPU figures
    assert targets["b"]["met"] is False
    text = bench.markdown({**report, "targets": targets}, bench.BenchConfig(concurrency=(1, 16),
                                                                            batch64_concurrency=(4,)))
    assert "| 56 % (c16) |" in text


def test_targets_have_no_cpu_ratio_when_the_ceiling_lacks_cpu_time() -> None:
    targets = bench.evaluate_targets(_report(), bench.BenchConfig(concurrency=(1, 16), batch64_concurrency=(4,)))
    assert "by_cpu" not in targets["b"] and "by_cpu" not in targets["c"]
