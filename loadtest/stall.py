"""Reproduce the dynamic batcher's 500 ms stall: ``python -m loadtest.stall``.

Starts the embedded Triton on a repository built from ``deploy.yaml`` (or a variant of it), runs a CPU
hog on the server's CPU, and drives closed-loop clients (``loadtest.loadgen``) at several
concurrencies, over HTTP and gRPC, against the classifier and the ensemble. For each point it counts
the successful requests slower than 250 ms (and 400 ms), the failures and the refusals. The
mechanism is in docs/stall.md.

Variants (``--variant``) are the spec as committed (``spec``) and named changes of it:

* ``queue-policy``: the classifier's dynamic batcher with a default queue policy (``max_queue_size:
  4096``), the setting that turns Triton's payload prefetching off and exposes the lost wake-up, with
  three instances and no queue delay: the classifier as committed before the fix (the rest of the spec
  unchanged).
* ``one-instance-queue-policy``: the same with one classifier instance, where the stall is frequent.
* ``one-instance``: the spec with one classifier instance (with the fix, the instance count no longer
  matters for the stall).

``--override NAME='{"model": {...}}'`` adds a variant from JSON model overrides (as in
``loadtest.servers.build_repository``). Results go to ``build/stall/stall.json``; the exit status is 1
when any request was slower than ``--fail-ms`` (if given) or failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from build_tools.errors import ToolkitError
from loadtest import loadgen
from loadtest.common import served_names, spec_sample
from loadtest.hog import cpu_hog
from loadtest.servers import DEFAULT_SPEC, ROOT, affinity, build_repository, split_cpus, triton

logger = logging.getLogger("loadtest.stall")

# Variants name the spec's classifier through this placeholder, replaced by its served name at run time.
CLASSIFIER = "{classifier}"
VARIANTS: dict[str, dict[str, Any]] = {
    "spec": {},
    "queue-policy": {CLASSIFIER: {
        "dynamic_batching": {"max_queue_delay_microseconds": 0, "max_queue_size": 4096},
        "instance_groups": {"ngc": [{"kind": "KIND_GPU", "count": 1}],
                            "embedded": [{"kind": "KIND_CPU", "count": 3}]}}},
    "one-instance-queue-policy": {CLASSIFIER: {
        "dynamic_batching": {"max_queue_delay_microseconds": 0, "max_queue_size": 4096},
        "instance_groups": {"ngc": [{"kind": "KIND_GPU", "count": 1}],
                            "embedded": [{"kind": "KIND_CPU", "count": 1}]}}},
    "one-instance": {CLASSIFIER: {
        "dynamic_batching": {"max_queue_delay_microseconds": 0},
        "instance_groups": {"ngc": [{"kind": "KIND_GPU", "count": 1}],
                            "embedded": [{"kind": "KIND_CPU", "count": 1}]}}},
}


@dataclass
class Point:
    variant: str
    result: loadgen.LoadResult

    def row(self) -> str:
        r = self.result
        lat = r.latency_ms
        return (f"{self.variant:<14} {r.target:<30} c{r.concurrency:<3} {r.throughput_rps:8.0f} "
                f"{lat.get('p50', float('nan')):7.2f} {lat.get('p99', float('nan')):8.2f} "
                f"{lat.get('max', float('nan')):8.1f} {r.slow.get('250', 0):6d} {r.slow.get('400', 0):6d} "
                f"{r.failures:5d} {r.refusals:6d}")


def _out(text: str, stream: object = None) -> None:
    """Progress and results for the person running the script (a CLI's output, not a log)."""
    out = stream or sys.stdout
    out.write(text + "\n")  # type: ignore[attr-defined]
    out.flush()  # type: ignore[attr-defined]


HEADER = (f"{'variant':<14} {'target':<30} {'c':<4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} "
          f"{'>250ms':>6} {'>400ms':>6} {'fail':>5} {'refuse':>6}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.stall", description=__doc__.split("\n")[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--variant", action="append", help=f"one of {sorted(VARIANTS)} (repeatable; default: spec)")
    p.add_argument("--override", action="append", default=[], metavar="NAME=JSON",
                   help="a named variant from JSON model overrides")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--targets", default="classifier,ensemble")
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--hog", type=int, default=1, help="spinning processes per server CPU (0: no hog)")
    p.add_argument("--fail-ms", type=float, default=None,
                   help="exit 1 when any successful request took longer (and on any failure)")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "stall")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="also write stall.md and stall.png (before/after counts) to DIR")
    p.add_argument("--from-json", type=Path, metavar="FILE",
                   help="only render --report from an earlier run's stall.json")
    return p.parse_args(argv)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(args: argparse.Namespace) -> list[Point]:
    classifier = served_names().classifier
    variants = {name: {(classifier if k == CLASSIFIER else k): v for k, v in models.items()}
                for name, models in VARIANTS.items()}
    for item in args.override:
        name, _, raw = item.partition("=")
        try:
            variants[name] = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ToolkitError(f"--override {name}: not JSON ({e})") from e
    chosen = args.variant or ["spec"]
    for name in chosen:
        if name not in variants:
            raise ToolkitError(f"--variant {name!r}: unknown; choose from {sorted(variants)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = args.protocols.split(",")
    targets = args.targets.split(",")
    for t in targets:
        if t not in ("classifier", "ensemble"):
            raise ToolkitError(f"--targets: {t!r} unknown; allowed: classifier, ensemble")
    split = split_cpus()
    sample = spec_sample()
    load0 = _loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    points: list[Point] = []
    total = len(chosen) * len(levels) * len(protocols) * len(targets)
    _out(f"{split.describe()}; hog: {args.hog} per server CPU; {total} points of {args.duration:g} s")
    _out(HEADER)
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="stall-") as tmp:
            repo = build_repository(Path(tmp) / "repo", args.spec, models=variants[name])
            log = args.out / f"triton-{name}.log"
            with triton([repo], log, cpus=split.server if split.pinned else None) as server, \
                    cpu_hog(split.server if split.pinned else None, args.hog):
                time.sleep(1.0)
                for proto in protocols:
                    address = server.http_url if proto == "http" else server.grpc_url
                    make = loadgen.triton_http_target if proto == "http" else loadgen.triton_grpc_target
                    for t in targets:
                        target = make(address, sample, 1, ensemble=(t == "ensemble"))
                        for c in levels:
                            with affinity(split.client if split.pinned else None):
                                result = loadgen.run_load(target, c, args.duration, args.warmup)
                            point = Point(name, result)
                            points.append(point)
                            _out(point.row())
                            if result.first_error:
                                _out(f"    first error: {result.first_error}")
    (args.out / "stall.json").write_text(json.dumps(
        {"split": split.describe(), "hog_per_cpu": args.hog, "duration_s": args.duration,
         "load": f"{load0} / {_loadavg()}", "command": args.command,
         "points": [{"variant": p.variant, **p.result.to_dict()} for p in points]}, indent=1))
    return points


def summary(points: list[Point]) -> str:
    lines = ["requests over 250 ms / 400 ms, failures, per variant:"]
    for name in dict.fromkeys(p.variant for p in points):
        mine = [p.result for p in points if p.variant == name]
        lines.append(f"  {name}: {sum(r.slow.get('250', 0) for r in mine)} / "
                     f"{sum(r.slow.get('400', 0) for r in mine)} of {sum(r.requests for r in mine)} requests, "
                     f"{sum(r.failures for r in mine)} failures, max "
                     f"{max((r.latency_ms.get('max', 0.0) for r in mine), default=0.0):.0f} ms")
    return "\n".join(lines)


def write_report(data: dict[str, Any], out: Path, command: str) -> None:
    """stall.md (a table per variant) and stall.png (requests over 250 ms per point, per variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    command = data.get("command") or command  # the run's own command line, when it recorded one
    points = data["points"]
    variants = list(dict.fromkeys(p["variant"] for p in points))
    labels = list(dict.fromkeys(f"{p['target'].split('/', 1)[1]} {p['protocol']} c{p['concurrency']}"
                                for p in points))
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.55), 4.5))
    width = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        by_label = {f"{p['target'].split('/', 1)[1]} {p['protocol']} c{p['concurrency']}": p
                    for p in points if p["variant"] == v}
        ax.bar([x + i * width for x in range(len(labels))],
               [by_label[lbl]["slow"].get("250", 0) if lbl in by_label else 0 for lbl in labels], width, label=v)
    ax.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("requests over 250 ms")
    ax.set_yscale("symlog")
    ax.set_title(f"Requests over 250 ms per {data['duration_s']:g} s point, "
                 f"CPU hog {data['hog_per_cpu']} per server CPU")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "stall.png", dpi=110)
    plt.close(fig)
    lines = [f"# Stall reproduction\n\nCommand: `{command}`\n\n{data['split']}; CPU hog: "
             f"{data['hog_per_cpu']} spinning process(es) per server CPU; {data['duration_s']:g} s per point.\n"]
    if data.get("load"):
        lines.append(f"Load average at start / end: {data['load']}\n")
    lines.append("`c/req/s` is the mean latency any closed loop of c clients must see at that throughput "
                 "(Little's law): where it nears 250 ms the point is bound by the CPU left to the server, "
                 "not by a stall. A stall shows as requests over 400 ms with a low `c/req/s`.\n")
    lines.append("| variant | target | protocol | c | req/s | c/req/s ms | p50 ms | p99 ms | max ms | >250 ms | "
                 ">400 ms | failures |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in points:
        lat = p["latency_ms"]
        lines.append(f"| {p['variant']} | {p['target'].split('/', 1)[1]} | {p['protocol']} | {p['concurrency']} | "
                     f"{p['throughput_rps']:,.0f} | {1000 * p['concurrency'] / max(p['throughput_rps'], 1e-9):.0f} | "
                     f"{lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} | "
                     f"{lat.get('max', 0):.1f} | {p['slow'].get('250', 0)} | {p['slow'].get('400', 0)} | "
                     f"{p['failures']} |")
    lines.append("\n| variant | requests | over 250 ms | over 400 ms | failures | max ms |\n|---|---|---|---|---|---|")
    for v in variants:
        mine = [p for p in points if p["variant"] == v]
        lines.append(f"| {v} | {sum(p['requests'] for p in mine):,} | {sum(p['slow'].get('250', 0) for p in mine)} "
                     f"| {sum(p['slow'].get('400', 0) for p in mine)} | {sum(p['failures'] for p in mine)} | "
                     f"{max(p['latency_ms'].get('max', 0) for p in mine):.0f} |")
    lines.append("\n![requests over 250 ms](stall.png)\n")
    (out / "stall.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    command = "python -m loadtest.stall " + " ".join(argv if argv is not None else sys.argv[1:])
    args.command = command
    if args.from_json:
        write_report(json.loads(args.from_json.read_text()), args.report or args.from_json.parent, command)
        return 0
    try:
        points = run(args)
    except ToolkitError as e:
        _out(f"loadtest.stall: error: {e}", sys.stderr)
        return 2
    _out(summary(points))
    if args.report:
        write_report(json.loads((args.out / "stall.json").read_text()), args.report, command)
    if args.fail_ms is not None:
        bad = [p.result for p in points
               if p.result.failures or p.result.latency_ms.get("max", 0.0) > args.fail_ms]
        if bad:
            for r in bad:
                _out(f"FAIL {r.target} c{r.concurrency}: max {r.latency_ms.get('max', 0.0):.0f} ms "
                     f"(limit {args.fail_ms:g}), {r.failures} failures; first error: {r.first_error}", sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
