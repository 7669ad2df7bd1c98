"""What the lifecycle router costs: throughput, p99 and server CPU with and without it, at concurrency 16.

One embedded server serves every side at once, built from the spec plus two copies of its ensemble:

- `<ensemble>_direct`: the router step replaced by the classifier itself (no router at all);
- `<ensemble>` as built: while one version takes all the traffic and nothing is watched (the build here
  turns monitoring off: this measures the hop; monitoring's cost is loadtest.monitor_cost's), its
  router step calls that version directly (`lifecycle.bypass_router`, build_tools.config);
- `<ensemble>_routed`: the router step kept (what every request pays during a split, and always where
  predictions are watched, e.g. the embedded flavor with monitoring on);

plus the tensor path through the router and straight to the classifier. The closed-loop load generator
measures them interleaved (loadtest.ab_cost), the server pinned to its CPUs and the generator to the
others. Writes bench/router_cost.{json,md,png}; `--report FILE` also puts the table and the figure into
that report (`make bench`: bench/report.md). Target: the router costs at most 15% of the ensemble's
throughput.

`--baseline-rev REV` adds, in the same server and the same interleaved rounds, the router as it was at
that git revision (`<router>_baseline`, and `<ensemble>_baseline` through it): a before/after of a
change to the router measured on one machine at one time.

    python -m loadtest.router_cost --rounds 5 --seconds 5 --baseline-rev 08ae4e2
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import shutil
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
from loadtest import ab_cost, loadgen
from loadtest.common import spec_sample
from loadtest.errors import LoadTestError
from loadtest.servers import load_spec_data, split_cpus, triton

logger = logging.getLogger(__name__)

TARGET_COST = 0.15
ROOT = Path(__file__).resolve().parents[1]
ENSEMBLE, TENSOR = "ensemble (PNG bytes)", "classifier (tensor)"
LEGENDS = {"direct": "without router", "deployed": "bypassed (one version, nothing watched)",
           "routed": "through the router", "baseline": "through the baseline router"}
REPORT_BEGIN, REPORT_END = "<!-- router_cost: begin -->", "<!-- router_cost: end -->"


@dataclass(frozen=True)
class Paths:
    """The served names the sides of each comparison use, from the spec."""

    ensemble: str
    router: str
    classifier: str

    @property
    def direct_ensemble(self) -> str:
        return f"{self.ensemble}_direct"

    @property
    def routed_ensemble(self) -> str:
        return f"{self.ensemble}_routed"

    @property
    def baseline_router(self) -> str:
        return f"{self.router}_baseline"

    @property
    def baseline_ensemble(self) -> str:
        return f"{self.ensemble}_baseline"


def paths_of(spec: DeploySpec) -> Paths:
    names = classifier_names(spec)
    router = spec.models[names.classifier].router_name(names.classifier)
    if router is None:
        raise LoadTestError(f"models.{names.classifier}.lifecycle is not set: there is no router to measure")
    return Paths(names.ensemble, router, names.classifier)


def build(out: Path, spec_path: Path, paths: Paths) -> Path:
    """The embedded repository of the spec, plus `<ensemble>_direct` (the router step replaced by the
    classifier) and `<ensemble>_routed` (the router step kept whatever the weights)."""
    data = copy.deepcopy(load_spec_data(spec_path))
    # Monitoring off: the router's hop alone is measured (what monitoring costs: loadtest.monitor_cost), and
    # with nothing watched the deployed ensemble bypasses the router while one version takes all the traffic.
    data.setdefault("monitoring", {})["enabled"] = False
    spec = parse_spec(data, base_dir=spec_path.resolve().parent)
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(out))}}), ["embedded"])
    # Both copies start from the deployed ensemble's config: route_step points the router's step at the
    # classifier (direct) or back at the router (routed; the build bypasses it) and wires the router's
    # own side input to match.
    for name, model in ((paths.direct_ensemble, paths.classifier), (paths.routed_ensemble, paths.router)):
        config = cfg.read_config(out / paths.ensemble / "config.pbtxt")
        config.name = name
        for i, step in enumerate(spec.ensembles[paths.ensemble].steps):
            if step.model == paths.router:
                cfg.route_step(config, spec, paths.ensemble, i, model, step.model_version)
        shutil.copytree(out / paths.ensemble, out / name)
        (out / name / "config.pbtxt").write_text(cfg.to_pbtxt(config))
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


def comparison(http: str, paths: Paths, server_pid: int | None, baseline: bool) -> dict[str, dict[str, ab_cost.Side]]:
    sample = spec_sample()

    def side(model: str, ensemble: bool) -> ab_cost.Side:
        return ab_cost.Side(loadgen.triton_http_target(http, sample, model=model, ensemble=ensemble), server_pid)

    ensemble = {"direct": side(paths.direct_ensemble, True), "deployed": side(paths.ensemble, True),
                "routed": side(paths.routed_ensemble, True)}
    tensor = {"direct": side(paths.classifier, False), "routed": side(paths.router, False)}
    if baseline:
        ensemble["baseline"] = side(paths.baseline_ensemble, True)
        tensor["baseline"] = side(paths.baseline_router, False)
    return {ENSEMBLE: ensemble, TENSOR: tensor}


def costs(s: dict[str, float], side: str) -> tuple[float, float | None]:
    """(throughput cost, throughput cost a CPU-bound server would show from its CPU per request) of a side
    against the side without the router: 1 - rps ratio, and 1 - 1 / CPU ratio."""
    by_cpu = s.get(f"{side}_cpu_ratio")
    return 1.0 - s[f"{side}_ratio"], (None if by_cpu is None else 1.0 - 1.0 / by_cpu)


def markdown(summary: dict[str, dict[str, float]], meta: dict[str, Any], figure: str = "router_cost.png") -> str:
    lines = ["# Router cost (lifecycle)", "", ab_cost.footer(meta), "",
             "Requests/s (p99 ms) and the server's CPU per answered request (every process of its tree, from "
             "/proc), medians over the rounds; cost = 1 - (requests/s with / without the router), and by CPU "
             "1 - (CPU per request without / with): the throughput cost a CPU-bound server would show, far less "
             "distorted by the machine's load. Ratios are taken within each round.", "",
             "| path | side | req/s (p99 ms) | CPU ms/request | cost (req/s) | cost (CPU) |",
             "|---|---|---|---|---|---|"]
    for path, s in summary.items():
        for side in [k for k in LEGENDS if f"{k}_rps" in s]:
            cpu = f"{s[f'{side}_cpu_ms']:.2f}" if f"{side}_cpu_ms" in s else "–"
            if side == "direct":
                cost = by_cpu = "–"
            else:
                rps_cost, cpu_cost = costs(s, side)
                cost, by_cpu = f"{rps_cost:.1%}", ("–" if cpu_cost is None else f"{cpu_cost:.1%}")
            lines.append(f"| {path} | {LEGENDS[side]} | {s[f'{side}_rps']:,.0f} ({s[f'{side}_p99_ms']:.1f}) | {cpu} "
                         f"| {cost} | {by_cpu} |")
    ens = summary[ENSEMBLE]
    verdicts = []
    for side, what in (("deployed", "bypassed (one version takes all the traffic, predictions not watched)"),
                       ("routed", "through the router (a split, or predictions watched)")):
        rps_cost, cpu_cost = costs(ens, side)
        met = rps_cost <= TARGET_COST and (cpu_cost is None or cpu_cost <= TARGET_COST)
        verdicts.append(f"{what}: {'met' if met else 'NOT met'} ({rps_cost:.1%} by requests/s"
                        + ("" if cpu_cost is None else f", {cpu_cost:.1%} by server CPU per request") + ")")
    lines += ["", f"Target: the router costs at most {TARGET_COST:.0%} of the ensemble's throughput at concurrency "
              f"{meta['concurrency']}: " + "; ".join(verdicts) + ".", ""]
    if meta.get("baseline_rev"):
        lines += [f"Baseline: the router's model.py at `{meta['baseline_rev']}` (`_baseline` models), same server, "
                  "same rounds.", ""]
    lines += [f"![throughput and server CPU per request with and without the router]({figure})", ""]
    return "\n".join(lines)


def into_report(report: Path, section: str) -> None:
    """Put the section into a report (the benchmark's report.md), replacing the one a previous run put there."""
    text = report.read_text() if report.is_file() else ""
    block = f"{REPORT_BEGIN}\n{section.rstrip()}\n{REPORT_END}\n"
    pattern = re.compile(re.escape(REPORT_BEGIN) + r".*?" + re.escape(REPORT_END) + r"\n?", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    report.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = ab_cost.add_common_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--baseline-rev", default=None,
                   help="also measure the router's model.py at this git revision, interleaved (before/after)")
    p.add_argument("--report", type=Path, default=None,
                   help="also put the table and figure into this Markdown report (make bench: bench/report.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cpus = split_cpus()
    paths = paths_of(load_spec(args.spec))
    with tempfile.TemporaryDirectory(prefix="router-cost.") as tmp:
        repo = build(Path(tmp) / "repository", args.spec, paths)
        if args.baseline_rev:
            add_baseline(repo, paths, args.baseline_rev)
        load_before = ab_cost.loadavg()
        with triton([repo], Path(tmp) / "tritonserver.log", cpus.server if cpus.pinned else None) as server:
            sides = comparison(server.http_url, paths, server.process.pid if server.process else None,
                               bool(args.baseline_rev))
            rows = ab_cost.run_rounds(sides, args.rounds, args.seconds, args.concurrency,
                                      cpus.client if cpus.pinned else None)
        load_after = ab_cost.loadavg()
    summary = ab_cost.summarize(rows, reference="direct")
    meta = {"concurrency": args.concurrency, "rounds": args.rounds, "seconds": args.seconds,
            "cpus": cpus.describe(), "load_before": load_before, "load_after": load_after,
            "baseline_rev": args.baseline_rev, "command": ab_cost.command_line("loadtest.router_cost", argv)}
    text = markdown(summary, meta)
    ab_cost.write_outputs(args.out, "router_cost", {"meta": meta, "rows": rows, "summary": summary}, text,
                          lambda png: ab_cost.plot_rounds(rows, png, LEGENDS, args.concurrency))
    if args.report is not None:
        figure = Path(os.path.relpath(args.out.resolve() / "router_cost.png", args.report.resolve().parent))
        section = markdown(summary, meta, figure.as_posix()).replace("# Router cost", "## Router cost", 1)
        into_report(args.report, section)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
