"""What monitoring inside Triton costs: throughput and p99 with the spec's monitoring on and off.

Two embedded servers run side by side from the same spec, one with `monitoring.enabled: true` (metrics
from the router and the preprocessing step, every request in the prediction log) and one with it off;
both are pinned to the same server CPUs, and the closed-loop load generator (on the other CPUs) drives
them interleaved (off, on, on, off, off, on, ...) for several rounds, so both sides of each ratio see the same
machine. The idle server costs next to nothing while the other is measured. Paths: the ensemble with
PNG bytes (preprocess -> router -> classifier) and single tensors through the router. Writes
bench/monitor_cost.{json,md,png}. Target: monitoring costs at most 5% of the throughput.

    python -m loadtest.monitor_cost [--rounds 3] [--seconds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from build_tools.build import build_repositories
from build_tools.served import classifier_names
from build_tools.spec import DeploySpec, FlavorSpec, load_spec
from loadtest import loadgen
from loadtest.bench import loadavg
from loadtest.common import spec_sample
from loadtest.errors import LoadTestError
from loadtest.servers import DEFAULT_SPEC, affinity, split_cpus, triton

logger = logging.getLogger(__name__)

TARGET_COST = 0.05
_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by a process and every live descendant (the server, its
    Python-backend stubs and the prediction log's sink). CPU time per request is the cost itself, and
    it is far less disturbed by other load on a shared machine than throughput is."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICKS
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(cpu.get(pid, 0.0) for pid in tree)


def build(spec: DeploySpec, out: Path, enabled: bool) -> Path:
    monitoring = spec.monitoring.model_copy(update={"enabled": enabled})
    built = spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(out))}, "monitoring": monitoring})
    build_repositories(built, ["embedded"])
    return out


def measure(urls: dict[str, str], pids: dict[str, int], spec: DeploySpec, rounds: int, seconds: float, concurrency: int,
            client_cpus: frozenset[int] | None) -> list[dict[str, Any]]:
    names = classifier_names(spec)
    router = spec.models[names.classifier].router_name(names.classifier)
    if router is None or not spec.monitoring.models:
        raise LoadTestError("the spec has no lifecycle router or no monitored model: nothing to measure")
    sample = spec_sample()
    paths = {
        "ensemble (PNG bytes)": lambda url: loadgen.triton_http_target(
            url, sample, model=names.ensemble, ensemble=True),
        "router (tensor)": lambda url: loadgen.triton_http_target(url, sample, model=router),
    }
    rows = []
    for r in range(1, rounds + 1):
        for path, target_of in paths.items():
            results = {}
            cpu_ms: dict[str, float] = {}
            # Alternate which side goes first, so neither always follows the other's load.
            for label in (("off", "on") if r % 2 else ("on", "off")):
                target = target_of(urls[label])
                with affinity(client_cpus):
                    cpu_before = tree_cpu_s(pids[label])
                    res = loadgen.run_load(target, concurrency, duration_s=seconds, warmup_s=1.0)
                    cpu_used = tree_cpu_s(pids[label]) - cpu_before
                if res.failures:
                    raise LoadTestError(f"{target.name} (monitoring {label}): {res.failures} failed requests "
                                        f"({res.first_error})")
                results[label] = res
                # Warmup requests included: CPU is read around the whole run.
                cpu_ms[label] = 1000.0 * cpu_used / max(1, res.answered)
                sys.stderr.write(f"round {r} {path} monitoring {label}: {res.throughput_rps:,.0f} req/s, "
                                 f"p99 {res.latency_ms['p99']:.1f} ms, server CPU {cpu_ms[label]:.2f} ms/request\n")
            rows.append({
                "round": r, "path": path,
                "off_rps": results["off"].throughput_rps, "on_rps": results["on"].throughput_rps,
                "off_p99_ms": results["off"].latency_ms["p99"], "on_p99_ms": results["on"].latency_ms["p99"],
                "ratio": results["on"].throughput_rps / results["off"].throughput_rps,
                "off_cpu_ms": cpu_ms["off"], "on_cpu_ms": cpu_ms["on"],
                "cpu_ratio": cpu_ms["on"] / cpu_ms["off"],
            })
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for path in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == path]
        ratio = statistics.median(r["ratio"] for r in mine)
        cpu_ratio = statistics.median(r["cpu_ratio"] for r in mine)
        out[path] = {
            "median_ratio": ratio, "cost": 1.0 - ratio, "cpu_ratio": cpu_ratio, "cpu_cost": cpu_ratio - 1.0,
            **{k: statistics.median(r[k] for r in mine)
               for k in ("off_rps", "on_rps", "off_p99_ms", "on_p99_ms", "off_cpu_ms", "on_cpu_ms")},
        }
    return out


def plot(rows: list[dict[str, Any]], out: Path, concurrency: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(dict.fromkeys(r["path"] for r in rows))
    fig, axes = plt.subplots(1, len(paths), figsize=(5 * len(paths), 4), squeeze=False)
    for ax, path in zip(axes[0], paths):
        mine = [r for r in rows if r["path"] == path]
        x = [r["round"] for r in mine]
        ax.plot(x, [r["off_rps"] for r in mine], "o-", label="monitoring off")
        ax.plot(x, [r["on_rps"] for r in mine], "s-", label="monitoring on (metrics + log)")
        ax.set_title(f"{path}, concurrency {concurrency}")
        ax.set_xticks(x)
        ax.set_xlabel("round (interleaved)")
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def markdown(summary: dict[str, dict[str, float]], meta: dict[str, Any]) -> str:
    lines = ["# Monitoring cost (metrics from inside Triton and the prediction log)", "",
             f"`{meta['command']}`: concurrency {meta['concurrency']}, {meta['rounds']} interleaved rounds of "
             f"{meta['seconds']:g} s each, HTTP, batch 1; {meta['cpus']}; load average {meta['load_before']} / "
             f"{meta['load_after']}. Every request logged (sample_rate {meta['sample_rate']:g}).", "",
             "| path | off req/s (p99 ms) | on req/s (p99 ms) | throughput on/off | server CPU ms/request off / on "
             "| CPU on/off |",
             "|---|---|---|---|---|---|"]
    for path, s in summary.items():
        lines.append(f"| {path} | {s['off_rps']:,.0f} ({s['off_p99_ms']:.1f}) | {s['on_rps']:,.0f} "
                     f"({s['on_p99_ms']:.1f}) | {s['median_ratio']:.1%} | {s['off_cpu_ms']:.2f} / {s['on_cpu_ms']:.2f} "
                     f"| {s['cpu_ratio']:.1%} |")
    worst = max(s["cpu_cost"] for s in summary.values())
    lines += ["", "Medians over the rounds. Server CPU is the CPU time of the server's whole process tree (Triton, "
              "its Python-backend stubs, the prediction log's sink) per request served: on a server that is "
              "CPU-bound it is what throughput is inversely proportional to, and it is much less disturbed by "
              "other load on a shared machine than throughput.", "",
              f"Target: monitoring costs at most {TARGET_COST:.0%}: "
              f"{'met' if worst <= TARGET_COST else 'NOT met'} (worst path: {worst:+.1%} server CPU per request).",
              "",
              "![throughput with monitoring on and off](monitor_cost.png)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cpus = split_cpus()
    spec = load_spec(args.spec)
    server_cpus = cpus.server if cpus.pinned else None
    with tempfile.TemporaryDirectory(prefix="monitor-cost.") as tmp:
        base = Path(tmp)
        repos = {label: build(spec, base / label / "repository", label == "on") for label in ("off", "on")}
        load_before = loadavg()
        with contextlib.ExitStack() as stack:
            servers = {label: stack.enter_context(triton([repo], base / label / "tritonserver.log", server_cpus))
                       for label, repo in repos.items()}
            pids = {k: s.process.pid for k, s in servers.items()}
            rows = measure({k: s.http_url for k, s in servers.items()}, pids, spec, args.rounds, args.seconds,
                           args.concurrency, cpus.client if cpus.pinned else None)
        load_after = loadavg()
    summary = summarize(rows)
    meta = {"concurrency": args.concurrency, "rounds": args.rounds, "seconds": args.seconds,
            "cpus": cpus.describe(), "load_before": load_before, "load_after": load_after,
            "sample_rate": spec.monitoring.sample_rate,
            "command": "python -m loadtest.monitor_cost " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "monitor_cost.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2))
    plot(rows, args.out / "monitor_cost.png", args.concurrency)
    text = markdown(summary, meta)
    (args.out / "monitor_cost.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
