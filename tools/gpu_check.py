"""The GPU check: the TorchScript model served by the embedded Triton on a CUDA device, end to end.

Run by tools/gpu_check.sh (which prepares the Python environment on the GPU host); `--device cpu`
is the same run with the torch model on KIND_CPU, the dry run on a machine without a GPU.

1. builds the embedded repository from deploy.yaml with the classifier's TorchScript variant on
   KIND_GPU (one instance) and the classification ensemble's classifier step substituted by it;
2. starts the server through the project's harness (free ports);
3. the served-parity gate on the spec's labelled evaluation set over HTTP and gRPC, directly and through the
   raw-bytes ensemble, against offline ONNX Runtime on the CPU (0 top-1 disagreements required);
4. perf_analyzer over gRPC: batch sizes x concurrencies on the TorchScript model;
5. scrapes /metrics and checks the nv_gpu_* names that the dashboard and the alert rules use;
6. writes results.json, table.md, perf.csv, perf.png, metrics.txt and the server log into --out
   (at most 8 files: what the GPU host sends back).

    python -m tools.gpu_check --out build/gpu_check --device gpu
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from build_tools.build import build_repositories  # noqa: E402
from build_tools.errors import ToolkitError  # noqa: E402
from build_tools.interfaces import torchscript_model_name  # noqa: E402
from build_tools.served import ClassifierNames, load_classifier_names  # noqa: E402
from build_tools.server import ServerOptions, TritonServer  # noqa: E402
from build_tools.spec import parse_spec  # noqa: E402
from clients.datasets import spec_evaluation_set  # noqa: E402
from clients.evaluate import EvalSettings, evaluate  # noqa: E402
from loadtest.perf import PerfRow, PerfSettings, find_perf_analyzer, plot, save_csv, sweep  # noqa: E402
from triton_api import scrape  # noqa: E402

logger = logging.getLogger("gpu_check")

SPEC = ROOT / "deploy.yaml"
# The metric files that name nv_gpu_* series: every name they use must exist on the GPU host.
METRIC_USERS = ("compose/grafana/dashboards/triton.json", "compose/prometheus/alerts.yml")


def gpu_spec_data(device: str, out: Path) -> dict[str, Any]:
    """deploy.yaml with the classifier's TorchScript variant on the chosen device and the classification
    ensemble running it (both named by the spec: build_tools/served.py)."""
    names = load_classifier_names(SPEC)
    classifier, ensemble = names.classifier, names.ensemble
    data = yaml.safe_load(SPEC.read_text())
    data["flavors"] = {"embedded": {"output": str(out / "repository")}}
    model = data["models"][classifier]
    if "torchscript" not in model.get("formats", []):
        raise SystemExit(f"deploy.yaml: models.{classifier}.formats lacks torchscript")
    kind = "KIND_GPU" if device == "gpu" else "KIND_CPU"
    group: dict[str, Any] = {"kind": kind, "count": 1}
    if device == "gpu":
        group["gpus"] = [0]
    model.setdefault("torchscript", {}).setdefault("instance_groups", {})["embedded"] = [group]
    ts_name = model["torchscript"].get("model_name") or f"{classifier}_torchscript"
    # The ensemble's step names the classifier, or its lifecycle router (issue 12) when it has one.
    lifecycle = model.get("lifecycle")
    router = (lifecycle.get("router") or f"{classifier}_router") if lifecycle is not None else None
    steps = {step["model"] for step in data["ensembles"][ensemble]["steps"]}
    original = router if router in steps else classifier
    data["ensembles"][ensemble].setdefault("substitutions", {})["embedded"] = {original: ts_name}
    return data


def metric_names_used() -> set[str]:
    names: set[str] = set()
    for rel in METRIC_USERS:
        names |= set(re.findall(r"nv_gpu_[a-z_]+", (ROOT / rel).read_text()))
    return names


def metric_names_exported(text: str) -> set[str]:
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line.startswith("nv_gpu_")}


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor()})"
    except ImportError:
        return "unknown"


def summarize(rows: list[PerfRow]) -> dict[str, Any]:
    by = {(r.batch_size, r.concurrency): r for r in rows}
    best = max(rows, key=lambda r: r.inferences_per_s)
    b1 = max((r for r in rows if r.batch_size == 1), key=lambda r: r.inferences_per_s)
    c16 = {str(r.batch_size): round(r.p99_us / 1000, 3) for r in rows if r.concurrency == 16}
    return {
        "batch1_best": {"concurrency": b1.concurrency, "inferences_per_s": round(b1.inferences_per_s, 1),
                        "p99_ms": round(b1.p99_us / 1000, 3)},
        "best": {"batch_size": best.batch_size, "concurrency": best.concurrency,
                 "inferences_per_s": round(best.inferences_per_s, 1), "p99_ms": round(best.p99_us / 1000, 3)},
        "p99_ms_at_concurrency_16_by_batch": c16,
        "grid": {f"b{b}_c{c}": round(r.inferences_per_s, 1) for (b, c), r in sorted(by.items())},
    }


def table(results: dict[str, Any], rows: list[PerfRow]) -> str:
    lines = [f"# GPU check: {results['card']}", "",
             f"TorchScript model `{results['model']}` on {results['device']} (instance kind "
             f"{results['instance_kind']}), embedded Triton {results['server_version']}, torch {results['torch']}.",
             "", f"## Served parity ({results['parity']['n']} samples of the spec's evaluation set, reference: "
             "ONNX Runtime on the CPU)", "",
             "| path | protocol | accuracy | top-1 disagreements | max abs diff | errors |",
             "|---|---|---|---|---|---|"]
    for p in results["parity"]["paths"]:
        lines.append(f"| {p['path']} | {p['protocol']} | {p['accuracy']:.4f} | {p['disagreements']} | "
                     f"{p['max_abs_diff']:.2e} | {p['errors']} |")
    lines += ["", "## perf_analyzer (gRPC, inferences/s; p99 ms)", "",
              "| batch | concurrency | inferences/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.batch_size, r.concurrency)):
        lines.append(f"| {r.batch_size} | {r.concurrency} | {r.inferences_per_s:.0f} | {r.p50_us / 1000:.2f} | "
                     f"{r.p99_us / 1000:.2f} |")
    m = results["metrics"]
    lines += ["", "## /metrics", "", f"nv_gpu_* names used by the dashboard and alert rules: "
              f"{', '.join(sorted(m['used']))}", f"missing from the endpoint: {', '.join(m['missing']) or 'none'}",
              "", f"Wall time of the check: {results['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def run(
    out: Path, work: Path, device: str, batch_sizes: list[int], concurrencies: list[int], measurement_ms: int
) -> int:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    spec = parse_spec(gpu_spec_data(device, work), ROOT)
    names: ClassifierNames = load_classifier_names(SPEC)
    ts_model = torchscript_model_name(names.classifier, spec.models[names.classifier])
    logger.info("[1/5] building the embedded repository (%s on %s)", ts_model, device)
    build_repositories(spec, ["embedded"])
    binary = find_perf_analyzer()
    if binary is None:
        raise SystemExit("perf_analyzer not found: set PERF_ANALYZER (tools/gpu_check.sh does)")

    logger.info("[2/5] starting the embedded Triton server")
    options = ServerOptions([work / "repository"], log_file=out / "tritonserver.log", workdir=work / "server")
    with TritonServer(options) as server:
        logger.info("server up in %.1f s", server.startup_seconds)
        logger.info("[3/5] served-parity gate over HTTP and gRPC, direct and through the ensemble")
        settings = EvalSettings(
            urls={"http": server.http_url, "grpc": server.grpc_url}, onnx=names.onnx,
            classifier_model=ts_model, ensemble_model=names.ensemble, batch_size=32, concurrency=8, progress=False,
        )
        ev = evaluate(settings, spec_evaluation_set(names)[0])
        parity = {
            "ok": ev.ok, "failures": ev.failures, "n": ev.n, "offline_accuracy": ev.offline_accuracy,
            "paths": [{"path": r.name, "protocol": r.protocol, "accuracy": r.accuracy,
                       "disagreements": r.parity_disagreements, "max_abs_diff": r.parity_max_abs_diff,
                       "errors": len(r.errors)} for r in ev.results],
        }
        logger.info("parity: %s", json.dumps(parity["paths"]))

        logger.info("[4/5] perf_analyzer: batch %s x concurrency %s over gRPC", batch_sizes, concurrencies)
        rows = sweep(None, server.grpc_url, models=[ts_model], batch_sizes=batch_sizes,
                     concurrencies=concurrencies, workdir=work / "perf",
                     settings=PerfSettings(measurement_ms=measurement_ms, max_trials=4), progress=True,
                     headers=server.admin_headers)  # statistics are restricted to the harness's admin key

        logger.info("[5/5] scraping /metrics")
        text = scrape(server.metrics_url)
    (out / "metrics.txt").write_text(text)
    used, exported = metric_names_used(), metric_names_exported(text)
    import torch

    results = {
        "card": gpu_name(),
        "device": device,
        "instance_kind": "KIND_GPU" if device == "gpu" else "KIND_CPU",
        "model": ts_model,
        "server_version": spec.triton.server_version,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parity": parity,
        "perf": {"protocol": "grpc", "batch_sizes": batch_sizes, "concurrencies": concurrencies,
                 "measurement_ms": measurement_ms, **summarize(rows)},
        "metrics": {"used": sorted(used), "exported": sorted(exported), "missing": sorted(used - exported)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_csv(rows, out / "perf.csv")
    plot(rows, out / "perf.png", title=f"TorchScript {names.classifier} on {results['card']}: throughput vs p99 (gRPC)")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(table(results, rows))
    logger.info("results in %s: parity %s, best %s, metrics missing %s", out, "ok" if ev.ok else "FAILED",
                results["perf"]["best"], results["metrics"]["missing"] or "none")
    failed = not ev.ok or (device == "gpu" and bool(results["metrics"]["missing"]))
    return 1 if failed else 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gpu_check")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "gpu_work", help="repository, scratch")
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 16, 64, 256])
    parser.add_argument("--concurrencies", type=_ints, default=[1, 4, 16, 64])
    parser.add_argument("--measurement-ms", type=int, default=1500)
    args = parser.parse_args(argv)
    try:
        return run(args.out, args.work, args.device, args.batch_sizes, args.concurrencies, args.measurement_ms)
    except ToolkitError as e:
        logger.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
