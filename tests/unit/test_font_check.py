"""clients/font_check.py examines the evaluation's own font captures, and its ideal layout is MNIST's."""

from __future__ import annotations

import numpy as np

from clients.captures import NAMES, make_captures
from clients.datasets import mnist_holdout
from clients.font_check import font_set, ideal
from tests.support.captures import load_pixels


def test_font_set_matches_evaluation_captures_when_same_seed() -> None:
    data = mnist_holdout()
    payloads, alphas, labels, _ = font_set(12, 0)
    expected = make_captures(data.images, data.labels, NAMES, 12, 0).of("font")
    assert payloads == expected[0] and labels.tolist() == expected[1].tolist() and len(alphas) == 12


def test_ideal_layout_fits_box_and_centres_mass_when_glyph_is_thickened() -> None:
    px = load_pixels()
    _, alphas, _, _ = font_set(3, 0)
    for grow in (0, 3):
        out = ideal(px, alphas[1], grow)[0]
        rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 20
        assert px.is_mnist_layout(out)
