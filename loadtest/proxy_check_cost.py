"""What the front proxy's JSON check costs: requests/s, p99 and nginx CPU per request, with and without it.

Issue 17: Triton 2.51 answers malformed inference JSON with 500, so the front proxy parses each
inference request's JSON in nginx's njs module (build_tools/njs/infer_check.js) and answers the bad
ones 400. One embedded server, and two proxies in front of it built from the same spec, one with the
check and one without (`check_json: false`); the closed-loop load generator measures Triton directly,
through the proxy without the check and through the proxy with it, interleaved (A, B, C, A, B, C, ...)
for several rounds, so each ratio compares runs on the same machine at the same time. Two request
kinds: the classifier's tensor as JSON (every pixel a JSON number: the check parses and walks them all) and
the ensemble's PNG in binary form (the check parses only the small JSON header). Besides throughput,
nginx's CPU per request (its processes, from /proc), which the machine's load distorts far less. The
rounds, ratios, plot and report files are loadtest.ab_cost's, like every A/B cost command's.
Writes bench/proxy_check.{json,md,png}.

    python -m loadtest.proxy_check_cost --rounds 3 --seconds 5 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.proxy import NginxProxy, nginx_binary, njs_module
from build_tools.spec import load_spec
from loadtest import ab_cost, loadgen
from loadtest.common import Sample, served_names, spec_sample
from loadtest.servers import affinity, split_cpus, triton

logger = logging.getLogger(__name__)

# The sides of each comparison; the check is divided by the plain proxy (both through nginx).
SIDES = {"direct": "Triton directly", "proxy": "through the proxy", "proxy+check": "through the proxy, JSON check"}
REFERENCE = "proxy"


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


def comparison(addresses: dict[str, str], nginx_pids: dict[str, int], batch: int
               ) -> dict[str, dict[str, ab_cost.Side]]:
    """Two request kinds, each sent to Triton directly, through the plain proxy and through the checking
    one; the proxies' sides carry nginx's pid, so the rounds read its CPU per request."""
    sample = spec_sample()
    numbers = int(np.prod(sample.image_shape)) * batch
    return {
        f"classifier, JSON tensor (batch {batch}, {numbers} numbers)": {
            side: ab_cost.Side(json_target(addresses[side], sample, batch), nginx_pids.get(side)) for side in SIDES},
        "ensemble, binary PNG (batch 1)": {
            side: ab_cost.Side(loadgen.triton_http_target(addresses[side], sample, ensemble=True),
                               nginx_pids.get(side)) for side in SIDES},
    }


def markdown(summary: dict[str, dict[str, float]], meta: dict[str, Any]) -> str:
    lines = ["# What the front proxy's JSON check costs", "", ab_cost.footer(meta) + " Medians over the rounds.", "",
             "| request | path | req/s | p99 ms | nginx CPU µs/request |", "|---|---|---|---|---|"]
    for kind, s in summary.items():
        for side in SIDES:
            cpu = f"{1000 * s[f'{side}_cpu_ms']:.0f}" if f"{side}_cpu_ms" in s else "-"
            lines.append(f"| {kind} | {side} | {s[f'{side}_rps']:,.0f} | {s[f'{side}_p99_ms']:.2f} | {cpu} |")
    lines += ["", "| request | req/s with the check / without (per round, median) | p99 with / without | "
              "nginx CPU per request with / without (per round, median) |", "|---|---|---|---|"]
    for kind, s in summary.items():
        cpu = f"{s['proxy+check_cpu_ratio']:.2f}x" if "proxy+check_cpu_ratio" in s else "-"
        lines.append(f"| {kind} | {s['proxy+check_ratio']:.1%} | {s['proxy+check_p99_ms']:.2f} / "
                     f"{s['proxy_p99_ms']:.2f} ms | {cpu} |")
    lines += ["", "![requests/s and nginx CPU per request by path, per round](proxy_check.png)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = ab_cost.add_common_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]), concurrency=8)
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
        load_before = ab_cost.loadavg()
        with triton([repo], Path(tmp) / "tritonserver.log", cpus.server if cpus.pinned else None) as server, \
                affinity(cpus.server if cpus.pinned else None), \
                NginxProxy(spec.server.proxy.model_copy(update={"check_json": False}), restricted,
                           server.http_url, server.grpc_url) as plain, \
                NginxProxy(spec.server.proxy.model_copy(update={"check_json": True}), restricted,
                           server.http_url, server.grpc_url) as checked:
            assert checked.checks_json and not plain.checks_json
            assert plain.process is not None and checked.process is not None
            paths = comparison({"direct": server.http_url, "proxy": plain.http_url, "proxy+check": checked.http_url},
                               {"proxy": plain.process.pid, "proxy+check": checked.process.pid}, args.batch)
            rows = ab_cost.run_rounds(paths, args.rounds, args.seconds, args.concurrency,
                                      cpus.client if cpus.pinned else None)
        load_after = ab_cost.loadavg()
    summary = ab_cost.summarize(rows, reference=REFERENCE)
    meta = {"concurrency": args.concurrency, "rounds": args.rounds, "seconds": args.seconds, "batch": args.batch,
            "cpus": cpus.describe(), "load_before": load_before, "load_after": load_after,
            "command": ab_cost.command_line("loadtest.proxy_check_cost", argv)}
    text = markdown(summary, meta)
    ab_cost.write_outputs(args.out, "proxy_check", {"meta": meta, "rows": rows, "summary": summary}, text,
                          lambda png: ab_cost.plot_rounds(rows, png, SIDES, args.concurrency))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
