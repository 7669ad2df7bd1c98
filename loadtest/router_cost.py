"""What the lifecycle router costs: throughput and p99 with and without it, at concurrency 16.

One embedded server serves both paths side by side: the spec's ensemble (preprocess -> router ->
classifier, as deployed) and a copy of it without the router (`<ensemble>_direct`), plus the tensor path
through the router and straight to the classifier. The closed-loop load generator of the benchmark
measures them interleaved (A, B, A, B, ...) for several rounds, the server pinned to its CPUs and the
generator to the others, so both sides of each ratio see the same machine. Writes
bench/router_cost.{json,md,png}. Target: the router costs at most 15% of the ensemble's throughput.

`--baseline-rev REV` adds, in the same server and the same interleaved rounds, the router as it was at
that git revision (`<router>_baseline`, and `<ensemble>_baseline` through it): a before/after of a
change to the router measured on one machine at one time.

    python -m loadtest.router_cost --rounds 3 --seconds 5 --baseline-rev 08ae4e2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from build_tools import config as cfg
from build_tools.build import build_repositories
from build_tools.config import ROUTER_SOURCE
from build_tools.served import classifier_names
from build_tools.spec import DeploySpec, FlavorSpec, load_spec, parse_spec
from loadtest import loadgen, procstat
from loadtest.bench import loadavg
from loadtest.common import spec_sample
from loadtest.errors import LoadTestError
from loadtest.servers import DEFAULT_SPEC, affinity, load_spec_data, split_cpus, triton

logger = logging.getLogger(__name__)

TARGET_COST = 0.15
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    """The served names both sides of each comparison use, from the spec."""

    routed_ensemble: str
    direct_ensemble: str
    router: str
    classifier: str

    @property
    def baseline_router(self) -> str:
        return f"{self.router}_baseline"

    @property
    def baseline_ensemble(self) -> str:
        return f"{self.routed_ensemble}_baseline"


def paths_of(spec: DeploySpec) -> Paths:
    names = classifier_names(spec)
    router = spec.models[names.classifier].router_name(names.classifier)
    if router is None:
        raise LoadTestError(f"models.{names.classifier}.lifecycle is not set: there is no router to measure")
    return Paths(names.ensemble, f"{names.ensemble}_direct", router, names.classifier)


def build(out: Path, spec_path: Path, paths: Paths) -> Path:
    """The embedded repository of the spec plus `<ensemble>_direct`: the ensemble with the router step replaced."""
    data = copy.deepcopy(load_spec_data(spec_path))
    direct = copy.deepcopy(data["ensembles"][paths.routed_ensemble])
    for step in direct["steps"]:
        if step["model"] == paths.router:
            step["model"] = paths.classifier
    data["ensembles"][paths.direct_ensemble] = direct
    spec = parse_spec(data, base_dir=spec_path.resolve().parent)
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(out))}}), ["embedded"])
    return out


def add_baseline(repo: Path, paths: Paths, rev: str) -> None:
    """`<router>_baseline` (the router's model.py at `rev`, same config) and an ensemble through it."""
    rel = ROUTER_SOURCE.resolve().relative_to(ROOT).as_posix()
    try:
        source = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise LoadTestError(f"--baseline-rev {rev}: cannot read {rel} from git: {e}") from e
    router_dir = repo / paths.baseline_router
    shutil.copytree(repo / paths.router, router_dir)
    for model_py in router_dir.glob("*/model.py"):
        model_py.write_text(source)
    router_cfg = cfg.read_config(router_dir / "config.pbtxt")
    router_cfg.name = paths.baseline_router
    (router_dir / "config.pbtxt").write_text(cfg.to_pbtxt(router_cfg))
    ensemble_dir = repo / paths.baseline_ensemble
    shutil.copytree(repo / paths.routed_ensemble, ensemble_dir)
    ensemble_cfg = cfg.read_config(ensemble_dir / "config.pbtxt")
    ensemble_cfg.name = paths.baseline_ensemble
    for step in ensemble_cfg.ensemble_scheduling.step:
        if step.model_name == paths.router:
            step.model_name = paths.baseline_router
    (ensemble_dir / "config.pbtxt").write_text(cfg.to_pbtxt(ensemble_cfg))


def measure(http: str, paths: Paths, rounds: int, seconds: float, concurrency: int,
            client_cpus: frozenset[int] | None, baseline: bool = False,
            server_pid: int | None = None) -> list[dict[str, Any]]:
    """Interleaved runs; besides throughput, the server's CPU per answered request (every process of
    its tree, from /proc), which a shared machine's load distorts far less than requests per second."""
    sample = spec_sample()
    variants: dict[str, dict[str, Any]] = {
        "ensemble (PNG bytes)": {
            "direct": loadgen.triton_http_target(http, sample, model=paths.direct_ensemble, ensemble=True),
            "routed": loadgen.triton_http_target(http, sample, model=paths.routed_ensemble, ensemble=True)},
        "classifier (tensor)": {"direct": loadgen.triton_http_target(http, sample, model=paths.classifier),
                                "routed": loadgen.triton_http_target(http, sample, model=paths.router)},
    }
    if baseline:
        variants["ensemble (PNG bytes)"]["baseline"] = loadgen.triton_http_target(
            http, sample, model=paths.baseline_ensemble, ensemble=True)
        variants["classifier (tensor)"]["baseline"] = loadgen.triton_http_target(
            http, sample, model=paths.baseline_router)
    rows = []
    for r in range(1, rounds + 1):
        for path, targets in variants.items():
            results = {}
            cpu_ms: dict[str, float] = {}
            for label, target in targets.items():
                before = procstat.tree_cpu(server_pid) if server_pid else {}
                with affinity(client_cpus):
                    res = loadgen.run_load(target, concurrency, duration_s=seconds, warmup_s=1.0)
                if server_pid and res.answered:
                    spent = sum(procstat.cpu_delta(before, procstat.tree_cpu(server_pid)).values())
                    cpu_ms[label] = 1000.0 * spent / res.answered
                if res.failures:
                    raise RuntimeError(f"{target.name}: {res.failures} failed requests ({res.first_error})")
                results[label] = res
                sys.stderr.write(f"round {r} {path} {label}: {res.throughput_rps:,.0f} req/s, "
                                 f"p99 {res.latency_ms['p99']:.1f} ms\n")
            rows.append({
                "round": r, "path": path,
                "direct_rps": results["direct"].throughput_rps, "routed_rps": results["routed"].throughput_rps,
                "direct_p99_ms": results["direct"].latency_ms["p99"],
                "routed_p99_ms": results["routed"].latency_ms["p99"],
                "ratio": results["routed"].throughput_rps / results["direct"].throughput_rps,
            })
            if len(cpu_ms) == len(targets):
                rows[-1].update({f"{label}_cpu_ms": ms for label, ms in cpu_ms.items()})
                rows[-1]["cpu_ratio"] = cpu_ms["direct"] / cpu_ms["routed"]
                if "baseline" in cpu_ms:
                    rows[-1]["baseline_cpu_ratio"] = cpu_ms["direct"] / cpu_ms["baseline"]
            if "baseline" in results:
                rows[-1].update({
                    "baseline_rps": results["baseline"].throughput_rps,
                    "baseline_p99_ms": results["baseline"].latency_ms["p99"],
                    "baseline_ratio": results["baseline"].throughput_rps / results["direct"].throughput_rps,
                })
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for path in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == path]
        ratio = statistics.median(r["ratio"] for r in mine)
        out[path] = {
            "median_ratio": ratio, "cost": 1.0 - ratio,
            "direct_rps": statistics.median(r["direct_rps"] for r in mine),
            "routed_rps": statistics.median(r["routed_rps"] for r in mine),
            "direct_p99_ms": statistics.median(r["direct_p99_ms"] for r in mine),
            "routed_p99_ms": statistics.median(r["routed_p99_ms"] for r in mine),
        }
        for key in ("direct_cpu_ms", "routed_cpu_ms", "baseline_cpu_ms", "cpu_ratio", "baseline_cpu_ratio"):
            if all(key in r for r in mine):
                out[path][key] = statistics.median(r[key] for r in mine)
        if all("baseline_rps" in r for r in mine):
            out[path].update({
                "baseline_ratio": statistics.median(r["baseline_ratio"] for r in mine),
                "baseline_rps": statistics.median(r["baseline_rps"] for r in mine),
                "baseline_p99_ms": statistics.median(r["baseline_p99_ms"] for r in mine),
            })
    return out


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(dict.fromkeys(r["path"] for r in rows))
    with_cpu = all("routed_cpu_ms" in r for r in rows)
    fig, axes = plt.subplots(2 if with_cpu else 1, len(paths), figsize=(5 * len(paths), 8 if with_cpu else 4),
                             squeeze=False)
    panels = [("rps", "requests/s")] + ([("cpu_ms", "server CPU ms per request")] if with_cpu else [])
    for row, (key, unit) in zip(axes, panels):
        for ax, path in zip(row, paths):
            mine = [r for r in rows if r["path"] == path]
            x = [r["round"] for r in mine]
            ax.plot(x, [r[f"direct_{key}"] for r in mine], "o-", label="without router")
            ax.plot(x, [r[f"routed_{key}"] for r in mine], "s-", label="through the router")
            if all(f"baseline_{key}" in r for r in mine):
                ax.plot(x, [r[f"baseline_{key}"] for r in mine], "^--", label="through the baseline router")
            ax.set_title(f"{path}, concurrency 16")
            ax.set_xticks(x)
            ax.set_xlabel("round (interleaved)")
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def markdown(summary: dict[str, dict[str, float]], meta: dict[str, Any]) -> str:
    lines = ["# Router cost (lifecycle)", "",
             f"Concurrency {meta['concurrency']}, {meta['rounds']} interleaved rounds of {meta['seconds']:g} s each, "
             f"HTTP, batch 1; {meta['cpus']}; load average {meta['load_before']} / {meta['load_after']}.", "",
             "| path | without router req/s (p99 ms) | through the router req/s (p99 ms) | routed/direct | cost |",
             "|---|---|---|---|---|"]
    for path, s in summary.items():
        lines.append(f"| {path} | {s['direct_rps']:,.0f} ({s['direct_p99_ms']:.1f}) | {s['routed_rps']:,.0f} "
                     f"({s['routed_p99_ms']:.1f}) | {s['median_ratio']:.1%} | {s['cost']:.1%} |")
    if all("baseline_ratio" in s for s in summary.values()):
        lines += ["", f"Before/after in the same run: the router at `{meta['baseline_rev']}` (`_baseline` models).", "",
                  "| path | baseline router req/s (p99 ms) | baseline routed/direct | baseline cost | cost now |",
                  "|---|---|---|---|---|"]
        for path, s in summary.items():
            lines.append(f"| {path} | {s['baseline_rps']:,.0f} ({s['baseline_p99_ms']:.1f}) | "
                         f"{s['baseline_ratio']:.1%} | {1 - s['baseline_ratio']:.1%} | {s['cost']:.1%} |")
    if all("cpu_ratio" in s for s in summary.values()):
        with_base = all("baseline_cpu_ratio" in s for s in summary.values())
        lines += ["", "Server CPU per answered request (every process of the server, from /proc; medians over "
                  "rounds), the throughput cost a CPU-bound server would show, less distorted by the machine's "
                  "load:", "",
                  "| path | without router ms | through the router ms | cost by CPU |"
                  + (" baseline router ms | baseline cost by CPU |" if with_base else ""),
                  "|---|---|---|---|" + ("---|---|" if with_base else "")]
        for path, s in summary.items():
            row = (f"| {path} | {s['direct_cpu_ms']:.2f} | {s['routed_cpu_ms']:.2f} | {1 - s['cpu_ratio']:.1%} |")
            if with_base:
                row += f" {s['baseline_cpu_ms']:.2f} | {1 - s['baseline_cpu_ratio']:.1%} |"
            lines.append(row)
    ens = summary["ensemble (PNG bytes)"]["cost"]
    lines += ["", f"Target: the router costs at most {TARGET_COST:.0%} of the ensemble's throughput: "
              f"{'met' if ens <= TARGET_COST else 'NOT met'} by requests/s ({ens:.1%})"]
    if "cpu_ratio" in summary["ensemble (PNG bytes)"]:
        by_cpu = 1 - summary["ensemble (PNG bytes)"]["cpu_ratio"]
        lines[-1] += f"; {'met' if by_cpu <= TARGET_COST else 'NOT met'} by server CPU per request ({by_cpu:.1%})"
    lines[-1] += "."
    lines += ["",
              "![throughput with and without the router](router_cost.png)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--baseline-rev", default=None,
                   help="also measure the router's model.py at this git revision, interleaved (before/after)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cpus = split_cpus()
    paths = paths_of(load_spec(args.spec))
    with tempfile.TemporaryDirectory(prefix="router-cost.") as tmp:
        repo = build(Path(tmp) / "repository", args.spec, paths)
        if args.baseline_rev:
            add_baseline(repo, paths, args.baseline_rev)
        load_before = loadavg()
        with triton([repo], Path(tmp) / "tritonserver.log", cpus.server if cpus.pinned else None) as server:
            rows = measure(server.http_url, paths, args.rounds, args.seconds, args.concurrency,
                           cpus.client if cpus.pinned else None, baseline=bool(args.baseline_rev),
                           server_pid=server.process.pid if server.process else None)
        load_after = loadavg()
    summary = summarize(rows)
    meta = {"concurrency": args.concurrency, "rounds": args.rounds, "seconds": args.seconds,
            "cpus": cpus.describe(), "load_before": load_before, "load_after": load_after,
            "baseline_rev": args.baseline_rev}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "router_cost.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2))
    plot(rows, args.out / "router_cost.png")
    text = markdown(summary, meta)
    (args.out / "router_cost.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
