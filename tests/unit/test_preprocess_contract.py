"""The pixel pipeline's contract at its edges, through what it returns: decode's checks (each refusal's
message and metric reason, at and one past every limit), the image modes it accepts, and to_mnist's
refusals and placement. Written against outputs only, so that a faster implementation of the same
pipeline passes them unchanged."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.support.preprocess import BOX, CENTRE, SIDE, centre_of_mass, ink_extent, preprocess_module

px = preprocess_module()
INK = 32


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _refusal(data: bytes, max_pixels: int = 4096 * 4096, min_side: int = 8) -> tuple[str, str]:
    with pytest.raises(px.BadImageError) as err:
        px.decode(data, max_pixels, min_side)
    return str(err.value), err.value.reason


def test_decode_refuses_with_message_and_reason_when_bytes_are_empty_or_not_an_image() -> None:
    assert _refusal(b"") == ("empty image bytes; expected an encoded PNG or JPEG image", "empty")
    assert _refusal(b"0123456789") == (
        "not an image (10 bytes, format not recognised); expected PNG or JPEG", "not_an_image")
    gif = _encode(Image.new("L", (16, 16), 0), "GIF")
    assert _refusal(gif) == ("image format GIF is not supported; expected PNG or JPEG", "not_an_image")
    bmp = _encode(Image.new("L", (16, 16), 0), "BMP")
    assert _refusal(bmp) == ("image format BMP is not supported; expected PNG or JPEG", "not_an_image")


def test_decode_refuses_too_large_when_one_pixel_over_the_limit_and_accepts_at_it() -> None:
    png = _encode(Image.new("L", (100, 50), 7))
    assert _refusal(png, max_pixels=4999) == (
        "image is 100x50 = 5000 pixels, above the limit of 4999 (decompression bomb protection)", "too_large")
    assert px.decode(png, 5000, 8).shape == (50, 100)


def test_decode_refuses_too_small_when_a_side_is_below_the_minimum_and_accepts_at_it() -> None:
    assert _refusal(_encode(Image.new("L", (30, 7), 7)), min_side=8) == (
        "image is 30x7 pixels; a digit needs at least 8x8", "too_small")
    assert _refusal(_encode(Image.new("L", (7, 30), 7)), min_side=8)[1] == "too_small"
    assert px.decode(_encode(Image.new("L", (30, 8), 7)), 4096 * 4096, 8).shape == (8, 30)


def test_decode_refuses_corrupt_with_format_named_when_image_is_cut_short() -> None:
    jpeg = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)), "JPEG")
    message, reason = _refusal(jpeg[: len(jpeg) // 2])
    assert reason == "corrupt" and message.startswith("corrupt or truncated JPEG image: "), message
    png = _encode(Image.new("L", (64, 64), 9))
    message, reason = _refusal(png[: len(png) // 2])
    assert reason == "corrupt" and message.startswith("corrupt or truncated PNG image: "), message


def test_decode_returns_grey_or_colour_when_given_each_image_mode() -> None:
    grey = np.arange(16 * 24, dtype=np.uint8).reshape(16, 24)
    assert np.array_equal(px.decode(_encode(Image.fromarray(grey)), 10**6, 8), grey)
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, grey
    out = px.decode(_encode(Image.fromarray(rgb)), 10**6, 8)
    assert out.shape == (16, 24, 3) and np.array_equal(out, rgb)
    bilevel = Image.fromarray(grey > 100).convert("1")
    assert np.array_equal(px.decode(_encode(bilevel), 10**6, 8), np.where(grey > 100, 255, 0))
    # A palette of greys is a grey image; a palette with colour is a colour image.
    grey_palette = Image.fromarray(grey).convert("P")
    grey_palette.putpalette([v for i in range(256) for v in (i, i, i)])
    assert px.decode(_encode(grey_palette), 10**6, 8).shape == (16, 24)
    colour_palette = Image.fromarray(grey).convert("P")
    colour_palette.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    assert px.decode(_encode(colour_palette), 10**6, 8).shape == (16, 24, 3)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_decode_draws_transparent_canvas_on_white_paper_when_image_has_alpha(mode: str) -> None:
    img = Image.new(mode, (20, 20), (0, 0) if mode == "LA" else (0, 0, 0, 0))  # black but fully transparent
    ink = Image.new(mode, (6, 10), (0, 255) if mode == "LA" else (0, 0, 0, 255))  # opaque black ink
    img.paste(ink, (7, 5))
    out = px.decode(_encode(img), 10**6, 8)
    out = out if out.ndim == 2 else out[..., 0]
    expected = np.full((20, 20), 255, np.uint8)
    expected[5:15, 7:13] = 0
    assert np.array_equal(out, expected)


def test_decode_draws_palette_transparency_on_white_paper_when_palette_has_a_clear_colour() -> None:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 10, 10, 10] + [0] * 762)
    img.paste(1, (4, 4, 10, 10))
    out = px.decode(_encode(img, transparency=0), 10**6, 8)
    out = out if out.ndim == 2 else out[..., 0]
    assert out[0, 0] == 255 and out[5, 5] == 10


def test_decode_keeps_small_jpeg_whole_and_decodes_large_one_at_the_smallest_scale_above_working_size() -> None:
    small = _encode(Image.new("L", (2 * px.WORK_SIDE, 100), 200), "JPEG")
    assert px.decode(small, 10**7, 8).shape == (100, 2 * px.WORK_SIDE)
    # 1/8 of 1024 is 128, still at least WORK_SIDE (64): libjpeg's smallest scale is the one to use.
    large = _encode(Image.new("L", (1024, 512), 200), "JPEG")
    assert px.decode(large, 10**7, 8).shape == (64, 128)
    # 600 px: 1/8 would give 75 (enough), so that is what comes out.
    wide = _encode(Image.new("RGB", (600, 300), (200, 10, 10)), "JPEG")
    assert px.decode(wide, 10**7, 8).shape == (38, 75, 3)
    # 520 px: 1/8 gives 65, just above WORK_SIDE, on both sides.
    square = _encode(Image.new("L", (520, 520), 200), "JPEG")
    assert px.decode(square, 10**7, 8).shape == (65, 65)


def test_decode_keeps_orientation_when_exif_says_upright() -> None:
    img = np.full((40, 60), 255, np.uint8)
    img[:10, :10] = 0
    exif = Image.Exif()
    exif[0x0112] = 1
    out = px.decode(_encode(Image.fromarray(img), "JPEG", quality=95, exif=exif.tobytes()), 10**6, 8)
    assert out.shape == (40, 60) and out[:10, :10].mean() < 60 and out[-10:, -10:].mean() > 200


def test_to_mnist_refuses_uniform_image_with_its_range_when_contrast_is_below_the_threshold() -> None:
    flat = np.full((40, 40), 100, np.uint8)
    flat[0, 0] = 131  # contrast 31: one below the threshold
    with pytest.raises(px.BadImageError) as err:
        px.to_mnist(flat, INK)
    assert str(err.value) == ("no digit found: the image is uniform (pixel values 100-131, contrast 31 below 32)")
    assert err.value.reason == "no_digit"


def test_to_mnist_refuses_noise_with_its_ink_share_when_most_pixels_are_ink() -> None:
    noise = np.random.default_rng(5).integers(0, 256, (96, 96), dtype=np.uint8)
    with pytest.raises(px.BadImageError) as err:
        px.to_mnist(noise, INK)
    message = str(err.value)
    assert message.startswith("no digit found: ") and message.endswith(
        "of the pixels are ink (noise or a filled area); a digit covers at most 45%"), message
    share = int(message.removeprefix("no digit found: ").split("%")[0])
    assert 45 < share <= 100


def _bar_canvas(size: tuple[int, int], box: tuple[int, int, int, int], value: int = 255) -> np.ndarray:
    canvas = np.zeros(size, np.uint8)
    top, bottom, left, right = box
    canvas[top:bottom, left:right] = value
    return canvas


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((64, 64), (10, 50, 28, 36)),     # a tall bar: 40 x 8
        ((64, 64), (30, 36, 5, 45)),      # a wide bar: 6 x 40
        ((200, 120), (150, 190, 90, 110)),  # low and right on a canvas larger than the working size
        ((40, 300), (5, 35, 100, 140)),  # in a wide strip
    ],
)
def test_to_mnist_scales_to_20_px_and_centres_mass_when_digit_is_a_plain_bar(
    size: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    out = px.to_mnist(_bar_canvas(size, box), INK)
    assert out.shape == (1, SIDE, SIDE) and out.dtype == np.float32
    h, w = ink_extent(out[0])
    assert max(h, w) == BOX
    top, bottom, left, right = box
    # The aspect ratio is kept, to a pixel or so (the canvas may first be reduced to the working size).
    sides = sorted((bottom - top, right - left))
    assert abs(min(h, w) - BOX * sides[0] / sides[1]) <= 1.5
    cy, cx = centre_of_mass(out[0])
    assert abs(cy - CENTRE) <= 0.5 and abs(cx - CENTRE) <= 0.5
    # Full-strength ink stays full strength in the middle of the stroke.
    assert out.max() == 255.0 and out.min() == 0.0


def test_to_mnist_gives_the_same_digit_when_ink_is_dark_on_bright_paper() -> None:
    light = px.to_mnist(_bar_canvas((80, 80), (10, 70, 30, 40)), INK)
    dark = px.to_mnist(255 - _bar_canvas((80, 80), (10, 70, 30, 40)), INK)
    assert np.array_equal(ink_extent(light[0]), ink_extent(dark[0]))
    assert np.abs(light - dark).max() <= 8


def test_to_mnist_brings_faint_ink_to_full_strength_when_the_stroke_is_dim() -> None:
    faint = px.to_mnist(_bar_canvas((80, 80), (10, 70, 30, 40), value=90), INK)
    assert faint.max() == 255.0
    assert max(ink_extent(faint[0])) == BOX


def test_decode_reads_sixteen_bit_png_as_grey_when_the_png_has_one_channel() -> None:
    deep = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 170).astype(np.uint16)
    img = Image.fromarray(deep)
    assert Image.open(io.BytesIO(_encode(img))).mode.startswith("I")
    assert px.decode(_encode(img), 10**6, 8).shape == (16, 24)


def test_layout_refuses_with_message_when_the_crop_has_no_ink() -> None:
    with pytest.raises(px.BadImageError) as err:
        px.layout(np.zeros((10, 3), np.uint8))
    assert str(err.value) == "no digit found after scaling (the ink is too thin)" and err.value.reason == "no_digit"


def _between_class_variance(values: np.ndarray, t: int) -> float:
    """Otsu's criterion for the split {v < t} / {v >= t}, straight from its definition."""
    low, high = values[values < t].astype(np.float64), values[values >= t].astype(np.float64)
    if not low.size or not high.size:
        return -1.0
    return low.size * high.size * (low.mean() - high.mean()) ** 2 / values.size**2


@pytest.mark.parametrize("seed", range(4))
def test_otsu_returns_the_split_with_the_largest_between_class_variance_when_values_are_noisy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(40 + 10 * seed, 12, 3000), rng.normal(170, 25, 700 + 300 * seed)])
    values = np.clip(np.round(values), 0, 255).astype(np.uint8)
    t = px.otsu(values)
    best = max(_between_class_variance(values, level) for level in range(1, 256))
    assert _between_class_variance(values, t) == pytest.approx(best, rel=1e-9), t


def test_quantiles_match_the_sorted_values_when_values_reach_both_ends_of_the_range() -> None:
    values = np.concatenate([np.zeros(5, np.uint8), np.full(10, 255, np.uint8), np.arange(1, 255, dtype=np.uint8)])
    ordered = np.sort(values)
    qs = (0.0, 0.015, 0.5, 0.9, 0.985, 1.0)
    # The q-quantile: the smallest value with at least a share q of the values at or below it.
    expected = [int(ordered[max(0, int(np.ceil(q * values.size)) - 1)]) for q in qs]
    assert [int(v) for v in px.quantiles(values, qs)] == expected
    assert [int(v) for v in px.quantiles(np.full(7, 255, np.uint8), (0.5, 0.9))] == [255, 255]


def test_shrink_averages_blocks_when_the_image_is_above_the_working_size() -> None:
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (2 * px.WORK_SIDE, 2 * px.WORK_SIDE), dtype=np.uint8)
    small = px.shrink(gray)
    blocks = gray.reshape(px.WORK_SIDE, 2, px.WORK_SIDE, 2).astype(np.float64).mean(axis=(1, 3))
    assert small.shape == (px.WORK_SIDE, px.WORK_SIDE)
    assert np.abs(small - blocks).max() <= 1.0
    # Up to a quarter above the working size, the image is left as it is.
    limit = px.WORK_SIDE * 5 // 4
    assert px.shrink(gray[:limit, :40]).shape == (limit, 40)
    assert px.shrink(gray[: limit + 1, :40]).shape == (px.WORK_SIDE, round(40 * px.WORK_SIDE / (limit + 1)))
