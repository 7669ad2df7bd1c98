"""`make demo`: the whole story on the embedded Triton, no GPU and no Docker.

Build the repository from the spec, start the embedded server through the shared harness, classify the
example digits through the raw-bytes ensemble, evaluate the held-out split over HTTP and gRPC through the
classifier and the ensemble against offline ONNX Runtime, print the summary, stop the server.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from build_tools.build import build_repositories
from build_tools.console import make_parser, positive_int
from build_tools.console import run as run_cli
from build_tools.repository import FlavorPlan
from build_tools.served import classifier_names
from build_tools.server import ServerOptions, TritonServer
from build_tools.spec import DeploySpec, FlavorName, load_spec
from clients.classify import classify_files, format_results
from clients.evaluate import EvalSettings, load_dataset, run, summary_lines
from triton_api import TritonClient

logger = logging.getLogger("demo")


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def build(spec: DeploySpec) -> dict[FlavorName, FlavorPlan]:
    """Step 1: the same build as `triton-repo build-repo` (every standard step, plans included)."""
    return build_repositories(spec)


def demo(
    spec_path: Path, report_dir: Path, concurrency: int, batch_size: int, examples_dir: Path | None = None
) -> bool:
    spec = load_spec(spec_path)
    names = classifier_names(spec)
    root = spec.base_dir
    _say(f"1. Building the repositories from {spec_path}")
    plans = build(spec)
    for flavor, plan in plans.items():
        _say(f"   {flavor:<9} {plan.output.relative_to(root) if plan.output.is_relative_to(root) else plan.output}: "
             f"{', '.join(m.name for m in plan.models)}")
    embedded = plans["embedded"].output
    _say("2. Starting the embedded Triton server (python backend, ONNX Runtime on the CPU)")
    options = ServerOptions([embedded], log_file=root / "build" / "demo" / "tritonserver.log",
                            workdir=root / "build" / "demo" / "server")
    with TritonServer(options) as server:
        _say(f"   ready in {server.startup_seconds:.1f} s: HTTP {server.http_url}, gRPC {server.grpc_url}, "
             f"metrics {server.metrics_url}")
        # By convention the example images sit next to the classifier's ONNX file.
        examples = sorted((examples_dir or names.onnx.parent / "examples").glob("*.*"))
        _say(f"3. Classifying {len(examples)} example images through the `{names.ensemble}` ensemble "
             f"(raw PNG/JPEG bytes)")
        with TritonClient(server.http_url) as client:
            for line in format_results(examples, classify_files(client, examples, names.ensemble, top_k=2)):
                _say(f"   {line}")
        data, label = load_dataset(None, None, None, None, names)
        _say(f"4. Evaluating {label}: {len(data)} images, classifier and ensemble, HTTP and gRPC")
        settings = EvalSettings(
            urls={"http": server.http_url, "grpc": server.grpc_url},
            onnx=names.onnx,
            labels=names.labels.read_text().split() if names.labels else [],
            classifier_model=names.classifier,
            ensemble_model=names.ensemble,
            batch_size=batch_size,
            concurrency=concurrency,
        )
        ev = run(settings, data, label, report_dir)
        _say("5. Summary")
        for line in summary_lines(ev):
            _say(f"   {line}")
        _say(f"   reports: {report_dir / 'evaluation.md'} (with confusion-matrix PNGs)")
    _say("6. Server stopped.")
    return ev.ok


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("demo", __doc__.splitlines()[0])
    p.add_argument("--spec", default="deploy.yaml", type=Path, help="the deployment spec")
    p.add_argument("--report-dir", default="build/evaluation", type=Path, help="where the reports go")
    p.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per request")
    p.add_argument("--examples", type=Path,
                   help="folder of images to classify through the ensemble (default: examples/ next to the "
                        "classifier's ONNX file)")

    def command(args: argparse.Namespace) -> int:
        ok = demo(args.spec, args.report_dir, args.concurrency, args.batch_size, args.examples)
        return 0 if ok else 1

    return run_cli(p, command, argv)


if __name__ == "__main__":
    sys.exit(main())
