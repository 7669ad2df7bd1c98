"""The MNIST layout contract of the preprocessing model, pixel by pixel, through its own functions.

Whatever the pixel pipeline does to ink and background, its output must have MNIST's layout: the
digit's bounding box scaled so that its longest side is exactly 20 px, and its centre of mass within
half a pixel of the 28x28 field's centre (14, 14). A digit placed one pixel off breaks the contract
for every image, so the mean offset is checked as well as each image's.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clients.datasets import mnist_holdout
from tests.support.preprocess import BOX, CENTRE, SIDE, centre_of_mass, draw, ink_extent, preprocess_module

pre = preprocess_module()
DIGITS = 40


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return mnist_holdout().images[:DIGITS]


def _layout(gray: np.ndarray) -> np.ndarray:
    """Grayscale canvas -> the model's 28x28 output, through decode() of a PNG as served."""
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    decoded = pre.decode(buf.getvalue(), max_pixels=4096 * 4096, min_side=8)
    out = pre.to_mnist(decoded, ink_threshold=32)
    assert out.shape == (1, SIDE, SIDE) and out.dtype == np.float32
    return out[0]


def _assert_mnist_layout(outputs: list[np.ndarray], case: str) -> None:
    offsets = []
    for i, out in enumerate(outputs):
        assert out.min() >= 0 and out.max() <= 255, (case, i)
        assert max(ink_extent(out)) == BOX, f"{case} #{i}: bounding box {ink_extent(out)}, longest side must be {BOX}"
        cy, cx = centre_of_mass(out)
        assert abs(cy - CENTRE) <= 0.5 and abs(cx - CENTRE) <= 0.5, f"{case} #{i}: centre of mass ({cy:.2f}, {cx:.2f})"
        offsets.append((cy - CENTRE, cx - CENTRE))
    # Rounding to whole pixels spreads each offset over [-0.5, 0.5]; a systematic shift moves the mean.
    mean_y, mean_x = np.mean(offsets, axis=0)
    assert abs(mean_y) < 0.25 and abs(mean_x) < 0.25, f"{case}: mean offset ({mean_y:.2f}, {mean_x:.2f})"


@pytest.mark.parametrize(
    ("case", "size", "at", "scale", "invert"),
    [
        ("large_centred", (300, 300), (80, 80), 5, False),
        ("inverted_paper", (200, 160), (30, 10), 4, True),
        ("off_centre_corner", (240, 320), (150, 230), 3, False),
        ("inverted_off_centre", (96, 96), (40, 0), 2, True),
        ("wide_canvas_left_edge", (64, 400), (4, 0), 2, False),
    ],
)
def test_to_mnist_fits_box_and_centres_mass_when_canvas_is_large_inverted_or_off_centre(
    digits: np.ndarray, case: str, size: tuple[int, int], at: tuple[int, int], scale: int, invert: bool
) -> None:
    _assert_mnist_layout([_layout(draw(d, size, at, scale, invert)) for d in digits], case)


@pytest.mark.parametrize(("height", "width"), [(100, 40), (30, 90), (57, 57), (12, 200)])
def test_layout_scales_longest_side_to_twenty_when_given_a_solid_block(height: int, width: int) -> None:
    # layout() is the step that owns the contract (the digit's crop -> 28x28). A solid block is given to
    # it directly: through to_mnist, the background step rightly takes a large filled area for paper.
    out = pre.layout(np.full((height, width), 255, np.uint8))
    assert out.shape == (1, SIDE, SIDE) and out.dtype == np.float32
    out = out[0]
    h, w = ink_extent(out)
    assert max(h, w) == BOX
    # the aspect ratio is kept (to the nearest pixel)
    assert min(h, w) == max(1, round(BOX * min(height, width) / max(height, width)))
    cy, cx = centre_of_mass(out)
    assert abs(cy - CENTRE) <= 0.5 and abs(cx - CENTRE) <= 0.5


def test_to_mnist_centres_off_centre_mass_when_digit_is_lopsided() -> None:
    """An 'L': bounding box centre and centre of mass differ; it is the mass that must be centred."""
    canvas = np.zeros((160, 160), np.uint8)
    canvas[20:120, 30:45] = 255   # the long stroke
    canvas[105:120, 30:110] = 255  # the foot
    out = _layout(canvas)
    cy, cx = centre_of_mass(out)
    assert abs(cy - CENTRE) <= 0.5 and abs(cx - CENTRE) <= 0.5
    rows, cols = np.nonzero(out)
    box_centre = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
    assert box_centre[0] < CENTRE - 1 or box_centre[1] < CENTRE - 1  # the box is not what got centred


def test_to_mnist_passes_mnist_digits_bit_identical_when_already_in_layout(digits: np.ndarray) -> None:
    for i, digit in enumerate(digits):
        assert np.array_equal(_layout(digit), digit.astype(np.float32)), i


def test_to_mnist_keeps_the_layout_when_digit_is_dark_ink_on_paper(digits: np.ndarray) -> None:
    # Bright paper is divided out (issue 11), so grey levels may differ from the uninverted canvas;
    # the layout may not.
    canvas = [draw(digit, (150, 150), (20, 40), 3, False) for digit in digits]
    _assert_mnist_layout([_layout(255 - c) for c in canvas], "dark_ink_on_paper")


def test_to_mnist_keeps_the_layout_when_faint_noise_is_below_the_ink_threshold(digits: np.ndarray) -> None:
    # Noise under the ink threshold must not widen the digit's box or pull its centre of mass.
    rng = np.random.default_rng(0)
    noisy = []
    for digit in digits:
        canvas = draw(digit, (150, 150), (30, 30), 3, False)
        noisy.append(_layout(np.maximum(canvas, rng.integers(0, 32, canvas.shape, dtype=np.uint8))))
    _assert_mnist_layout(noisy, "faint_noise")


def test_to_mnist_raises_bad_image_when_canvas_is_blank() -> None:
    with pytest.raises(pre.BadImageError, match="no digit found"):
        pre.to_mnist(np.full((40, 40), 20, np.uint8), ink_threshold=32)


def _centred_block(height: int, width: int) -> np.ndarray:
    img = np.zeros((SIDE, SIDE), np.uint8)
    top, left = (SIDE - height) // 2, (SIDE - width) // 2
    img[top: top + height, left: left + width] = 200
    return img


@pytest.mark.parametrize(("height", "width"), [(20, 10), (10, 20), (20, 20)])
def test_to_mnist_passes_through_when_28x28_digit_fits_20_px_exactly(height: int, width: int) -> None:
    block = _centred_block(height, width)
    assert np.array_equal(pre.to_mnist(block, ink_threshold=32)[0], block.astype(np.float32))


def _digit_in_28(digit: np.ndarray, side: int) -> np.ndarray:
    """An MNIST digit's ink rescaled so that its longest side is ``side`` px, centred in 28x28."""
    rows, cols = np.nonzero(digit)
    crop = digit[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    scale = side / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    img = np.zeros((SIDE, SIDE), np.uint8)
    top, left = (SIDE - h) // 2, (SIDE - w) // 2
    img[top: top + h, left: left + w] = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR))
    return img


@pytest.mark.parametrize("side", [21, 24])
def test_to_mnist_refits_when_28x28_digit_is_larger_than_20_px(digits: np.ndarray, side: int) -> None:
    outputs = [pre.to_mnist(_digit_in_28(d, side), ink_threshold=32)[0] for d in digits]
    _assert_mnist_layout(outputs, f"28x28, longest side {side} px")


@pytest.mark.parametrize(("height", "width"), [(21, 10), (10, 21)])
def test_is_mnist_layout_false_when_28x28_ink_is_wider_or_taller_than_20_px(height: int, width: int) -> None:
    assert pre.is_mnist_layout(_centred_block(height, width)) is False
    assert pre.is_mnist_layout(_centred_block(min(height, BOX), min(width, BOX))) is True


def test_to_mnist_passes_through_when_28x28_mass_is_2_px_off() -> None:
    block = np.roll(_centred_block(12, 8), 2, axis=1)
    assert np.array_equal(pre.to_mnist(block, ink_threshold=32)[0], block.astype(np.float32))
    assert pre.is_mnist_layout(np.roll(_centred_block(12, 8), 3, axis=1)) is False


def test_to_mnist_recentres_28x28_digit_when_mass_is_3_px_off(digits: np.ndarray) -> None:
    outputs = []
    for digit in digits:
        _, cx = centre_of_mass(digit)
        moved = np.roll(digit, round(CENTRE - cx) + 3, axis=1)
        out = pre.to_mnist(moved, ink_threshold=32)[0]
        assert not np.array_equal(out, moved.astype(np.float32))
        outputs.append(out)
    _assert_mnist_layout(outputs, "28x28, mass 3 px off")


@pytest.mark.parametrize("axis", [0, 1])
def test_is_mnist_layout_allows_2_px_of_mass_offset_but_not_3_when_moved_along_either_axis(axis: int) -> None:
    assert pre.is_mnist_layout(np.roll(_centred_block(12, 8), 2, axis=axis)) is True
    assert pre.is_mnist_layout(np.roll(_centred_block(12, 8), 3, axis=axis)) is False
    assert pre.is_mnist_layout(np.roll(_centred_block(12, 8), -3, axis=axis)) is False


def test_bright_background_counts_all_four_edges_when_the_majority_is_narrow() -> None:
    # 10x10 border = 36 pixels: the top row (10), the right column (8) and one more = 19 bright, a majority
    # only when the right column counts too.
    gray = np.zeros((10, 10), np.uint8)
    gray[0, :] = 255
    gray[1:-1, -1] = 255
    gray[-1, 0] = 255
    assert pre.bright_background(gray) is True
    gray[-1, 0] = 0  # 18 of 36: not a majority
    assert pre.bright_background(gray) is False
