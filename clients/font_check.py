"""Is the font class's gap preprocessing's or the model's? Offline, on the evaluation's own font captures.

The 500 font captures of `triton-evaluate-captures` (seed 0) are classified by the served model's
ONNX file three ways: through the served pixel pipeline (`pixels.py`), and "ideally": the glyph's
own ink (known exactly, no paper, no rendering) cut to its box and laid out as MNIST was made, plain
and with strokes thickened by a 3, 5 and 7 px max filter. What the ideal layout still misreads is
the model's; the distance between the pipeline and the ideal is preprocessing's.

    python -m clients.font_check            # table on stdout, bench/font_check.{md,png}
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from build_tools.errors import ToolkitError
from build_tools.served import load_classifier_names
from clients.captures import NAMES, _font_paths, _glyph_from_font, degradation, render
from clients.datasets import spec_evaluation_set
from loadtest.preprocess_cost import INK_THRESHOLD, MAX_PIXELS, MIN_SIDE, load_module, preprocess_folder

logger = logging.getLogger(__name__)


def font_set(count: int, seed: int) -> tuple[list[bytes], list[np.ndarray], np.ndarray, np.ndarray]:
    """The font class exactly as make_captures draws it: payloads, glyph inks (0..1), labels, font index."""
    deg = degradation("font")
    fonts = _font_paths()
    rng = np.random.default_rng((seed, NAMES.index("font")))
    payloads, alphas, labels, font_idx = [], [], [], []
    for k in range(count):
        cap = deg.draw(rng)
        label, f = k % 10, (k // 10) % len(fonts)
        alpha = _glyph_from_font(label, fonts[f], cap.height, cap.angle)
        payloads.append(render(alpha, cap, rng))
        alphas.append(alpha)
        labels.append(label)
        font_idx.append(f)
    return payloads, alphas, np.asarray(labels), np.asarray(font_idx)


def ideal(pixels: object, alpha: np.ndarray, grow: int = 0) -> np.ndarray:
    """The glyph's own ink, thickened by a `grow` px max filter, boxed and laid out by `pixels.layout`."""
    img = Image.fromarray(np.round(alpha * 255).astype(np.uint8))
    if grow:
        img = img.filter(ImageFilter.MaxFilter(grow))
    ink = np.asarray(img)
    rows, cols = np.nonzero(ink)
    return pixels.layout(ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1])  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="font_check", description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=500, help="font captures (the evaluation's default: 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench", help="folder for font_check.{md,png}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        import onnxruntime as ort

        pixels = load_module("font_check_pixels", preprocess_folder() / "pixels.py")
        names = load_classifier_names()
        onnx = names.onnx  # the classifier the spec serves
        reference_images = spec_evaluation_set(names)[0].images
        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        payloads, alphas, labels, font_idx = font_set(args.count, args.seed)
    except (ToolkitError, OSError) as e:
        sys.stderr.write(f"font_check: error: {e}\n")
        return 1
    fonts = [f.stem for f in _font_paths()]
    ways = {
        "served pipeline": [pixels.to_mnist(pixels.decode(b, MAX_PIXELS, MIN_SIDE), INK_THRESHOLD) for b in payloads],
        "ideal layout": [ideal(pixels, a) for a in alphas],
        **{f"ideal, strokes +{g - 1} px": [ideal(pixels, a, g) for a in alphas] for g in (3, 5, 7)},
    }
    lines = ["# Font-rendered digits: preprocessing or model?", "",
             f"{args.count} font captures (seed {args.seed}), the served model's ONNX file, offline.", "",
             f"Stroke weight: the held-out digits have {_ink(reference_images):.0f} pixels above 127 "
             "on average; the column `ink` gives the same for each layout.", "",
             "| layout | all | ink | " + " | ".join(fonts) + " | most frequent misreadings |",
             "|---|---|---|" + "---|" * len(fonts) + "---|"]
    per_font: dict[str, list[float]] = {}
    for way, images in ways.items():
        predicted = session.run(None, {"image": np.stack(images).astype(np.float32)})[0].argmax(axis=1)
        hit = predicted == labels
        per_font[way] = [float(hit[font_idx == f].mean()) for f in range(len(fonts))]
        misses = Counter(f"{t}->{q}" for t, q in zip(labels[~hit], predicted[~hit])).most_common(4)
        accuracies = " | ".join(f"{v:.0%}" for v in per_font[way])
        misread = ", ".join(f"{m} ×{n}" for m, n in misses)
        lines.append(f"| {way} | {hit.mean():.1%} | {_ink(images):.0f} | {accuracies} | {misread} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "font_check.md").write_text("\n".join(lines) + "\n")
    _plot(per_font, fonts, out / "font_check.png")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _ink(images: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean count of pixels above 127 per laid-out image: how much stroke a digit carries."""
    return float(np.mean([np.count_nonzero(np.asarray(i) > 127) for i in images]))


def _plot(per_font: dict[str, list[float]], fonts: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(fonts))
    width = 0.8 / len(per_font)
    for i, (way, values) in enumerate(per_font.items()):
        ax.bar(x + (i - (len(per_font) - 1) / 2) * width, [v * 100 for v in values], width, label=way)
    ax.set_xticks(x, fonts, rotation=20, fontsize=8)
    ax.set_ylim(50, 101)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("font captures per font: served pipeline against an ideal layout of the glyph")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
