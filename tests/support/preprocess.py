"""The MNIST preprocessing model's pixel pipeline (models/mnist/preprocess/pixels.py), and pixel-geometry
helpers for checking its output.

The pipeline is imported by its package path (pure numpy/Pillow, no Triton), so a mutation tool that
rewrites it sees the tests call it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

SIDE = 28
BOX = 20
CENTRE = SIDE / 2  # MNIST's convention: the centre of mass at (14, 14) in pixel-index coordinates


def preprocess_module() -> ModuleType:
    """The pixel functions the served model calls: `decode`, `to_mnist`, `BadImageError`."""
    return importlib.import_module("models.mnist.preprocess.pixels")


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass of a 2-D image, in pixel-index coordinates."""
    img = np.asarray(img, dtype=np.float64)
    total = img.sum()
    rows, cols = np.indices(img.shape)
    return float((img * rows).sum() / total), float((img * cols).sum() / total)


def ink_extent(img: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the non-zero pixels."""
    rows, cols = np.nonzero(np.asarray(img))
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def draw(digit: np.ndarray, size: tuple[int, int], at: tuple[int, int], scale: int, invert: bool) -> np.ndarray:
    """A 28x28 digit scaled up ``scale`` times and pasted at ``at`` on a black canvas (white when inverted)."""
    from PIL import Image

    big = np.asarray(Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR))
    canvas = np.zeros(size, np.uint8)
    canvas[at[0]: at[0] + big.shape[0], at[1]: at[1] + big.shape[1]] = big
    return 255 - canvas if invert else canvas
