"""Issue 10's reporter's method, re-run: `wrk` against the embedded server, before and after the stall fix.

The report was made with `wrk` (closed loop, one thread, 8 s per run) at 1, 4, 16 and 64 connections,
two passes: the classifier with a JSON body and the spec's ensemble with one PNG through Triton's
binary-data extension (`Inference-Header-Content-Length`). This runs the same, on a server built from
the spec (`spec`, the fix) and from the variants of `loadtest.stall` (`queue-policy`: the classifier as
it was before the fix), with the same CPU hog as `loadtest.stall` beside the server, and reports p50,
p99, max and the requests over 250 ms (from wrk's latency histogram) per run. Needs `wrk` on PATH
(Debian package `wrk`).

    python -m loadtest.wrk --variant queue-policy --variant spec
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.errors import ToolkitError
from loadtest import loadgen
from loadtest.bench import loadavg
from loadtest.common import served_names, spec_sample
from loadtest.hog import cpu_hog
from loadtest.servers import DEFAULT_SPEC, affinity, build_repository, split_cpus, triton
from loadtest.stall import CLASSIFIER, VARIANTS

logger = logging.getLogger(__name__)

SLOW_MS = 250.0
# wrk's Lua: the request body from a file (binary-safe), and a summary line wrk's own report lacks:
# the requests over the threshold, found by bisecting the latency histogram's percentiles.
SCRIPT = r"""
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE")
local header_len = os.getenv("WRK_HEADER_LEN")
if header_len ~= nil and header_len ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_len
end

done = function(summary, latency, requests)
  local slow_us = tonumber(os.getenv("WRK_SLOW_US"))
  local slow = 0
  if latency.max > slow_us then
    local lo, hi = 0.0, 100.0
    for _ = 1, 50 do
      local mid = (lo + hi) / 2
      if latency:percentile(mid) > slow_us then hi = mid else lo = mid end
    end
    slow = math.max(1, math.floor((100 - hi) / 100 * summary.requests + 0.5))
  end
  local e = summary.errors
  io.write(string.format("WRK_RESULT %d %d %d %d %d %d %d\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99),
    latency.max, slow, summary.duration))
end
"""


@dataclass(frozen=True)
class Run:
    variant: str
    target: str
    connections: int
    run: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    over_250ms: int
    rps: float


def bodies(folder: Path) -> dict[str, tuple[Path, str, str]]:
    """Request bodies as the report sent them: (file, content type, binary header length or '')."""
    names = served_names()
    sample = spec_sample()
    image = sample.images[0:1]
    classifier = {"inputs": [{"name": names.classifier_input, "shape": list(image.shape), "datatype": "FP32",
                              "data": image.reshape(-1).tolist()}],
                  "outputs": [{"name": names.classifier_output}]}
    (folder / "classifier.json").write_text(json.dumps(classifier))
    body, json_len = loadgen._triton_body(names.ensemble_input, names.ensemble_output, "BYTES", [1, 1],
                                          loadgen._serialize_bytes([sample.pngs[0]]))
    (folder / "ensemble.bin").write_bytes(body)
    return {"classifier": (folder / "classifier.json", "application/json", ""),
            "ensemble": (folder / "ensemble.bin", "application/octet-stream", str(json_len))}


def run_wrk(url: str, body: tuple[Path, str, str], connections: int, seconds: float, script: Path) -> list[int]:
    env = {**os.environ, "WRK_BODY": str(body[0]), "WRK_CONTENT_TYPE": body[1], "WRK_HEADER_LEN": body[2],
           "WRK_SLOW_US": str(int(SLOW_MS * 1000))}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            return [int(v) for v in line.split()[1:]]
    raise ToolkitError(f"wrk gave no result (exit {out.returncode}): {out.stderr.strip() or out.stdout[-300:]}")


def measure(args: argparse.Namespace) -> list[Run]:
    names = served_names()
    split = split_cpus()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        folder = Path(tmp)
        script = folder / "report.lua"
        script.write_text(SCRIPT)
        request_bodies = bodies(folder)
        models = {"classifier": names.classifier, "ensemble": names.ensemble}
        for variant in args.variant:
            overrides = {(names.classifier if k == CLASSIFIER else k): v for k, v in VARIANTS[variant].items()}
            repo = build_repository(folder / f"repo-{variant}", args.spec, models=overrides)
            server_cpus = split.server if split.pinned else None
            with triton([repo], folder / f"triton-{variant}.log", cpus=server_cpus) as server, \
                    cpu_hog(server_cpus, args.hog):
                time.sleep(1.0)
                for n in range(1, args.passes + 1):
                    for target in args.targets.split(","):
                        url = f"http://{server.http_url}/v2/models/{models[target]}/infer"
                        for c in [int(v) for v in args.connections.split(",")]:
                            with affinity(split.client if split.pinned else None):
                                req, err, p50, p99, mx, slow, dur = run_wrk(url, request_bodies[target], c,
                                                                            args.seconds, script)
                            run = Run(variant, target, c, n, req, err, p50 / 1000, p99 / 1000, mx / 1000, slow,
                                      req / (dur / 1e6) if dur else 0.0)
                            runs.append(run)
                            sys.stderr.write(f"{variant:13s} {target:10s} c{c:<3d} pass {n}: p50 {run.p50_ms:7.1f} "
                                             f"p99 {run.p99_ms:7.1f} max {run.max_ms:7.1f} ms, "
                                             f"{slow} over {SLOW_MS:g} ms, {err} errors\n")
    return runs


def markdown(runs: list[Run], meta: dict[str, Any]) -> str:
    lines = ["# wrk: the reporter's method (issue 10), before and after the stall fix", "",
             f"`{meta['command']}`", "",
             f"wrk 1 thread, {meta['seconds']:g} s per run, {meta['passes']} passes; {meta['cpus']}; CPU hog "
             f"{meta['hog']} per server CPU; load average {meta['load_before']} / {meta['load_after']}. "
             "`queue-policy` is the classifier as configured before the fix, `spec` the committed spec.", "",
             "| variant | target | connections | pass | req/s | p50 ms | p99 ms | max ms | over 250 ms | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.variant} | {r.target} | {r.connections} | {r.run} | {r.rps:,.0f} | {r.p50_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {r.max_ms:.1f} | {r.over_250ms} | {r.errors} |")
    lines += ["", "| variant | runs | requests | over 250 ms | worst max ms | errors |", "|---|---|---|---|---|---|"]
    for v in dict.fromkeys(r.variant for r in runs):
        mine = [r for r in runs if r.variant == v]
        lines.append(f"| {v} | {len(mine)} | {sum(r.requests for r in mine):,} | {sum(r.over_250ms for r in mine)} | "
                     f"{max(r.max_ms for r in mine):.1f} | {sum(r.errors for r in mine)} |")
    lines += ["", "![max and p99 latency per run](wrk.png)", ""]
    return "\n".join(lines)


def plot(runs: list[Run], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r.target for r in runs))
    variants = list(dict.fromkeys(r.variant for r in runs))
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for i, v in enumerate(variants):
            mine = [r for r in runs if r.target == target and r.variant == v]
            x = np.arange(len(mine)) + i * 0.4
            ax.bar(x, [r.max_ms for r in mine], 0.4, label=f"{v}: max", alpha=0.5)
            ax.plot(x, [r.p99_ms for r in mine], "o", label=f"{v}: p99")
        labels = [f"c{r.connections}/{r.run}" for r in runs if r.target == target and r.variant == variants[0]]
        ax.set_xticks(np.arange(len(labels)) + 0.2 * (len(variants) - 1))
        ax.set_xticklabels(labels, rotation=45)
        ax.axhline(SLOW_MS, color="red", linestyle="--", linewidth=1)
        ax.set_title(f"wrk, {target} (connections/pass)")
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--variant", action="append", choices=sorted(["spec", *VARIANTS]),
                   help="repeatable; default: queue-policy then spec")
    p.add_argument("--targets", default="classifier,ensemble")
    p.add_argument("--connections", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--hog", type=int, default=1, help="spinning processes per server CPU (0: none)")
    p.add_argument("--out", type=Path, default=Path("bench/wrk"))
    args = p.parse_args(argv)
    args.variant = args.variant or ["queue-policy", "spec"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if shutil.which("wrk") is None:
            raise ToolkitError("wrk is not installed; install the Debian package `wrk` (apt-get install -y wrk)")
        load_before = loadavg()
        runs = measure(args)
    except ToolkitError as e:
        sys.stderr.write(f"loadtest.wrk: error: {e}\n")
        return 1
    meta = {"command": "python -m loadtest.wrk " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seconds": args.seconds, "passes": args.passes, "hog": args.hog, "cpus": split_cpus().describe(),
            "load_before": load_before, "load_after": loadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wrk.json").write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1))
    plot(runs, args.out / "wrk.png")
    text = markdown(runs, meta)
    (args.out / "wrk.md").write_text(text)
    sys.stdout.write(text)
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
