"""Served-model evaluation: the live endpoint must give the same predictions as offline ONNX Runtime.

A labelled set goes through two paths — the classifier (raw tensors) and the ensemble (encoded PNG
bytes) — over HTTP and gRPC, concurrently (asyncio, configurable concurrency and batch size). Every
served probability vector is compared with ONNX Runtime on the same ONNX file: the run fails when any
top-1 prediction differs, when probabilities drift beyond a tolerance, when any request fails, or when
accuracy is below the threshold. Tensor names and shapes come from the server's model metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from build_tools.console import make_parser, positive_int
from build_tools.console import run as run_cli
from build_tools.errors import ClientError, ToolkitError
from build_tools.served import ClassifierNames, load_classifier_names
from clients.datasets import DATASETS, LabelledImages, load_idx, load_image_folder, load_named, spec_evaluation_set
from clients.gate import MIN_ACCURACY, PARITY_ATOL, compare, gate_failures
from clients.images import bytes_batch, encode_png
from clients.report import (
    PathResult,
    confusion_matrix,
    latency_summary,
    per_class_scores,
    write_reports,
)
from triton_api import PROTOCOLS, AsyncTritonClient, Protocol, parse_endpoint

logger = logging.getLogger(__name__)

PATHS = ("classifier", "ensemble")


@dataclass
class EvalSettings:
    urls: dict[str, str]  # protocol -> host:port
    onnx: Path
    # Served model names: build_tools.served.classifier_names gives them for a spec.
    classifier_model: str
    ensemble_model: str
    model_version: str = ""
    paths: Sequence[str] = PATHS
    protocols: Sequence[Protocol] = PROTOCOLS
    batch_size: int = 16
    concurrency: int = 8
    min_accuracy: float = MIN_ACCURACY
    parity_atol: float = PARITY_ATOL
    labels: list[str] = field(default_factory=list)
    progress: bool = True


@dataclass
class Evaluation:
    results: list[PathResult]
    offline_accuracy: float
    n: int
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def load_dataset(
    name: str | None, idx_dir: str | None, folder: str | None, limit: int | None, names: ClassifierNames
) -> tuple[LabelledImages, str]:
    """The set to evaluate and its description: IDX files, an image folder or a named set when asked,
    else the labelled set the spec names for the classifier (``models.<classifier>.evaluation``)."""
    if idx_dir:
        data, label = load_idx(idx_dir, "test"), f"IDX test set in {idx_dir}"
    elif folder:
        data, label = load_image_folder(folder), f"image folder {folder}"
    elif name is not None:
        data, label = load_named(name)
    else:
        data, label = spec_evaluation_set(names)
    if limit:
        data = data.subset(np.arange(min(limit, len(data))))
    return data, label


def reference_probabilities(onnx_path: Path, images: np.ndarray) -> tuple[np.ndarray, str, list[int]]:
    """Offline ONNX Runtime on the same file the server serves: the ground truth for parity."""
    if not onnx_path.is_file():
        raise ToolkitError(f"--onnx {onnx_path}: file not found")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dims = [d if isinstance(d, int) else -1 for d in inp.shape]
    tensor = images.astype(np.float32).reshape([-1, *dims[1:]])
    probs = np.concatenate([session.run(None, {inp.name: tensor[i:i + 256]})[0] for i in range(0, len(tensor), 256)])
    return probs, inp.name, dims


async def _run_requests(
    client: AsyncTritonClient,
    model: str,
    version: str,
    input_name: str,
    output_name: str,
    requests: list[tuple[int, np.ndarray]],
    concurrency: int,
    total: int,
    desc: str,
    progress: bool,
) -> tuple[dict[int, np.ndarray], list[float], list[str], float]:
    semaphore = asyncio.Semaphore(concurrency)
    outputs: dict[int, np.ndarray] = {}
    latencies: list[float] = []
    errors: list[str] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=True, mininterval=0.5)

    async def one(start: int, batch: np.ndarray) -> None:
        async with semaphore:
            t0 = time.perf_counter()
            try:
                result = await client.infer(model, {input_name: batch}, [output_name], version)
            except ClientError as e:
                errors.append(f"samples {start}..{start + len(batch) - 1}: {e}")
            else:
                latencies.append(time.perf_counter() - t0)
                outputs[start] = result[output_name]
            bar.update(len(batch))

    started = time.perf_counter()
    await asyncio.gather(*(one(s, b) for s, b in requests))
    elapsed = time.perf_counter() - started
    bar.close()
    return outputs, latencies, errors, elapsed


async def _evaluate_path(
    settings: EvalSettings, protocol: Protocol, path: str, data: LabelledImages, reference: np.ndarray, dims: list[int]
) -> PathResult:
    model = settings.classifier_model if path == "classifier" else settings.ensemble_model
    async with AsyncTritonClient(settings.urls[protocol], protocol) as client:
        meta = await client.model_metadata(model, settings.model_version)
        input_name, output_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
        n = len(data)
        bs = settings.batch_size
        if path == "classifier":
            tensor = data.images.astype(np.float32).reshape([-1, *dims[1:]])
            requests = [(s, tensor[s:s + bs]) for s in range(0, n, bs)]
        else:
            encoded = [encode_png(img) for img in data.images]
            requests = [(s, bytes_batch(encoded[s:s + bs])) for s in range(0, n, bs)]
        outputs, latencies, errors, elapsed = await _run_requests(
            client, model, settings.model_version, input_name, output_name, requests,
            settings.concurrency, n, f"{path}/{protocol}", settings.progress,
        )
    cmp = compare(outputs, reference, data.labels)
    classes = reference.shape[1]
    names = settings.labels or [str(i) for i in range(classes)]
    cm = confusion_matrix(data.labels[cmp.answered], cmp.predicted[cmp.answered], classes)
    return PathResult(
        name=path,
        protocol=protocol,
        model=model + (f" v{settings.model_version}" if settings.model_version else ""),
        n=n,
        accuracy=cmp.accuracy,
        per_class=per_class_scores(cm, names),
        confusion=cm.tolist(),
        parity_disagreements=cmp.disagreements,
        parity_max_abs_diff=cmp.max_abs_diff,
        latency_ms=latency_summary(latencies),
        throughput_per_s=float(cmp.answered.sum() / elapsed) if elapsed else 0.0,
        requests=len(requests),
        batch_size=bs,
        concurrency=settings.concurrency,
        errors=errors,
    )


def evaluate(settings: EvalSettings, data: LabelledImages) -> Evaluation:
    """Run every path over every protocol; return results and the reasons the gate fails (if any)."""
    reference, _, dims = reference_probabilities(settings.onnx, data.images)
    offline_accuracy = float((reference.argmax(axis=1) == data.labels).mean())
    results = []
    for path in settings.paths:
        if path not in PATHS:
            raise ToolkitError(f"path {path!r} is not known; expected one of {PATHS}")
        for protocol in settings.protocols:
            if protocol not in settings.urls:
                raise ToolkitError(f"no URL given for {protocol}")
            result = asyncio.run(_evaluate_path(settings, protocol, path, data, reference, dims))
            logger.info(
                "%s over %s: accuracy %.4f, %d disagreements, max abs diff %.2e, p50 %.2f ms, p99 %.2f ms, %.0f img/s",
                path, protocol, result.accuracy, result.parity_disagreements, result.parity_max_abs_diff,
                result.latency_ms.get("p50", 0), result.latency_ms.get("p99", 0), result.throughput_per_s,
            )
            results.append(result)
    failures = gate_failures(results, settings.min_accuracy, settings.parity_atol)
    return Evaluation(results, offline_accuracy, len(data), failures)


def summary_lines(ev: Evaluation) -> list[str]:
    lines = [f"offline ONNX Runtime accuracy: {ev.offline_accuracy:.4f} on {ev.n} samples"]
    header = (
        f"{'path':<11}{'protocol':<9}{'accuracy':>9}{'disagree':>9}{'max|diff|':>11}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'img/s':>8}"
    )
    lines.append(header)
    for r in ev.results:
        lines.append(
            f"{r.name:<11}{r.protocol:<9}{r.accuracy:>9.4f}{r.parity_disagreements:>9d}{r.parity_max_abs_diff:>11.1e}"
            f"{r.latency_ms.get('p50', 0):>8.2f}{r.latency_ms.get('p99', 0):>8.2f}{r.throughput_per_s:>8.0f}"
        )
    lines.append("PASS: served predictions equal offline ONNX Runtime" if ev.ok else "FAIL: " + "; ".join(ev.failures))
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("triton-evaluate", __doc__.splitlines()[0])
    p.add_argument("--http-url", default="127.0.0.1:8000", help="HOST:PORT of Triton's HTTP endpoint")
    p.add_argument("--grpc-url", default="127.0.0.1:8001", help="HOST:PORT of Triton's gRPC endpoint")
    p.add_argument("--protocol", action="append", choices=PROTOCOLS, help="repeatable; default: both")
    p.add_argument("--path", action="append", choices=PATHS, help="repeatable; default: both")
    p.add_argument("--spec", help="the spec naming the models, ONNX file and labels (default: deploy.yaml)")
    p.add_argument("--onnx", help="the ONNX file the server serves (default: the spec's classifier)")
    p.add_argument("--labels", help="class names, one per line (default: the spec's labels file)")
    p.add_argument("--classifier-model", help="model taking raw tensors (default: the spec's classifier)")
    p.add_argument("--ensemble-model", help="model taking encoded images (default: the spec's classification ensemble)")
    p.add_argument("--model-version", default="", help="served version to evaluate (default: latest)")
    p.add_argument("--dataset", choices=sorted(DATASETS),
                   help="a named labelled set (default: the spec's models.<classifier>.evaluation)")
    p.add_argument("--idx-dir", help="folder with IDX files (t10k-images-idx3-ubyte, ...)")
    p.add_argument("--image-folder", help="folder with one sub-folder of images per label")
    p.add_argument("--limit", type=positive_int, help="evaluate the first N samples only")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per request")
    p.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight")
    p.add_argument("--min-accuracy", type=float, default=MIN_ACCURACY, help="fail below this accuracy on every path")
    p.add_argument("--parity-atol", type=float, default=PARITY_ATOL,
                   help="fail when a probability differs more from offline ONNX Runtime")
    p.add_argument("--report-dir", default="build/evaluation", help="where the JSON/Markdown/PNG reports go")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    names = load_classifier_names(args.spec)
    labels_path = Path(args.labels) if args.labels else names.labels
    labels = labels_path.read_text().split() if labels_path and labels_path.is_file() else []
    return EvalSettings(
        urls={
            "http": parse_endpoint(args.http_url, "http", "--http-url"),
            "grpc": parse_endpoint(args.grpc_url, "grpc", "--grpc-url"),
        },
        onnx=Path(args.onnx) if args.onnx else names.onnx,
        classifier_model=args.classifier_model or names.classifier,
        ensemble_model=args.ensemble_model or names.ensemble,
        model_version=args.model_version,
        paths=args.path or PATHS,
        protocols=args.protocol or PROTOCOLS,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        min_accuracy=args.min_accuracy,
        parity_atol=args.parity_atol,
        labels=labels,
        progress=not args.no_progress,
    )


def run(settings: EvalSettings, data: LabelledImages, dataset_label: str, report_dir: Path) -> Evaluation:
    ev = evaluate(settings, data)
    meta: dict[str, Any] = {
        "dataset": dataset_label,
        "n": ev.n,
        "reference": str(settings.onnx),
        "offline_accuracy": ev.offline_accuracy,
        "url_http": settings.urls.get("http"),
        "url_grpc": settings.urls.get("grpc"),
        "failures": ev.failures,
    }
    names = settings.labels or [str(i) for i in range(len(ev.results[0].confusion))] if ev.results else []
    paths = write_reports(ev.results, meta, report_dir, names)
    logger.info("reports: %s", ", ".join(str(p) for p in paths.values() if p.suffix in (".json", ".md")))
    return ev


def _command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not settings.onnx.is_file():
        raise ToolkitError(f"--onnx {settings.onnx}: file not found; pass the ONNX file the server serves")
    data, label = load_dataset(args.dataset, args.idx_dir, args.image_folder, args.limit,
                               load_classifier_names(args.spec))
    ev = run(settings, data, label, Path(args.report_dir))
    sys.stdout.write("\n".join(summary_lines(ev)) + "\n")
    sys.stdout.write(f"reports: {Path(args.report_dir) / 'evaluation.md'}\n")
    return 0 if ev.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
