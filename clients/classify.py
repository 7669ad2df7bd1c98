"""`triton-classify`: send image files to the ensemble and print the top-k labels with scores."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from build_tools.console import make_parser, positive_int, run
from build_tools.errors import ToolkitError, UsageError
from build_tools.served import load_classifier_names
from clients.images import bytes_batch, read_files
from triton_api import DEFAULT_PORTS, PROTOCOLS, Classification, TritonClient, parse_endpoint

logger = logging.getLogger(__name__)


def classify_files(
    client: TritonClient, files: Sequence[Path], model: str, top_k: int = 3
) -> list[list[Classification]]:
    """One request with every file as a batch element; names come from the model's metadata."""
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise ToolkitError(f"image file(s) not found: {', '.join(missing)}; pass PNG or JPEG files")
    meta = client.model_metadata(model)
    input_name, output = meta["inputs"][0]["name"], meta["outputs"][0]
    classes = int(output["shape"][-1]) if output.get("shape") else 0
    if classes > 0 and top_k > classes:
        raise UsageError(
            f"--top-k {top_k} is more than the {classes} classes of {model}'s output {output['name']!r}; "
            f"use 1..{classes}"
        )
    return client.classify(model, {input_name: bytes_batch(read_files(files))}, output["name"], top_k=top_k)


def format_results(files: Sequence[Path], results: list[list[Classification]]) -> list[str]:
    lines = []
    for f, top in zip(files, results):
        ranked = ", ".join(f"{c.label} ({c.score:.4f})" for c in top)
        lines.append(f"{Path(f).name}: {ranked}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("triton-classify", __doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="PNG or JPEG images")
    p.add_argument("--url", default=None,
                   help="HOST:PORT of the server (http:// or grpc:// accepted; default 127.0.0.1:8000 for HTTP, "
                        "127.0.0.1:8001 for gRPC)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http", help="how to talk to the server")
    p.add_argument("--model", help="an ensemble (or model) taking encoded image bytes (default: the spec's "
                   "classification ensemble)")
    p.add_argument("--spec", help="the spec naming the served models (default: deploy.yaml)")
    p.add_argument("--top-k", type=positive_int, default=3, help="labels to print per image")
    return p


def _command(args: argparse.Namespace) -> int:
    url = parse_endpoint(args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}", args.protocol)
    model = args.model or load_classifier_names(args.spec).ensemble
    with TritonClient(url, args.protocol) as client:
        results = classify_files(client, args.files, model, args.top_k)
    sys.stdout.write("\n".join(format_results(args.files, results)) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
