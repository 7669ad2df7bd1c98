"""Accuracy on photo-like captures, per degradation, through the served ensemble (raw image bytes in).

The seeded capture set (`clients/captures.py`) is sent to the ensemble beside the clean images it is
made from (the spec's labelled evaluation set, as PNGs) in the same run. Target: every degradation
within `--max-drop` points of the clean accuracy and the whole set within `--max-overall-drop`; the
command exits 1 when one is missed and names it. Writes a Markdown table, JSON and a PNG bar chart.

    triton-evaluate-captures --http-url 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from build_tools.console import make_parser, positive_int
from build_tools.console import run as run_cli
from build_tools.errors import ClientError, ServerUnreachableError
from build_tools.served import ClassifierNames, load_classifier_names
from clients.captures import DEGRADATIONS, NAMES, make_captures
from clients.datasets import LabelledImages, spec_evaluation_set
from clients.images import bytes_batch, encode_png
from triton_api import PROTOCOLS, Protocol, TritonClient, parse_endpoint

logger = logging.getLogger(__name__)


@dataclass
class ClassResult:
    name: str
    strength: str
    n: int
    accuracy: float
    errors: int


@dataclass
class CaptureEvaluation:
    clean: ClassResult
    classes: list[ClassResult]
    overall: float
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Target:
    """The served ensemble that takes encoded images: its name, input and (probabilities) output."""

    url: str
    protocol: Protocol
    model: str
    input_name: str
    output_name: str

    @classmethod
    def from_names(cls, url: str, protocol: Protocol, names: ClassifierNames) -> Target:
        return cls(url, protocol, names.ensemble, names.ensemble_input, names.ensemble_output)


def classify(target: Target, payloads: list[bytes], batch_size: int, concurrency: int) -> tuple[np.ndarray, int]:
    """Top-1 class of every payload (-1 where its request failed) and how many requests failed."""
    local = threading.local()
    predicted = np.full(len(payloads), -1, dtype=np.int64)
    failed = 0
    lock = threading.Lock()

    clients: list[TritonClient] = []

    def client() -> TritonClient:
        if not hasattr(local, "client"):
            local.client = TritonClient(target.url, target.protocol)
            with lock:
                clients.append(local.client)
        return local.client

    def one(start: int) -> None:
        nonlocal failed
        chunk = payloads[start:start + batch_size]
        try:
            out = client().infer(target.model, {target.input_name: bytes_batch(chunk)}, [target.output_name])
        except ServerUnreachableError:
            raise  # no server: one error for the run, not one warning per batch
        except ClientError as e:
            logger.warning("images %d..%d: %s", start, start + len(chunk) - 1, e)
            with lock:
                failed += 1
            return
        predicted[start:start + len(chunk)] = out[target.output_name].reshape(len(chunk), -1).argmax(axis=1)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(0, len(payloads), batch_size)))
    for c in clients:
        c.close()
    return predicted, failed


def evaluate_captures(
    target: Target,
    names: Sequence[str] = NAMES,
    per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    concurrency: int = 4,
    max_drop: float = 0.05,
    max_overall_drop: float = 0.03,
    holdout: LabelledImages | None = None,
) -> CaptureEvaluation:
    """`holdout`: the clean set the captures are made from (default: the spec's labelled evaluation set)."""
    if holdout is None:
        holdout, _ = spec_evaluation_set(load_classifier_names())
    strengths = {d.name: d.strength for d in DEGRADATIONS}
    clean_png = [encode_png(i) for i in holdout.images]
    predicted, failed = classify(target, clean_png, batch_size, concurrency)
    clean = ClassResult("clean", "held-out images as PNG", len(clean_png),
                        float((predicted == holdout.labels).mean()), failed)
    logger.info("clean: %.4f on %d", clean.accuracy, clean.n)
    captures = make_captures(holdout.images, holdout.labels, names, per_class, seed)
    results, correct, total = [], 0, 0
    for name in names:
        payloads, labels = captures.of(name)
        predicted, failed = classify(target, payloads, batch_size, concurrency)
        hits = int((predicted == labels).sum())
        correct, total = correct + hits, total + len(labels)
        results.append(ClassResult(name, strengths[name], len(labels), hits / len(labels), failed))
        logger.info("%s: %.4f on %d", name, hits / len(labels), len(labels))
    ev = CaptureEvaluation(clean, results, correct / max(total, 1))
    for r in results:
        if r.errors:
            ev.failures.append(f"{r.name}: {r.errors} request(s) failed")
        if r.accuracy < clean.accuracy - max_drop:
            ev.failures.append(
                f"{r.name}: accuracy {r.accuracy:.4f} is more than {max_drop * 100:.0f} points below clean "
                f"{clean.accuracy:.4f}"
            )
    if ev.overall < clean.accuracy - max_overall_drop:
        ev.failures.append(
            f"all captures: accuracy {ev.overall:.4f} is more than {max_overall_drop * 100:.0f} points below "
            f"clean {clean.accuracy:.4f}"
        )
    return ev


def table_lines(ev: CaptureEvaluation) -> list[str]:
    lines = ["| degradation | strength | images | accuracy | vs clean |", "|---|---|---|---|---|"]
    c = ev.clean
    lines.append(f"| clean | {c.strength} | {c.n} | {c.accuracy * 100:.1f}% | – |")
    for r in ev.classes:
        lines.append(
            f"| {r.name} | {r.strength} | {r.n} | {r.accuracy * 100:.1f}% | {(r.accuracy - c.accuracy) * 100:+.1f} |"
        )
    n = sum(r.n for r in ev.classes)
    lines.append(f"| **all captures** | | {n} | **{ev.overall * 100:.1f}%** | {(ev.overall - c.accuracy) * 100:+.1f} |")
    return lines


def write_report(ev: CaptureEvaluation, out_dir: Path, meta: dict[str, object]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "captures.md"
    verdict = "PASS" if ev.ok else "FAIL: " + "; ".join(ev.failures)
    md.write_text("\n".join(["# Accuracy on photo-like captures", "", *table_lines(ev), "", verdict]) + "\n")
    js = out_dir / "captures.json"
    js.write_text(json.dumps({"meta": meta, "clean": asdict(ev.clean), "classes": [asdict(r) for r in ev.classes],
                              "overall": ev.overall, "failures": ev.failures}, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(ev.classes) + 2))
    names = ["clean", *(r.name for r in ev.classes), "all captures"]
    values = [ev.clean.accuracy, *(r.accuracy for r in ev.classes), ev.overall]
    colours = ["tab:green"] + ["tab:blue"] * len(ev.classes) + ["tab:purple"]
    y = np.arange(len(names))
    ax.barh(y, [v * 100 for v in values], color=colours)
    ax.axvline((ev.clean.accuracy - 0.05) * 100, color="tab:red", ls="--", label="clean - 5 points (per class)")
    ax.axvline((ev.clean.accuracy - 0.03) * 100, color="tab:orange", ls=":", label="clean - 3 points (all)")
    for yi, v in zip(y, values):
        ax.text(v * 100 + 0.2, yi, f"{v * 100:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(min(80.0, min(values) * 100 - 2), 100.5)
    ax.set_xlabel("top-1 accuracy through the served ensemble (%)")
    ax.set_title(f"Photo-like captures ({meta.get('per_class')} per class, seed {meta.get('seed')})")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    png = out_dir / "captures.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [md, js, png]


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("triton-evaluate-captures", __doc__.splitlines()[0])
    p.add_argument("--http-url", default="127.0.0.1:8000", help="HOST:PORT of Triton's HTTP endpoint")
    p.add_argument("--grpc-url", default="127.0.0.1:8001", help="HOST:PORT of Triton's gRPC endpoint")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http", help="how to talk to the server")
    p.add_argument("--spec", help="the spec naming the ensemble and its tensors (default: deploy.yaml)")
    p.add_argument("--ensemble-model", help="default: the spec's classification ensemble")
    p.add_argument("--degradation", action="append", choices=NAMES, help="default: all")
    p.add_argument("--per-class", type=int, help="captures per degradation (default: all 500 held-out digits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradations")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per request")
    p.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight")
    p.add_argument("--max-drop", type=float, default=0.05, help="per degradation, below clean accuracy")
    p.add_argument("--max-overall-drop", type=float, default=0.03, help="whole set, below clean accuracy")
    p.add_argument("--report-dir", default="build/evaluation/captures", help="where the reports go")
    return p


def _command(args: argparse.Namespace) -> int:
    url = parse_endpoint(args.http_url if args.protocol == "http" else args.grpc_url, args.protocol,
                         "--http-url" if args.protocol == "http" else "--grpc-url")
    names = load_classifier_names(args.spec)
    target = Target.from_names(url, args.protocol, names)
    if args.ensemble_model:
        target = Target(url, args.protocol, args.ensemble_model, target.input_name, target.output_name)
    ev = evaluate_captures(
        target, args.degradation or NAMES, args.per_class, args.seed,
        args.batch_size, args.concurrency, args.max_drop, args.max_overall_drop, spec_evaluation_set(names)[0],
    )
    meta = {"url": url, "protocol": args.protocol, "model": target.model,
            "per_class": args.per_class or 500, "seed": args.seed}
    write_report(ev, Path(args.report_dir), meta)
    sys.stdout.write("\n".join(table_lines(ev)) + "\n")
    sys.stdout.write(("PASS" if ev.ok else "FAIL: " + "; ".join(ev.failures)) + "\n")
    return 0 if ev.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
