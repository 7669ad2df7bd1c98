"""What monitoring inside Triton costs: throughput and p99 with the spec's monitoring on and off.

Two embedded servers run side by side from the same spec, one with `monitoring.enabled: true` (metrics
from the model that watches the classifier's predictions and from the preprocessing step, every request
in the prediction log) and one with it off; both are pinned to the same server CPUs, and the closed-loop
load generator (on the other CPUs) drives them interleaved (loadtest.ab_cost) for several rounds, so
both sides of each ratio see the same machine. The idle server costs next to nothing while the other is
measured. Paths: the ensemble with PNG bytes and single tensors through the router. Writes
bench/monitor_cost.{json,md,png}. Target: monitoring costs at most 5% of the throughput.

    python -m loadtest.monitor_cost [--rounds 3] [--seconds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from build_tools.build import build_repositories
from build_tools.served import classifier_names
from build_tools.spec import DeploySpec, FlavorSpec, load_spec
from loadtest import ab_cost, loadgen
from loadtest.common import spec_sample
from loadtest.errors import LoadTestError
from loadtest.servers import split_cpus, triton

logger = logging.getLogger(__name__)

TARGET_COST = 0.05
SIDES = {"off": "monitoring off", "on": "monitoring on (metrics + log)"}


def build(spec: DeploySpec, out: Path, enabled: bool) -> Path:
    monitoring = spec.monitoring.model_copy(update={"enabled": enabled})
    # The router stays in the ensemble's path on both sides: with monitoring off nothing is watched and the
    # build would bypass it (lifecycle.bypass_router), which is the router's cost (loadtest.router_cost).
    models = {name: m.model_copy(update={"lifecycle": m.lifecycle.model_copy(update={"bypass_router": False})})
              if m.lifecycle is not None else m for name, m in spec.models.items()}
    built = spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(out))}, "monitoring": monitoring,
                                    "models": models})
    build_repositories(built, ["embedded"])
    return out


def comparison(spec: DeploySpec, urls: dict[str, str], pids: dict[str, int]) -> dict[str, dict[str, ab_cost.Side]]:
    """Per path, the same requests to the server with monitoring off and to the one with it on."""
    names = classifier_names(spec)
    router = spec.models[names.classifier].router_name(names.classifier)
    if router is None or not spec.monitoring.models:
        raise LoadTestError("the spec has no lifecycle router or no monitored model: nothing to measure")
    sample = spec_sample()
    return {
        "ensemble (PNG bytes)": {
            label: ab_cost.Side(loadgen.triton_http_target(urls[label], sample, model=names.ensemble, ensemble=True),
                                pids[label]) for label in SIDES},
        "router (tensor)": {
            label: ab_cost.Side(loadgen.triton_http_target(urls[label], sample, model=router), pids[label])
            for label in SIDES},
    }


def markdown(summary: dict[str, dict[str, float]], meta: dict[str, Any]) -> str:
    lines = ["# Monitoring cost (metrics from inside Triton and the prediction log)", "",
             ab_cost.footer(meta) + f" Every request logged (sample_rate {meta['sample_rate']:g}).", "",
             "| path | off req/s (p99 ms) | on req/s (p99 ms) | throughput on/off | server CPU ms/request off / on "
             "| CPU on/off |",
             "|---|---|---|---|---|---|"]
    for path, s in summary.items():
        lines.append(f"| {path} | {s['off_rps']:,.0f} ({s['off_p99_ms']:.1f}) | {s['on_rps']:,.0f} "
                     f"({s['on_p99_ms']:.1f}) | {s['on_ratio']:.1%} | {s['off_cpu_ms']:.2f} / {s['on_cpu_ms']:.2f} "
                     f"| {s['on_cpu_ratio']:.1%} |")
    worst = max(s["on_cpu_ratio"] - 1.0 for s in summary.values())
    lines += ["", "Medians over the rounds (ratios taken within each round). Server CPU is the CPU time of the "
              "server's whole process tree (Triton, its Python-backend stubs, the prediction log's sink) per "
              "request served: on a server that is CPU-bound it is what throughput is inversely proportional to, "
              "and it is much less disturbed by other load on a shared machine than throughput.", "",
              f"Target: monitoring costs at most {TARGET_COST:.0%}: "
              f"{'met' if worst <= TARGET_COST else 'NOT met'} (worst path: {worst:+.1%} server CPU per request).",
              "",
              "![throughput with monitoring on and off](monitor_cost.png)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = ab_cost.add_common_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cpus = split_cpus()
    spec = load_spec(args.spec)
    server_cpus = cpus.server if cpus.pinned else None
    with tempfile.TemporaryDirectory(prefix="monitor-cost.") as tmp:
        base = Path(tmp)
        repos = {label: build(spec, base / label / "repository", label == "on") for label in SIDES}
        load_before = ab_cost.loadavg()
        with contextlib.ExitStack() as stack:
            servers = {label: stack.enter_context(triton([repo], base / label / "tritonserver.log", server_cpus))
                       for label, repo in repos.items()}
            paths = comparison(spec, {k: s.http_url for k, s in servers.items()},
                               {k: s.process.pid for k, s in servers.items()})
            rows = ab_cost.run_rounds(paths, args.rounds, args.seconds, args.concurrency,
                                      cpus.client if cpus.pinned else None)
        load_after = ab_cost.loadavg()
    summary = ab_cost.summarize(rows, reference="off")
    meta = {"concurrency": args.concurrency, "rounds": args.rounds, "seconds": args.seconds,
            "cpus": cpus.describe(), "load_before": load_before, "load_after": load_after,
            "sample_rate": spec.monitoring.sample_rate,
            "command": ab_cost.command_line("loadtest.monitor_cost", argv)}
    text = markdown(summary, meta)
    ab_cost.write_outputs(args.out, "monitor_cost", {"meta": meta, "rows": rows, "summary": summary}, text,
                          lambda png: ab_cost.plot_rounds(rows, png, SIDES, args.concurrency))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
