"""`triton-classify`: send image files to the ensemble and print the top-k labels with scores."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from build_tools.errors import ToolkitError
from build_tools.served import load_classifier_names
from clients.images import bytes_batch, read_files
from triton_api import PROTOCOLS, Classification, TritonClient

logger = logging.getLogger(__name__)


def classify_files(
    client: TritonClient, files: Sequence[Path], model: str, top_k: int = 3
) -> list[list[Classification]]:
    """One request with every file as a batch element; names come from the model's metadata."""
    meta = client.model_metadata(model)
    input_name, output_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise ToolkitError(f"image file(s) not found: {', '.join(missing)}")
    return client.classify(model, {input_name: bytes_batch(read_files(files))}, output_name, top_k=top_k)


def format_results(files: Sequence[Path], results: list[list[Classification]]) -> list[str]:
    lines = []
    for f, top in zip(files, results):
        ranked = ", ".join(f"{c.label} ({c.score:.4f})" for c in top)
        lines.append(f"{Path(f).name}: {ranked}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="triton-classify", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="PNG or JPEG images")
    p.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8000 for HTTP, :8001 for gRPC)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http")
    p.add_argument("--model", help="an ensemble (or model) taking encoded image bytes (default: the spec's "
                   "classification ensemble)")
    p.add_argument("--spec", help="the spec naming the served models (default: deploy.yaml)")
    p.add_argument("--top-k", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    url = args.url or ("127.0.0.1:8000" if args.protocol == "http" else "127.0.0.1:8001")
    try:
        model = args.model or load_classifier_names(args.spec).ensemble
        with TritonClient(url, args.protocol) as client:
            results = classify_files(client, args.files, model, args.top_k)
    except ToolkitError as e:
        sys.stderr.write(f"triton-classify: error: {str(e).splitlines()[0]}\n")
        return 1
    sys.stdout.write("\n".join(format_results(args.files, results)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
