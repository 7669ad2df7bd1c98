"""The benchmark report: ``python -m loadtest.bench`` (about 6 minutes on 2 cores).

One run, one machine, one load shape for every server: the same closed-loop load generator
(``loadtest.loadgen``: N clients, each with its own connection, for a fixed time after a warm-up),
the same concurrency levels and the same digits, against

* the ceiling: ONNX Runtime in-process on the server's CPUs (``loadtest.ceiling``), measured before
  and after the servers (the better of the two counts);
* the seed's Flask app, on Flask's development server (``app.run()``) and under gunicorn;
* the embedded Triton over HTTP and gRPC, classifier (raw tensors) and ensemble (PNG bytes), with the
  spec's dynamic batching, and again with dynamic batching removed from every model;
* perf_analyzer against the same Triton (a separate section: it cannot talk to Flask), when
  installed (``loadtest/install_perf_analyzer.sh``).

The server and the load generator run on different CPUs where there are at least two (see
``loadtest.servers.split_cpus``). Writes OUT/results.json, OUT/report.md and OUT/*.png (OUT = bench/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from build_tools.errors import ToolkitError
from build_tools.served import SPEC_ENV
from loadtest import loadgen, procstat
from loadtest.common import sample_description, served_names, spec_sample
from loadtest.errors import LoadTestError
from loadtest.servers import (
    DEFAULT_SPEC,
    ROOT,
    CpuSplit,
    affinity,
    baseline,
    build_repository,
    split_cpus,
    triton,
)

logger = logging.getLogger("loadtest.bench")

# The targets the report checks (ratios from this one run).
TARGET_A = 10.0  # Triton classifier b1 c16 req/s over Flask dev server's, with a lower p99
TARGET_B = 0.85  # 64-image requests: served images/s over the in-process ceiling
TARGET_C = 0.60  # single-image requests: served req/s over in-process batch-1 images/s
TARGET_D = 0.60  # ensemble b1 req/s over the classifier's (each at its best concurrency)
TARGET_E = 4.0  # tail: p99 over p50 at the key concurrency (c16), at most
TARGET_F = 0  # requests over 250 ms in any Triton point (the batcher's stall, docs/stall.md)
SLOW_MS = "250"


@dataclass
class BenchConfig:
    out: Path = ROOT / "bench"
    spec: Path = DEFAULT_SPEC
    duration_s: float = 4.0
    warmup_s: float = 1.0
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    batch64_concurrency: tuple[int, ...] = (1, 4)
    key_concurrency: int = 16  # where targets (a), (c), (d) are read
    key_batch64_concurrency: int = 4  # where target (b) is read
    gunicorn_workers: int | None = None  # default 2 x server CPUs + 1
    gunicorn_threads: int = 4
    perf_analyzer: bool = True
    client_cpus: int | None = None
    pin: bool = True


@dataclass
class Point:
    """One measured load: a loadgen result plus where the server's CPU went."""

    server: str  # e.g. "Triton, dynamic batching on"
    result: loadgen.LoadResult
    server_cpu: dict[str, float] = field(default_factory=dict)  # process name -> cores used
    server_cpu_total: float = 0.0  # cores used by the whole server

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, **self.result.to_dict(), "server_cpu": self.server_cpu,
                "server_cpu_total": self.server_cpu_total}


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "triton_server": "2.51.0 (embedded, nvidia-pytriton 0.7.0)",
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- measuring


class Runner:
    """Runs the planned loads, logging progress as ``[i/N]`` lines."""

    def __init__(self, config: BenchConfig, cpus: CpuSplit, total: int) -> None:
        self.config = config
        self.cpus = cpus
        self.total = total
        self.done = 0
        self.points: list[Point] = []

    def measure(self, server: str, target: loadgen.Target, concurrency: int, server_pid: int | None) -> Point:
        before = procstat.tree_cpu(server_pid) if server_pid else {}
        wall0 = time.perf_counter()
        with affinity(self.cpus.client if self.cpus.pinned else None):
            result = loadgen.run_load(target, concurrency, self.config.duration_s, self.config.warmup_s)
        wall = time.perf_counter() - wall0
        spent = procstat.cpu_delta(before, procstat.tree_cpu(server_pid)) if server_pid else {}
        point = Point(server, result, {k: round(v / wall, 3) for k, v in spent.items()},
                      round(sum(spent.values()) / wall, 3))
        self.points.append(point)
        self.done += 1
        p99 = result.latency_ms.get("p99", float("nan"))
        logger.info("[%d/%d] %-32s %-30s b%-3d c%-3d %8.0f req/s %8.0f img/s  p99 %7.2f ms  fail %d  "
                    "server %.2f cores, client %.2f", self.done, self.total, server, target.name,
                    target.batch_size, concurrency, result.throughput_rps, result.images_per_s, p99,
                    result.failures, point.server_cpu_total, result.client_cpu)
        if result.failures:
            logger.warning("    %d failed requests; first: %s", result.failures, result.first_error)
        return point


def measure_ceiling(cpus: CpuSplit, out: Path, seconds: float = 1.0) -> dict[str, Any]:
    """In a fresh process on the server's CPUs, so that nothing else of ours shares them."""
    cmd = [sys.executable, "-m", "loadtest.ceiling", "--seconds", str(seconds), "--json", str(out)]
    if cpus.pinned:
        cmd += ["--cpus", ",".join(str(c) for c in sorted(cpus.server))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise LoadTestError(f"the in-process ceiling failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(out.read_text())
    logger.info("ceiling: %s images/s by batch size; best %.0f at b%s",
                ", ".join(f"b{b} {v:.0f}" for b, v in result["images_per_s"].items()),
                result["best_images_per_s"], result["best_batch_size"])
    return result


def best_ceiling(runs: list[dict[str, Any]]) -> dict[str, Any]:
    images = {b: max(r["images_per_s"][b] for r in runs) for b in runs[0]["images_per_s"]}
    best_batch = max(images, key=lambda b: images[b])
    lat = min((r["batch1_latency_ms"] for r in runs), key=lambda x: x.get("p50", 1e9))
    out = {"cpus": runs[0]["cpus"], "intra_op_threads": runs[0]["intra_op_threads"], "images_per_s": images,
           "best_batch_size": int(best_batch), "best_images_per_s": images[best_batch],
           "batch1_latency_ms": lat, "runs": runs}
    if all("images_per_cpu_s" in r for r in runs):
        per_cpu = {b: max(r["images_per_cpu_s"][b] for r in runs) for b in runs[0]["images_per_cpu_s"]}
        out["images_per_cpu_s"] = per_cpu
        out["best_images_per_cpu_s"] = max(per_cpu.values())
    return out


# --------------------------------------------------------------------------- the plan


@dataclass
class Scenario:
    label: str  # row label in the report
    build: Callable[[str, int], loadgen.Target]  # (address, batch) -> target
    batch_sizes: tuple[int, ...]


def run_bench(config: BenchConfig) -> dict[str, Any]:
    out = config.out
    raw = ROOT / "build" / "bench"
    raw.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cpus = split_cpus(config.client_cpus, pin=config.pin)
    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "loadavg_start": loadavg(),
        "cpu_split": {"server": sorted(cpus.server), "client": sorted(cpus.client), "pinned": cpus.pinned,
                      "description": cpus.describe()},
        "load_shape": {"duration_s": config.duration_s, "warmup_s": config.warmup_s,
                       "batch1_concurrency": list(config.concurrency),
                       "batch64_concurrency": list(config.batch64_concurrency),
                       "sample": f"{sample_description()} (the same images, in the same order, everywhere)"},
    }
    logger.info("machine: %s, %s logical CPUs, %s GiB; load average %s", report["machine"]["cpu_model"],
                report["machine"]["logical_cpus"], report["machine"]["memory_gib"], report["loadavg_start"])
    logger.info("CPUs: %s", cpus.describe())
    sample = spec_sample()
    workers = config.gunicorn_workers or 2 * len(cpus.server) + 1

    b1 = config.concurrency
    b64 = config.batch64_concurrency
    flask = (b1, b64)
    n_flask = 2 * (len(b1) + len(b64))
    n_on = 2 * (len(b1) + len(b64)) + 2 * len(b1)
    off_c = tuple(c for c in b1 if c in (1, config.key_concurrency, max(b1)))
    n_off = 2 * (len(off_c) + 1) + 2
    runner = Runner(config, cpus, n_flask + n_on + n_off)

    logger.info("ceiling: ONNX Runtime in-process on CPU(s) %s", sorted(cpus.server))
    ceilings = [measure_ceiling(cpus, raw / "ceiling_before.json")]

    # -- the seed's Flask app --------------------------------------------------------------------
    for kind, label in (("flask-dev", "Flask dev server"), ("gunicorn", f"Flask + gunicorn ({workers} workers)")):
        with baseline(kind, raw / f"{kind}.log", cpus.server if cpus.pinned else None, workers=workers,
                      threads=config.gunicorn_threads) as srv:
            for batch, concurrencies in ((1, flask[0]), (64, flask[1])):
                target = loadgen.flask_target(srv.address, sample, batch, name=kind)
                for c in concurrencies:
                    runner.measure(label, target, c, srv.process.pid)

    # -- Triton, dynamic batching on and off -----------------------------------------------------
    perf_rows: list[Any] = []
    for batching in (True, False):
        label = f"Triton, dynamic batching {'on' if batching else 'off'}"
        repo = build_repository(raw / f"repository_batching_{'on' if batching else 'off'}", config.spec,
                                dynamic_batching=batching)
        with triton([repo], raw / f"tritonserver_batching_{'on' if batching else 'off'}.log",
                    cpus.server if cpus.pinned else None) as server:
            pid = server.process.pid if server.process else None
            conc = b1 if batching else off_c
            conc64 = b64 if batching else (config.key_batch64_concurrency,)
            for proto, address in (("http", server.http_url), ("grpc", server.grpc_url)):
                make = loadgen.triton_http_target if proto == "http" else loadgen.triton_grpc_target
                for batch, cs in ((1, conc), (64, conc64)):
                    target = make(address, sample, batch)
                    for c in cs:
                        runner.measure(label, target, c, pid)
                ens = make(address, sample, 1, ensemble=True)
                for c in (b1 if batching else (config.key_concurrency,)):
                    runner.measure(label, ens, c, pid)
            if batching and config.perf_analyzer:
                perf_rows = run_perf_section(server, cpus, raw / "perf_analyzer")

    ceilings.append(measure_ceiling(cpus, raw / "ceiling_after.json"))
    report["ceiling"] = best_ceiling(ceilings)
    report["points"] = [p.to_dict() for p in runner.points]
    report["perf_analyzer"] = [dict(r.__dict__, requests_per_s=r.requests_per_s) for r in perf_rows]
    report["targets"] = evaluate_targets(report, config)
    report["loadavg_end"] = loadavg()
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["elapsed_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    return report


def run_perf_section(server: Any, cpus: CpuSplit, workdir: Path) -> list[Any]:
    from loadtest import perf

    binary = perf.find_perf_analyzer()
    if binary is None:
        logger.warning("perf_analyzer not installed (%s): its section is skipped", perf.INSTALL_HINT)
        return []
    logger.info("perf_analyzer section (%s)", binary)
    names = served_names()
    # perf_analyzer reads the server's statistics, a restricted API: every sweep needs the admin header
    # (run_perf_analyzer prefixes it for gRPC).
    headers = server.admin_headers
    with affinity(cpus.client if cpus.pinned else None):
        rows = perf.sweep(server.http_url, server.grpc_url, models=(names.classifier,), batch_sizes=(1, 64),
                          concurrencies=(1, 16), shared_memory=("none",), workdir=workdir,
                          settings=perf.PerfSettings(measurement_ms=1500, max_trials=4), progress=False,
                          headers=headers)
        rows += perf.sweep(None, server.grpc_url, models=(names.classifier,), batch_sizes=(64,),
                           concurrencies=(4,), shared_memory=("system",), workdir=workdir,
                           settings=perf.PerfSettings(measurement_ms=1500, max_trials=4), progress=False,
                           headers=headers)
        rows += perf.sweep(server.http_url, server.grpc_url, models=(names.ensemble,), concurrencies=(16,),
                           workdir=workdir, settings=perf.PerfSettings(measurement_ms=1500, max_trials=4),
                           progress=False, headers=headers)
    for r in rows:
        logger.info("perf_analyzer %-40s c%-3d %8.0f img/s  p99 %7.2f ms", r.label, r.concurrency,
                    r.inferences_per_s, r.p99_us / 1000)
    return rows


# --------------------------------------------------------------------------- targets


def find(report: dict[str, Any], server_prefix: str, target: str, batch: int, concurrency: int) -> dict | None:
    for p in report["points"]:
        if (p["server"].startswith(server_prefix) and p["target"] == target and p["batch_size"] == batch
                and p["concurrency"] == concurrency):
            return p
    return None


def best(report: dict[str, Any], server_prefix: str, target: str, batch: int) -> dict | None:
    """The point with the highest throughput for this server/target/batch over the load shape."""
    points = [p for p in report["points"] if p["server"].startswith(server_prefix) and p["target"] == target
              and p["batch_size"] == batch and p["failures"] == 0]
    return max(points, key=lambda p: p["throughput_rps"], default=None)


def per_cpu(p: dict | None, images: bool = False) -> float | None:
    """Requests (or images) per CPU-second of the whole server process tree at this point."""
    if p is None or p.get("server_cpu_total", 0) <= 0 or p["duration_s"] <= 0:
        return None
    value = p["images_per_s"] if images else p["throughput_rps"]
    # server_cpu_total is cores over the load's wall time (warm-up included), throughput over the window
    return value / p["server_cpu_total"]


def best_per_cpu(report: dict[str, Any], server_prefix: str, target: str, batch: int,
                 images: bool = False) -> dict | None:
    points = [p for p in report["points"] if p["server"].startswith(server_prefix) and p["target"] == target
              and p["batch_size"] == batch and p["failures"] == 0 and per_cpu(p) is not None]
    return max(points, key=lambda p: per_cpu(p, images) or 0.0, default=None)


def evaluate_targets(report: dict[str, Any], config: BenchConfig) -> dict[str, Any]:
    """(a) is read at b1 c16 as asked; (b), (c) and (d) compare throughput capacities, so each side is
    read at its best concurrency of the load shape (the value at c16, or c4 for b64, is given too)."""
    c, c64 = config.key_concurrency, config.key_batch64_concurrency
    on = "Triton, dynamic batching on"
    ceiling = report["ceiling"]
    out: dict[str, Any] = {}

    def ratio(num: dict | None, den: float | None, images: bool = False) -> float | None:
        if num is None or not den:
            return None
        return (num["images_per_s"] if images else num["throughput_rps"]) / den

    names = served_names()
    flask = find(report, "Flask dev", f"flask-dev/{names.classifier}", 1, c)
    for proto in ("http", "grpc"):
        cls, ens = f"triton-{proto}/{names.classifier}", f"triton-{proto}/{names.ensemble}"
        tri = find(report, on, cls, 1, c)
        suffix = "" if proto == "http" else "_grpc"
        p = proto.upper()
        if tri and flask and flask["throughput_rps"]:
            value = tri["throughput_rps"] / flask["throughput_rps"]
            lower = tri["latency_ms"].get("p99", 1e9) < flask["latency_ms"].get("p99", 0)
            out["a" + suffix] = {
                "what": f"Triton classifier {p} b1 c{c} req/s / Flask dev server b1 c{c} req/s, and a lower p99",
                "value": round(value, 2), "target": TARGET_A, "met": bool(value >= TARGET_A and lower),
                "p99_ms": [round(tri["latency_ms"].get("p99", 0), 2), round(flask["latency_ms"].get("p99", 0), 2)]}
        b64_best, b64_key = best(report, on, cls, 64), find(report, on, cls, 64, c64)
        value = ratio(b64_best, ceiling["best_images_per_s"], images=True)
        if value is not None and b64_best is not None:
            at_key = ratio(b64_key, ceiling["best_images_per_s"], images=True)
            out["b" + suffix] = {
                "what": f"Triton classifier {p} b64 images/s (best: c{b64_best['concurrency']}) / in-process best "
                        f"(b{ceiling['best_batch_size']})", "value": round(value, 3), "target": TARGET_B,
                "at_key": None if at_key is None else round(at_key, 3), "key": f"c{c64}",
                "met": bool(value >= TARGET_B)}
            cpu_best = best_per_cpu(report, on, cls, 64, images=True)
            if cpu_best is not None and ceiling.get("best_images_per_cpu_s"):
                out["b" + suffix].update(by_cpu=round(per_cpu(cpu_best, True) / ceiling["best_images_per_cpu_s"], 3),
                                         by_cpu_at=f"c{cpu_best['concurrency']}")
        b1_best = best(report, on, cls, 1)
        value = ratio(b1_best, ceiling["images_per_s"]["1"])
        if value is not None and b1_best is not None:
            at_key = ratio(tri, ceiling["images_per_s"]["1"])
            out["c" + suffix] = {
                "what": f"Triton classifier {p} b1 req/s (best: c{b1_best['concurrency']}) / in-process "
                        f"batch-1 images/s", "value": round(value, 3), "target": TARGET_C,
                "at_key": None if at_key is None else round(at_key, 3), "key": f"c{c}",
                "met": bool(value >= TARGET_C)}
            cpu_best = best_per_cpu(report, on, cls, 1)
            if cpu_best is not None and ceiling.get("images_per_cpu_s"):
                out["c" + suffix].update(by_cpu=round(per_cpu(cpu_best) / ceiling["images_per_cpu_s"]["1"], 3),
                                         by_cpu_at=f"c{cpu_best['concurrency']}")
        ens_best = best(report, on, ens, 1)
        if ens_best is not None and b1_best is not None:
            value = ens_best["throughput_rps"] / b1_best["throughput_rps"]
            ens_key = find(report, on, ens, 1, c)
            at_key = ens_key["throughput_rps"] / tri["throughput_rps"] if ens_key and tri else None
            out["d" + suffix] = {
                "what": f"Triton ensemble {p} b1 req/s (best: c{ens_best['concurrency']}) / classifier {p} b1 "
                        f"req/s (best: c{b1_best['concurrency']})", "value": round(value, 3), "target": TARGET_D,
                "at_key": None if at_key is None else round(at_key, 3), "key": f"c{c}",
                "met": bool(value >= TARGET_D)}
            ens_cpu, cls_cpu = best_per_cpu(report, on, ens, 1), best_per_cpu(report, on, cls, 1)
            if ens_cpu is not None and cls_cpu is not None:
                out["d" + suffix].update(by_cpu=round(per_cpu(ens_cpu) / per_cpu(cls_cpu), 3),
                                         by_cpu_at=f"c{ens_cpu['concurrency']} / c{cls_cpu['concurrency']}")
        tails = [p for p in (find(report, on, cls, 1, c), find(report, on, ens, 1, c)) if p is not None]
        if tails:
            worst = max(tails, key=lambda p: p["latency_ms"].get("p99", 0) / max(p["latency_ms"].get("p50", 0), 1e-9))
            value = worst["latency_ms"].get("p99", 0) / max(worst["latency_ms"].get("p50", 0), 1e-9)
            out["e" + suffix] = {
                "what": f"p99 / p50 at b1 c{c}, worst of classifier and ensemble {p} ({worst['target']})",
                "value": round(value, 2), "target": TARGET_E, "met": bool(value <= TARGET_E), "lower_is_better": True}
    triton_points = [p for p in report["points"] if p["server"].startswith("Triton")]
    if triton_points:
        slow = sum(p.get("slow", {}).get(SLOW_MS, 0) for p in triton_points)
        out["f"] = {"what": f"requests over {SLOW_MS} ms in any Triton point ({len(triton_points)} points)",
                    "value": slow, "target": TARGET_F, "met": bool(slow <= TARGET_F), "lower_is_better": True}
    return out


# --------------------------------------------------------------------------- writing


def _fmt_point(p: dict | None, images: bool = False) -> str:
    if p is None:
        return "–"
    value = p["images_per_s"] if images else p["throughput_rps"]
    text = f"{value:,.0f} ({p['latency_ms'].get('p99', float('nan')):.1f})"
    return text + (f" ⚠{p['failures']}" if p["failures"] else "")


def rows_of(report: dict[str, Any]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for p in report["points"]:
        key = (p["server"], p["target"])
        if key not in seen:
            seen.append(key)
    return seen


def markdown(report: dict[str, Any], config: BenchConfig) -> str:
    m = report["machine"]
    ceiling = report["ceiling"]
    c1 = report["load_shape"]["batch1_concurrency"]
    c64 = report["load_shape"]["batch64_concurrency"]
    lines = [
        "# Benchmark report",
        "",
        f"Generated by `python -m loadtest.bench` on {report['started']} in {report['elapsed_s']:.0f} s.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs; memory {m['memory_gib']} GiB",
        f"- Load average at start / end: {report['loadavg_start']} / {report['loadavg_end']} "
        "(the machine is shared: absolute numbers are noisy, ratios from this one run are what count)",
        f"- Pinning: {report['cpu_split']['description']}",
        f"- Software: Triton {m['triton_server']}, ONNX Runtime {m['onnxruntime']}, Python {m['python']}",
        "",
        "## Method",
        "",
        f"One closed-loop load generator (`loadtest/loadgen.py`) for every server: N clients, each with its "
        f"own connection, send a request, wait for the answer, check it, send the next; {config.warmup_s:g} s "
        f"warm-up, then {config.duration_s:g} s measured. Requests are prebuilt (sample: "
        f"{report['load_shape'].get('sample', 'the spec evaluation set')}; raw FP32 tensors to the "
        "classifier and to Flask as JSON, PNG bytes to the ensemble). Throughput counts successful requests "
        "completed in the window; latencies are per request, client side. The ceiling is ONNX Runtime "
        "in-process on the server's CPUs (`loadtest/ceiling.py`), best of a run before and after the servers.",
        "",
        "## Results",
        "",
        "Requests/s (p99 latency in ms) for single-image requests at each concurrency; images/s (p99 ms) "
        "for 64-image requests.",
        "",
    ]
    head = ["Server", "Client → model"] + [f"b1 c{c}" for c in c1] + [f"b64 c{c} img/s" for c in c64]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for server, target in rows_of(report):
        cells = [server, target]
        for c in c1:
            cells.append(_fmt_point(find(report, server, target, 1, c)))
        for c in c64:
            cells.append(_fmt_point(find(report, server, target, 64, c), images=True))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"In-process ceiling on CPU(s) {ceiling['cpus']} ({ceiling['intra_op_threads']} intra-op thread(s)):",
        "",
        "| batch size | " + " | ".join(str(b) for b in ceiling["images_per_s"]) + " |",
        "|---|" + "---|" * len(ceiling["images_per_s"]),
        "| images/s | " + " | ".join(f"{v:,.0f}" for v in ceiling["images_per_s"].values()) + " |",
        "",
        f"Best: {ceiling['best_images_per_s']:,.0f} images/s at batch {ceiling['best_batch_size']}; "
        f"single image: {ceiling['images_per_s']['1']:,.0f} images/s, latency p50 "
        f"{ceiling['batch1_latency_ms'].get('p50', 0):.3f} ms, "
        f"p99 {ceiling['batch1_latency_ms'].get('p99', 0):.3f} ms.",
        "",
        "## Targets",
        "",
        "(a) is read at b1 c16; (b), (c) and (d) compare throughput capacities, so each side is read at its "
        "best concurrency of the load shape; the value at the fixed point (c16, or c4 for 64-image requests) "
        "is in the last column.",
        "",
        "The last column divides by server CPU instead of wall time: requests (images) per CPU-second of "
        "the whole server process tree (Triton and its stubs) over in-process images per CPU-second "
        "(for (d): ensemble over classifier), each at its most efficient concurrency. It is what a "
        "CPU-bound server with the whole CPU would reach, and it holds on a shared machine, where other "
        "work takes wall time from the two sides at different moments; `met` is read from the wall-time "
        "value.",
        "",
        "| | what | value | target | met | at the fixed point | by server CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, t in report["targets"].items():
        if key.startswith(("a", "e")):
            value, target = f"{t['value']:.2f}×", f"≤ {t['target']:g}×" if key.startswith("e") else f"{t['target']:g}×"
        elif key.startswith("f"):
            value, target = f"{t['value']}", f"{t['target']}"
        else:
            value, target = f"{t['value'] * 100:.0f} %", f"{t['target'] * 100:.0f} %"
        extra = f" (p99 {t['p99_ms'][0]} vs {t['p99_ms'][1]} ms)" if "p99_ms" in t else ""
        fixed = f"{t['at_key'] * 100:.0f} % at {t['key']}" if t.get("at_key") is not None else "–"
        by_cpu = f"{t['by_cpu'] * 100:.0f} % ({t['by_cpu_at']})" if t.get("by_cpu") is not None else "–"
        lines.append(f"| ({key.replace('_', ', ')}) | {t['what']}{extra} | {value} | {target} | "
                     f"{'yes' if t['met'] else '**no**'} | {fixed} | {by_cpu} |")
    lines += ["", "## Where the server's CPU goes", "",
              f"Cores used by each server process during the key loads (the server has "
              f"{len(report['cpu_split']['server'])} CPU(s)):", ""]
    for p in report["points"]:
        if (p["concurrency"] == config.key_concurrency and p["batch_size"] == 1) or (
                p["batch_size"] == 64 and p["concurrency"] == config.key_batch64_concurrency):
            if not p["server"].startswith("Triton, dynamic batching on"):
                continue
            per = ", ".join(f"{k} {v:.2f}" for k, v in p["server_cpu"].items() if v >= 0.01)
            cpu_ms = 1000 / per_cpu(p) if per_cpu(p) else float("nan")
            lines.append(f"- {p['target']} b{p['batch_size']} c{p['concurrency']}: {p['server_cpu_total']:.2f} "
                         f"cores ({per}); {cpu_ms:.3f} server CPU ms per request; client {p['client_cpu']:.2f} cores")
    if report["perf_analyzer"]:
        lines += ["", "## perf_analyzer (Triton, dynamic batching on)", "",
                  "The real perf_analyzer 2.51.0 against the same server, on the load generator's CPU(s).", "",
                  "| model | protocol | shared memory | batch | concurrency | images/s | p99 ms | server queue µs "
                  "| server compute µs |", "|---|---|---|---|---|---|---|---|---|"]
        for r in report["perf_analyzer"]:
            compute = r["server_compute_input_us"] + r["server_compute_infer_us"] + r["server_compute_output_us"]
            lines.append(f"| {r['model']} | {r['protocol']} | {r['shared_memory']} | {r['batch_size']} | "
                         f"{r['concurrency']} | {r['inferences_per_s']:,.0f} | {r['p99_us'] / 1000:.2f} | "
                         f"{r['server_queue_us']:.0f} | {compute:.0f}{'' if r['stable'] else ' (unstable)'} |")
    lines += ["", "## Plots", "", "- `bench/throughput_latency.png`: single-image throughput against p99 latency, "
              "per server, along concurrency", "- `bench/ceiling.png`: served images/s against the in-process "
              "ceiling by batch size"]
    if report["perf_analyzer"]:
        lines.append("- `bench/perf_analyzer.png`: the perf_analyzer section")
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(10, 6.5))
    ax.set_prop_cycle(color=plt.cm.tab10.colors)
    for server, target in rows_of(report):
        pts = sorted((p for p in report["points"] if p["server"] == server and p["target"] == target
                      and p["batch_size"] == 1 and p["throughput_rps"] > 0), key=lambda p: p["concurrency"])
        if len(pts) < 2:
            continue
        style = "-" if "off" not in server else "--"
        xs = [p["throughput_rps"] for p in pts]
        ys = [p["latency_ms"]["p99"] for p in pts]
        ax.plot(xs, ys, style, marker="o", label=f"{server}: {target}")
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"c{p['concurrency']}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axvline(report["ceiling"]["images_per_s"]["1"], color="grey", linestyle=":",
               label="in-process ONNX Runtime, batch 1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("single-image requests/s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("Single-image requests: throughput vs p99 latency (same load shape for every server)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = out / "throughput_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    ceiling = report["ceiling"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    batches = [int(b) for b in ceiling["images_per_s"]]
    ax.plot(batches, list(ceiling["images_per_s"].values()), "k-o", label="in-process ONNX Runtime (ceiling)")
    served = {}
    for p in report["points"]:
        if p["server"].startswith("Triton") or p["server"].startswith("Flask"):
            key = f"{p['server']}: {p['target']}"
            served.setdefault(key, {})
            served[key][p["batch_size"]] = max(served[key].get(p["batch_size"], 0), p["images_per_s"])
    ax.set_prop_cycle(color=plt.cm.tab10.colors)
    for key, by_batch in served.items():
        bs = sorted(by_batch)
        ax.plot(bs, [by_batch[b] for b in bs], "s--" if "off" in key else "s-", label=f"{key} (best)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("images per request (batch size)")
    ax.set_ylabel("images/s")
    ax.set_title("Served throughput against the in-process ceiling")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "ceiling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    if report["perf_analyzer"]:
        from loadtest import perf

        rows = [perf.PerfRow(**{k: v for k, v in r.items() if k != "requests_per_s"}) for r in report["perf_analyzer"]]
        written.append(perf.plot(rows, out / "perf_analyzer.png"))
    return written


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per load (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--batch64-concurrency", default="1,4")
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--client-cpus", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="1 s loads at c1,16 (a smoke test, not a result)")
    args = parser.parse_args(argv)
    # Every load tool (loadgen, perf) names the models after this spec.
    os.environ[SPEC_ENV] = str(args.spec.resolve())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("build_tools").setLevel(logging.WARNING)
    config = BenchConfig(out=args.out, spec=args.spec, duration_s=args.duration, warmup_s=args.warmup,
                         concurrency=_ints(args.concurrency), batch64_concurrency=_ints(args.batch64_concurrency),
                         perf_analyzer=not args.no_perf_analyzer, pin=not args.no_pin, client_cpus=args.client_cpus)
    if args.quick:
        config.duration_s, config.warmup_s, config.concurrency, config.batch64_concurrency = 1.0, 0.3, (1, 16), (4,)
    if (config.key_concurrency not in config.concurrency
            or config.key_batch64_concurrency not in config.batch64_concurrency):
        parser.error(f"the concurrency lists must hold {config.key_concurrency} (b1) and "
                     f"{config.key_batch64_concurrency} (b64), where the targets are read")
    try:
        report = run_bench(config)
    except ToolkitError as e:
        logger.error("benchmark failed: %s", e)
        return 2
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (config.out / "report.md").write_text(markdown(report, config))
    for path in plots(report, config.out):
        logger.info("wrote %s", path)
    for key, t in report["targets"].items():
        logger.info("target (%s): %s = %s (target %s): %s%s", key, t["what"], t["value"], t["target"],
                    "met" if t["met"] else "NOT met",
                    f"; by server CPU {t['by_cpu']} ({t['by_cpu_at']})" if t.get("by_cpu") is not None else "")
    logger.info("wrote %s and %s in %.0f s", config.out / "results.json", config.out / "report.md",
                report["elapsed_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
