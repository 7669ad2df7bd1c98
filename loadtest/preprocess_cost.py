"""Per-image cost of the ensemble's preprocessing pixel pipeline, today's against a baseline revision.

Runs in-process (no server: the cost measured is the model's own work per image, decode included),
on the same inputs for both: the spec's labelled evaluation set as PNGs (the pass-through path) and the
seeded capture set of every degradation class. The two implementations are timed in alternating
rounds, each round over the whole group, so that load on a shared machine hits both alike; the
figure is the median over rounds and the ratio is taken within each round.

    python -m loadtest.preprocess_cost --baseline-rev 814a404 --rounds 7

The preprocessing model is the first step of the spec's classification ensemble; the current
pipeline is its `pixels.py`, the baseline its `model.py` read from git at that revision (which held
the whole pipeline before it moved to `pixels.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.errors import ToolkitError
from build_tools.served import classifier_names, default_spec_path, load_classifier_names
from build_tools.spec import load_spec
from clients.captures import NAMES, Capture, glyph_from_digit, make_captures, render
from clients.datasets import spec_evaluation_set
from clients.images import encode_png
from loadtest import ab_cost

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS, MIN_SIDE, INK_THRESHOLD = 4096 * 4096, 8, 32

Pipeline = Callable[[bytes], np.ndarray]


def load_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ToolkitError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def preprocess_folder(spec_path: str | None = None) -> Path:
    """The source folder of the first step of the spec's classification ensemble (a Python model)."""
    spec = load_spec(Path(spec_path) if spec_path else default_spec_path())
    first = spec.ensembles[classifier_names(spec).ensemble].steps[0].model
    sources = spec.models[first].version_sources
    folder = spec.resolve(sources[max(sources)])
    if not (folder / "pixels.py").is_file():
        raise ToolkitError(f"models.{first}: {folder} has no pixels.py; expected the preprocessing model's folder")
    return folder


def current_pipeline(folder: Path) -> Pipeline:
    pixels = load_module("preprocess_pixels", folder / "pixels.py")
    return lambda data: pixels.to_mnist(pixels.decode(data, MAX_PIXELS, MIN_SIDE), INK_THRESHOLD)


def baseline_pipeline(rev: str, folder: Path, workdir: Path) -> Pipeline:
    """The pipeline as it was at `rev` (one model.py importing Triton's module, which only the stub has)."""
    rel = (folder / "model.py").resolve().relative_to(ROOT).as_posix()
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:{rel}"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ToolkitError(f"--baseline-rev {rev}: cannot read the baseline from git: {e}") from e
    path = workdir / "baseline_model.py"
    path.write_text(source)
    # Only decode() and to_mnist() are called; the Triton glue needs the stub's module to import.
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    old = load_module("preprocess_baseline", path)
    return lambda data: old.to_mnist(old.decode(data, MAX_PIXELS, MIN_SIDE), INK_THRESHOLD)


def groups(per_class: int, seed: int) -> dict[str, list[bytes]]:
    holdout, _ = spec_evaluation_set(load_classifier_names())
    captures = make_captures(holdout.images, holdout.labels, NAMES, per_class, seed)
    out = {"held-out images as PNG (pass-through)": [encode_png(i) for i in holdout.images]}
    out["captures, all classes"] = captures.payloads
    for name in NAMES:
        out[f"captures: {name}"] = captures.of(name)[0]
    # What a phone sends: a 12-megapixel-class JPEG (here 2000x1500) of a digit on paper.
    rng = np.random.default_rng((seed, 99))
    phone = []
    for i in range(min(per_class, 20)):
        cap = Capture(canvas=(1500, 2000), height=600.0, paper=230.0, noise=4.0, jpeg_quality=90)
        phone.append(render(glyph_from_digit(holdout.images[i], cap.height, 0.0), cap, rng))
    out["phone photo 2000x1500 JPEG"] = phone
    return out


def time_group(fn: Pipeline, payloads: Sequence[bytes]) -> float:
    """CPU seconds per image over the group (failures count: a bad image costs too).

    Process CPU time, not wall time: on a shared machine other processes' load stretches wall time
    but not the work done here.
    """
    started = time.process_time()
    for data in payloads:
        with contextlib.suppress(ValueError):
            fn(data)
    return (time.process_time() - started) / len(payloads)


def measure(pipelines: dict[str, Pipeline], data: dict[str, list[bytes]], rounds: int) -> dict[str, Any]:
    names = list(pipelines)
    results: dict[str, Any] = {}
    for group, payloads in data.items():
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(1, rounds + 1):
            # Alternate which goes first so neither always runs on a warmer cache.
            for name in ab_cost.interleaved(names, r):
                samples[name].append(time_group(pipelines[name], payloads))
        ratios = [c / b for b, c in zip(samples[names[0]], samples[names[1]])]
        results[group] = {
            "images": len(payloads),
            **{f"{n}_us": statistics.median(samples[n]) * 1e6 for n in names},
            "ratio": statistics.median(ratios),
        }
        logger.info("%-36s %s ratio %.2f", group, "  ".join(
            f"{n} {results[group][f'{n}_us']:.0f} us" for n in names), results[group]["ratio"])
    return results


def write_report(results: dict[str, Any], out_dir: Path, meta: dict[str, Any]) -> list[Path]:
    lines = [
        "# Preprocessing cost per image", "",
        f"Baseline `{meta['baseline_rev']}` against the working tree; {meta['rounds']} alternating rounds, "
        f"median CPU time per image; load average {meta['load_start']} at start, {meta['load_end']} at end.", "",
        "| inputs | images | baseline CPU µs | current CPU µs | current / baseline |", "|---|---|---|---|---|",
    ]
    for group, r in results.items():
        lines.append(f"| {group} | {r['images']} | {r['baseline_us']:.0f} | {r['current_us']:.0f} | {r['ratio']:.2f} |")

    def plot(png: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 0.32 * len(results) + 1.5))
        labels = list(results)
        y = np.arange(len(labels))
        ax.barh(y - 0.2, [results[g]["baseline_us"] for g in labels], 0.4, label=f"baseline {meta['baseline_rev']}")
        ax.barh(y + 0.2, [results[g]["current_us"] for g in labels], 0.4, label="current")
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("CPU µs per image (median of alternating rounds)")
        ax.set_title("preprocessing pixel pipeline, per-image cost")
        ax.legend()
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)

    json_path, md, png = ab_cost.write_outputs(out_dir, "preprocess_cost", {"meta": meta, "results": results},
                                               "\n".join(lines), plot)
    return [md, json_path, png]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="preprocess_cost", description=__doc__.splitlines()[0])
    p.add_argument("--spec", help="the spec whose ensemble's first step is measured (default: deploy.yaml)")
    p.add_argument("--baseline-rev", default="814a404", help="git revision of the baseline pipeline")
    p.add_argument("--per-class", type=int, default=40, help="captures per degradation class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default="bench", help="folder for preprocess_cost.{md,json,png}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = preprocess_folder(args.spec)
            pipelines = {
                "baseline": baseline_pipeline(args.baseline_rev, folder, Path(tmp)),
                "current": current_pipeline(folder),
            }
            data = groups(args.per_class, args.seed)
            load_start = ab_cost.loadavg()
            results = measure(pipelines, data, args.rounds)
        meta = {"baseline_rev": args.baseline_rev, "rounds": args.rounds, "per_class": args.per_class,
                "seed": args.seed, "load_start": load_start, "load_end": ab_cost.loadavg()}
        paths = write_report(results, Path(args.out), meta)
    except ToolkitError as e:
        sys.stderr.write(f"preprocess_cost: error: {e}\n")
        return 1
    sys.stdout.write(paths[0].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
