"""What the front proxy's JSON check costs: requests/s, p99 and nginx CPU per request, with and without it.

Issue 17: Triton 2.51 answers malformed inference JSON with 500, so the front proxy parses each
inference request's JSON in nginx's njs module (build_tools/njs/infer_check.js) and answers the bad
ones 400. One embedded server, and two proxies in front of it built from the same spec, one with the
check and one without (`check_json: false`); the closed-loop load generator measures Triton directly,
through the proxy without the check and through the proxy with it, interleaved (A, B, C, A, B, C, ...)
for several rounds, so each ratio compares runs on the same machine at the same time. Two request
kinds: the classifier's tensor as JSON (every pixel a JSON number: the check parses and walks them all) and
the ensemble's PNG in binary form (the check parses only the small JSON header). Besides throughput,
nginx's CPU per request (its processes, from /proc), which the machine's load distorts far less.
Writes bench/proxy_check.{json,md,png}.

    python -m loadtest.proxy_check_cost --rounds 3 --seconds 5 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.proxy import NginxProxy, nginx_binary, njs_module
from build_tools.spec import load_spec
from loadtest import loadgen, procstat
from loadtest.bench import loadavg
from loadtest.common import Sample, served_names, spec_sample
from loadtest.errors import LoadTestError
from loadtest.servers import DEFAULT_SPEC, affinity, split_cpus, triton

logger = logging.getLogger(__name__)

PATHS = ("direct", "proxy", "proxy+check")


def json_target(address: str, sample: Sample, batch_size: int) -> loadgen.Target:
    """The classifier's input as JSON numbers (the form the check parses in full); outputs in binary."""
    n = served_names()
    path = f"/v2/models/{n.classifier}/infer"
    requests, labels = [], []
    for start in range(0, max(64 * batch_size, len(sample)), batch_size):
        images, lab = sample.tensor_batch(start % len(sample), batch_size)
        body = json.dumps({
            "inputs": [{"name": n.classifier_input, "shape": list(images.shape), "datatype": "FP32",
                        "data": [round(float(v), 4) for v in images.ravel()]}],
            "outputs": [{"name": n.classifier_output, "parameters": {"binary_data": True}}],
        }, separators=(",", ":")).encode()
        requests.append(loadgen._http_request(address, path, body, "application/json"))
        labels.append(lab)
    return loadgen.Target(f"json/{n.classifier}", "http", address, requests, labels, batch_size,
                          loadgen.decode_triton_http)


def measure(addresses: dict[str, str], nginx_pids: dict[str, int], rounds: int, seconds: float,
            concurrency: int, batch: int, client_cpus: frozenset[int] | None) -> list[dict[str, Any]]:
    sample = spec_sample()
    numbers = int(np.prod(sample.image_shape)) * batch
    kinds: dict[str, dict[str, loadgen.Target]] = {
        f"classifier, JSON tensor (batch {batch}, {numbers} numbers)":
            {p: json_target(a, sample, batch) for p, a in addresses.items()},
        "ensemble, binary PNG (batch 1)":
            {p: loadgen.triton_http_target(a, sample, ensemble=True) for p, a in addresses.items()},
    }
    rows = []
    for r in range(1, rounds + 1):
        for kind, targets in kinds.items():
            for path, target in targets.items():
                before = procstat.tree_cpu(nginx_pids[path]) if path in nginx_pids else {}
                with affinity(client_cpus):
                    res = loadgen.run_load(target, concurrency, duration_s=seconds, warmup_s=1.0)
                if res.failures:
                    raise LoadTestError(f"{kind} {path}: {res.failures} failed requests ({res.first_error})")
                row = {"round": r, "kind": kind, "path": path, "rps": res.throughput_rps,
                       "p50_ms": res.latency_ms["p50"], "p99_ms": res.latency_ms["p99"],
                       "answered": res.answered, "client_cpu": res.client_cpu}
                if path in nginx_pids and res.answered:
                    spent = sum(procstat.cpu_delta(before, procstat.tree_cpu(nginx_pids[path])).values())
                    row["nginx_cpu_us"] = 1e6 * spent / res.answered
                rows.append(row)
                sys.stderr.write(f"round {r} {kind} {path}: {res.throughput_rps:,.0f} req/s, "
                                 f"p99 {res.latency_ms['p99']:.1f} ms\n")
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        s: dict[str, Any] = {}
        for path in PATHS:
            mine = [r for r in rows if r["kind"] == kind and r["path"] == path]
            s[path] = {k: statistics.median(r[k] for r in mine) for k in ("rps", "p50_ms", "p99_ms")}
            if all("nginx_cpu_us" in r for r in mine) and mine:
                s[path]["nginx_cpu_us"] = statistics.median(r["nginx_cpu_us"] for r in mine)
        # Per round, the check's throughput over the plain proxy's (both measured back to back).
        ratios = []
        for r in sorted({r["round"] for r in rows}):
            pair = {x["path"]: x for x in rows if x["kind"] == kind and x["round"] == r}
            ratios.append(pair["proxy+check"]["rps"] / pair["proxy"]["rps"])
        s["check_over_proxy_rps"] = statistics.median(ratios)
        out[kind] = s
    return out


def plot(rows: list[dict[str, Any]], out: Path, concurrency: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    panels = [("rps", "requests/s"), ("p99_ms", "p99 ms"), ("nginx_cpu_us", "nginx CPU µs per request")]
    fig, axes = plt.subplots(len(panels), len(kinds), figsize=(6 * len(kinds), 10), squeeze=False)
    for row, (key, unit) in zip(axes, panels):
        for ax, kind in zip(row, kinds):
            for path, marker, color in zip(PATHS, ("o-", "s-", "^-"), ("C0", "C1", "C2")):
                mine = [r for r in rows if r["kind"] == kind and r["path"] == path and key in r]
                if mine:
                    ax.plot([r["round"] for r in mine], [r[key] for r in mine], marker, color=color, label=path)
            ax.set_title(f"{kind}\nconcurrency {concurrency}", fontsize=9)
            ax.set_xlabel("round (interleaved)")
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def markdown(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# What the front proxy's JSON check costs", "",
             f"`python -m loadtest.proxy_check_cost --rounds {meta['rounds']} --seconds {meta['seconds']:g} "
             f"--concurrency {meta['concurrency']}`: concurrency {meta['concurrency']}, {meta['rounds']} interleaved "
             f"rounds of {meta['seconds']:g} s per path, HTTP; {meta['cpus']}; load average {meta['load_before']} / "
             f"{meta['load_after']}. Medians over the rounds.", "",
             "| request | path | req/s | p50 ms | p99 ms | nginx CPU µs/request |", "|---|---|---|---|---|---|"]
    for kind, s in summary.items():
        for path in PATHS:
            v = s[path]
            cpu = f"{v['nginx_cpu_us']:.0f}" if "nginx_cpu_us" in v else "-"
            lines.append(f"| {kind} | {path} | {v['rps']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {cpu} |")
    lines += ["", "| request | with the check / without (req/s, per round, median) | p99 with / without | "
              "nginx CPU added per request |", "|---|---|---|---|"]
    for kind, s in summary.items():
        added = (f"{s['proxy+check']['nginx_cpu_us'] - s['proxy']['nginx_cpu_us']:+.0f} µs"
                 if "nginx_cpu_us" in s["proxy"] and "nginx_cpu_us" in s["proxy+check"] else "-")
        lines.append(f"| {kind} | {s['check_over_proxy_rps']:.1%} | {s['proxy+check']['p99_ms']:.2f} / "
                     f"{s['proxy']['p99_ms']:.2f} ms | {added} |")
    lines += ["", "![requests/s, p99 and nginx CPU per request by path](proxy_check.png)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--batch", type=int, default=1, help="images per JSON request")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if nginx_binary() is None or njs_module() is None:
        raise SystemExit("proxy_check_cost: error: needs nginx and its njs module (Debian packages nginx, "
                         "libnginx-mod-http-js)")
    spec = load_spec(args.spec)
    repo = spec.resolve(spec.flavors["embedded"].output)
    if not repo.is_dir():
        raise SystemExit(f"proxy_check_cost: error: {repo} does not exist; run `make build-repo` first")
    cpus = split_cpus()
    restricted = list(spec.server.admin_api.restricted)
    with tempfile.TemporaryDirectory(prefix="proxy-check.") as tmp:
        load_before = loadavg()
        with triton([repo], Path(tmp) / "tritonserver.log", cpus.server if cpus.pinned else None) as server, \
                affinity(cpus.server if cpus.pinned else None), \
                NginxProxy(spec.server.proxy.model_copy(update={"check_json": False}), restricted,
                           server.http_url, server.grpc_url) as plain, \
                NginxProxy(spec.server.proxy.model_copy(update={"check_json": True}), restricted,
                           server.http_url, server.grpc_url) as checked:
            assert checked.checks_json and not plain.checks_json
            assert plain.process is not None and checked.process is not None
            rows = measure({"direct": server.http_url, "proxy": plain.http_url, "proxy+check": checked.http_url},
                           {"proxy": plain.process.pid, "proxy+check": checked.process.pid}, args.rounds,
                           args.seconds, args.concurrency, args.batch, cpus.client if cpus.pinned else None)
        load_after = loadavg()
    summary = summarize(rows)
    meta = {"concurrency": args.concurrency, "rounds": args.rounds, "seconds": args.seconds, "batch": args.batch,
            "cpus": cpus.describe(), "load_before": load_before, "load_after": load_after}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy_check.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2))
    plot(rows, args.out / "proxy_check.png", args.concurrency)
    text = markdown(summary, meta)
    (args.out / "proxy_check.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
