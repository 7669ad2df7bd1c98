"""Pixel pipeline of the `mnist_preprocess` model: encoded bytes -> a 28x28 MNIST-style digit.

Pure numpy/Pillow, no Triton: `model.py` is the thin Triton glue, and tests call these functions
directly. A capture is treated the way a phone photo of a digit on paper comes in:

1. decode: header checks before any pixel is decoded; large JPEGs decoded at a reduced DCT scale;
   the EXIF orientation applied (phones store pixels rotated and say so in the tag);
2. channel: colour ink on coloured paper is read in the channel (or luminance) that separates them;
3. polarity: bright paper is inverted, so the digit is bright on dark as in MNIST;
4. background: the paper's own brightness (flat grey, an illumination gradient, a soft shadow) is
   estimated at low resolution and divided out, leaving ink strength 0..255;
5. ink mask: an adaptive (Otsu) threshold, never below the configured `ink_threshold`; thin lines
   along the image edge (page borders, the table) and isolated specks are left out;
6. layout: the mask's bounding box, with the ink's grey levels inside it, scaled into 20x20 and
   centred by centre of mass in 28x28, as MNIST was made.

A flat page (its border ring within FLAT_SPREAD grey levels: evenly lit paper, most captures) takes
a shorter way through 3-5: the paper level and polarity from its border and histogram, a block-mean
working copy, one division by that level, a fixed mask level, no border scan.
A 28x28 image already in MNIST's layout skips steps 4-6 and passes through bit-identical.
Each step is its own function so that it can be tested (and switched off, to measure what it adds).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

SIDE = 28
BOX = 20
ALLOWED_FORMATS = ("PNG", "JPEG")
# Captures are worked on at no more than this many pixels on the long side: the digit ends up 20 px
# high, so more resolution only costs time (a 4000 px phone photo is decoded at 1/8 by libjpeg).
WORK_SIDE = 64
# Background estimation runs on a copy this small; the closing window must be wider than a stroke.
BG_SIDE = 32
BG_WINDOW = 5  # wider than a stroke at BG_SIDE
# Channels differing by less than this everywhere are grey: read as luminance, like Pillow's "L".
GREY_TOLERANCE = 12
# Mask rows/columns in the outer band of the image that are mostly ink are page borders, not digit.
BORDER_BAND = 0.08
BORDER_FILL = 0.5
# A page whose border spreads over at most this many grey levels (5th-95th percentile) is flat: sensor
# noise (sigma 6) and JPEG blocking stay under it; a gradient, a shadow or a band along an edge do not.
FLAT_SPREAD = 24
FLAT_THRESHOLD = 48  # ink strength that masks a flat page's strokes, 0..255
# Specks: blobs (on a grid of GRID cells along the long side) with under KEEP_FRACTION of the
# biggest blob's ink are not part of the digit.
GRID = 24
KEEP_FRACTION = 0.15


# A digit is a stroke on a page: above this share of inked pixels (after the paper is removed, at the
# 64 px working size) the "digit" is a filled area or noise. Measured: held-out digits ink at most 28%,
# every capture class at most 38% (page borders included); uniform noise 45-57%.
MAX_INK_SHARE = 0.45


class BadImageError(ValueError):
    """One image cannot be turned into a digit; the message is sent back to the client.

    `reason` is a short label for the rejected-images metric (tdk_serving_input_rejected_total{reason}).
    """

    def __init__(self, message: str, reason: str = "no_digit") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Steps:
    """Which capture steps run; all on in service. Switching one off measures what it is worth.

    `background` covers the low-resolution look at the page (polarity by morphology, paper level) and
    dividing the paper out; off, polarity falls back to the border rule and ink is 255 - grey.
    """

    exif: bool = True
    channel: bool = True
    background: bool = True
    adaptive_threshold: bool = True
    borders: bool = True
    specks: bool = True


ALL_STEPS = Steps()


_LEVELS = np.arange(256, dtype=np.float64)
_LEVELS32 = np.arange(256, dtype=np.float32)


# Pillow <-> numpy through the raw buffer: np.asarray(image) and Image.fromarray go through the array
# interface's Python layers, which cost more than the few operations done on these small images.
_DTYPES = {"L": np.uint8, "RGB": np.uint8, "F": np.float32}


def _array(img: Image.Image) -> np.ndarray:
    """A read-only array of an "L", "RGB" or "F" image."""
    w, h = img.size
    flat = np.frombuffer(img.tobytes(), _DTYPES[img.mode])
    return flat.reshape((h, w, 3) if img.mode == "RGB" else (h, w))


def _image(a: np.ndarray, mode: str = "L") -> Image.Image:
    """An "L" (uint8 [H, W]), "RGB" (uint8 [H, W, 3]) or "F" (float32 [H, W]) image on the array's memory."""
    a = np.ascontiguousarray(a, dtype=_DTYPES[mode])
    return Image.frombuffer(mode, (a.shape[1], a.shape[0]), a, "raw", mode, 0, 1)


# --------------------------------------------------------------------------- 1. decode


def decode(data: bytes, max_pixels: int, min_side: int, steps: Steps = ALL_STEPS) -> np.ndarray:
    """Encoded bytes -> uint8 [H, W] (grey) or [H, W, 3] (colour), upright, every check before decoding."""
    if not data:
        raise BadImageError("empty image bytes; expected an encoded PNG or JPEG image", "empty")
    try:
        # open() reads the header only: size and format are known before any pixel is decoded.
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise BadImageError(
            f"not an image ({len(data)} bytes, format not recognised); expected PNG or JPEG", "not_an_image"
        ) from e
    except Image.DecompressionBombError as e:
        raise BadImageError(f"image too large: {e}", "too_large") from e
    if img.format not in ALLOWED_FORMATS:
        raise BadImageError(f"image format {img.format} is not supported; expected PNG or JPEG", "not_an_image")
    width, height = img.size
    if width * height > max_pixels:
        raise BadImageError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
            f"(decompression bomb protection)", "too_large",
        )
    if min(width, height) < min_side:
        raise BadImageError(
            f"image is {width}x{height} pixels; a digit needs at least {min_side}x{min_side}", "too_small"
        )
    if img.format == "JPEG" and max(width, height) > 2 * WORK_SIDE:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale for free; keep at least WORK_SIDE on the long side.
        scale = max(width, height) / WORK_SIDE
        img.draft(img.mode, (int(width / scale) + 1, int(height / scale) + 1))
    try:
        # No bomb warning can fire here: the pixel count was checked against the same limit above.
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"corrupt or truncated {img.format} image: {e}", "corrupt") from e
    if steps.exif:
        img = upright(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent canvases are drawn on as if on white paper.
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode in ("L", "1", "I", "I;16", "F") or (img.mode == "P" and _grey_palette(img)):
        return _array(img.convert("L"))
    return _array(img.convert("RGB"))


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (JPEG from phones), so the digit is the way the user saw it."""
    # Only JPEG carries the tag in practice; reading EXIF from every PNG would cost for nothing.
    if img.format != "JPEG" or "exif" not in img.info:
        return img
    orientation = img.getexif().get(0x0112, 1)
    if orientation in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def _grey_palette(img: Image.Image) -> bool:
    palette = np.asarray(img.getpalette() or [], dtype=np.int16).reshape(-1, 3)
    return bool(palette.size) and int(np.ptp(palette, axis=1).max()) == 0


# --------------------------------------------------------------------------- 2. channel


def to_grey(pixels: np.ndarray, steps: Steps = ALL_STEPS) -> np.ndarray:
    """uint8 [H, W(, 3)] -> uint8 [H, W]: luminance, or the colour channel with the most ink/paper contrast."""
    if pixels.ndim == 2:
        return pixels
    img = _image(pixels, "RGB")
    luminance = img.convert("L")
    if not steps.channel:
        return _array(luminance)
    # Pillow's per-channel C passes (differences, extrema, histograms): a handful of calls for the
    # whole decision, where numpy needed dozens on a sample.
    channels = img.split()
    spread = max(ImageChops.difference(channels[i], channels[j]).getextrema()[1] for i, j in ((0, 1), (1, 2), (0, 2)))
    if spread <= GREY_TOLERANCE:
        return _array(luminance)
    hists = np.asarray(luminance.histogram() + img.histogram(), dtype=np.int64).reshape(4, 256)
    best = int(np.argmax(_contrast(hists)))
    return _array((luminance, *channels)[best])


def _contrast(hists: np.ndarray) -> np.ndarray:
    """Per histogram row: how far the ink (a minority tail, darker or brighter) sits from the paper (the median)."""
    cum = np.cumsum(hists, axis=1)
    # Quantiles as searchsorted(side="left") would give them: the number of levels below each target.
    targets = cum[:, -1:] * np.asarray([0.015, 0.5, 0.985])
    lo, mid, hi = (cum[:, :, None] < targets[:, None, :]).sum(axis=1).T
    return np.maximum(mid - lo, hi - mid)


def quantiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles of uint8 values from their histogram (cheaper than sorting)."""
    cum = np.cumsum(np.bincount(values.reshape(-1), minlength=256))
    return np.searchsorted(cum, np.asarray(qs) * cum[-1], side="left")


# --------------------------------------------------------------------------- 3-4. polarity, background


def bright_background(gray: np.ndarray) -> bool:
    """Most of the border is bright (median above mid-grey): dark ink on paper, to be inverted."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return 2 * int(np.count_nonzero(border > 127)) > border.size


def shrink(gray: np.ndarray) -> np.ndarray:
    """Box-filter down so the long side is WORK_SIDE (a quarter more is left alone)."""
    h, w = gray.shape
    if max(h, w) <= WORK_SIDE * 5 // 4:
        return gray
    scale = WORK_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return _array(_image(gray).resize(size, Image.Resampling.BOX))


def reduce_flat(gray: np.ndarray) -> np.ndarray:
    """A flat page's working copy: block means by the whole factor that brings the long side nearest WORK_SIDE.

    Pillow's `reduce` (a plain block mean) costs a fraction of resampling to an exact size; a page
    that is not flat is shrunk to exactly WORK_SIDE instead (`shrink`), as before.
    """
    factor = round(max(gray.shape) / WORK_SIDE)
    if factor <= 1:
        return gray
    return _array(_image(gray).reduce(factor))


def _max_filter(a: np.ndarray, size: int) -> np.ndarray:
    """Square max filter over the last two axes, windows clipped at the edges, as shifted 1-D passes.

    Pillow's rank filters sort every window, which costs far more even on a small image; on images
    this small each numpy call costs more than its arithmetic, so the passes use as few calls as they can.
    """
    rows = a.copy()
    for k in range(1, size // 2 + 1):
        np.maximum(rows[..., :-k, :], a[..., k:, :], out=rows[..., :-k, :])
        np.maximum(rows[..., k:, :], a[..., :-k, :], out=rows[..., k:, :])
    out = rows.copy()
    for k in range(1, size // 2 + 1):
        np.maximum(out[..., :-k], rows[..., k:], out=out[..., :-k])
        np.maximum(out[..., k:], rows[..., :-k], out=out[..., k:])
    return out


@dataclass
class Page:
    """What the look at the page found: which way the ink goes, and the paper level."""

    dark_ink: bool
    paper: np.ndarray | None  # the paper level on the small copy, ink removed (None: not estimated)
    level: int | None = None  # a flat page's one paper level (flat_page); `paper` is then None


def flat_page(gray: np.ndarray, ink_threshold: int) -> Page | None:
    """Polarity and paper level of a flat page from its border and histogram; None when it is not flat.

    Most captures are a flat page (white, grey or coloured paper, evenly lit): there the paper level
    is one number, and the morphology of `look` (a quarter of a capture's time) is not needed; it
    would even hollow out strokes wider than its window (bold type). A page is flat when its border
    ring spreads over at most FLAT_SPREAD grey levels (5th-95th percentile, so a speck on the edge
    does not count): a gradient, a shadow, strong noise or a band along an edge are not flat and go
    to `look`. Polarity: whichever side of the paper level holds more pixels beyond the ink
    threshold; a page with none (blank) goes to `look` too, which says so.
    """
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    n = border.size - 1
    ranks = (n * 5 // 100, n // 2, n * 95 // 100)
    lo, paper, hi = (int(v) for v in np.partition(border, ranks)[list(ranks)])
    if hi - lo > FLAT_SPREAD:
        return None
    darker = int(np.count_nonzero(gray < paper - ink_threshold))
    lighter = int(np.count_nonzero(gray > paper + ink_threshold))
    if darker == lighter:
        return None
    return Page(darker > lighter, None, paper)


def look(gray: np.ndarray, ink_threshold: int, dark_ink: bool | None = None) -> Page:
    """Polarity and paper level from a small copy (about BG_SIDE px), by grey-level morphology.

    Polarity: a closing (max then min over BG_WINDOW, wider than a stroke at this size) removes dark
    strokes, an opening (min then max) light ones; the ink is whichever they remove more of. Shading
    wider than the window (a shadow over most of the page, a gradient, grey paper) and a dark table
    around the sheet do not flip it, nor do bold glyphs or dark specks. A blank page (nothing removed
    by the ink threshold) is judged by its border, as before.
    Paper level: the closing itself, the paper with its gradient or shadow and without the ink.
    `dark_ink` given: that polarity is taken as it is (to_mnist's second try), only the paper is estimated.
    """
    h, w = gray.shape
    scale = min(1.0, BG_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = _array(_image(gray).resize(size, Image.Resampling.BOX)).astype(np.int16)
    # Closing and opening in two max-filter passes over [x, -x]: erosion is -max(-x).
    twice = _max_filter(-_max_filter(np.stack([small, -small]), BG_WINDOW), BG_WINDOW)
    closed, opened = -twice[0], twice[1]
    dark, light = closed - small, small - opened
    if dark_ink is not None:
        pass
    elif max(int(dark.max()), int(light.max())) < ink_threshold:
        dark_ink = bright_background(gray)
    else:
        dark_ink = int(dark.sum()) > int(light.sum())
    return Page(dark_ink, closed if dark_ink else opened)


def ink_strength(gray: np.ndarray, page: Page, steps: Steps = ALL_STEPS) -> np.ndarray:
    """Ink strength float32 0..255 (0 = bare paper), the paper's own level and shading taken out.

    Dark ink: a shadow or a gradient multiplies paper and ink alike, so the ratio of a pixel to the
    paper level under it is the ink's own darkness; black on any paper is full strength, as MNIST's
    strokes. Light ink (chalk, an MNIST-style rendering, a colour channel where the ink is the
    brighter): its rise above the dark level under it, stretched to the room left above that level.
    """
    if page.level is not None:
        # A flat page: 255 - 255 * grey / paper for every grey level once, then one lookup per pixel.
        paper = page.level if page.dark_ink else 255 - page.level
        lut = 255.0 - _LEVELS32 * np.float32(255.0 / max(paper, 1))
        np.maximum(lut, 0.0, out=lut)
        return (lut if page.dark_ink else lut[::-1])[gray]
    if not steps.background or page.paper is None:
        return 255.0 - gray.astype(np.float32) if page.dark_ink else gray.astype(np.float32)
    h, w = gray.shape
    paper = page.paper if page.dark_ink else 255 - page.paper
    # 255 / paper level, on the small copy (cheap), then brought to full size: one multiply per pixel.
    gain = np.divide(255.0, np.maximum(paper, 1), dtype=np.float32)
    gain_full = _array(_image(gain, "F").resize((w, h), Image.Resampling.BILINEAR))
    ink = np.multiply(gray if page.dark_ink else 255 - gray, gain_full, dtype=np.float32)
    np.subtract(255.0, ink, out=ink)
    return np.maximum(ink, 0.0, out=ink)


# --------------------------------------------------------------------------- 5. ink mask


def otsu(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the level that best splits them in two (maximum between-class variance)."""
    hist = np.bincount(values.reshape(-1), minlength=256).astype(np.float64)
    weight, mass = np.cumsum(hist), np.cumsum(hist * _LEVELS)
    total = weight[-1]
    spread = weight * (total - weight)
    # Levels with everything on one side (spread 0) cannot split; np.errstate would cost more than the rest.
    between = np.divide((mass[-1] * weight - total * mass) ** 2, spread, out=np.full(256, -1.0), where=spread > 0)
    return int(np.argmax(between[:-1])) + 1


def drop_borders(mask: np.ndarray) -> np.ndarray:
    """Clear rows/columns in the outer band that are mostly ink: page edges and table, not digit."""
    h, w = mask.shape
    bh, bw = max(2, round(h * BORDER_BAND)), max(2, round(w * BORDER_BAND))
    rows = np.flatnonzero(np.concatenate([mask[:bh].sum(axis=1), mask[-bh:].sum(axis=1)]) > BORDER_FILL * w)
    cols = np.flatnonzero(np.concatenate([mask[:, :bw].sum(axis=0), mask[:, -bw:].sum(axis=0)]) > BORDER_FILL * h)
    if not rows.size and not cols.size:
        return mask
    mask = mask.copy()
    mask[np.where(rows < bh, rows, rows - 2 * bh + h)] = False
    mask[:, np.where(cols < bw, cols, cols - 2 * bw + w)] = False
    return mask


def digit_cells(mask: np.ndarray, steps: Steps = ALL_STEPS) -> tuple[np.ndarray, np.ndarray | None]:
    """The mask without isolated specks: ink in the biggest connected blob (and blobs nearly as big),
    and the cells kept (None when nothing was dropped).

    Connectivity is judged on a coarse grid (about GRID cells on the long side), which bridges the
    small gaps of a broken stroke; blobs are unions of horizontal runs of cells, so the work is a
    few dozen runs, not every pixel.
    """
    if not steps.specks:
        return mask, None
    h, w = mask.shape
    cell = max(2, -(-max(h, w) // GRID))
    gh, gw = -(-h // cell), -(-w // cell)
    # Share of ink per cell (0..255), from Pillow's box reduction: one pass in C.
    counts = _array(_image(mask.view(np.uint8) * np.uint8(255)).reduce(cell))
    runs = _runs(counts)
    if len(runs) == 1:
        return mask, None
    parent = list(range(len(runs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []
    current: list[int] = []
    row = -1
    for i, (y, x0, x1, _) in enumerate(runs):
        if y != row:
            previous, current, row = (current if y == row + 1 else []), [], y
        for j in previous:
            # 8-connected: runs in adjacent rows touch when they overlap or meet at a corner.
            if runs[j][1] <= x1 and x0 <= runs[j][2]:
                parent[root(j)] = root(i)
        current.append(i)
    mass: dict[int, int] = {}
    for i, run in enumerate(runs):
        mass[root(i)] = mass.get(root(i), 0) + run[3]
    if len(mass) == 1:
        return mask, None
    biggest = max(mass.values())
    keep = np.zeros((gh, gw), bool)
    for i, (y, x0, x1, _) in enumerate(runs):
        if mass[root(i)] >= KEEP_FRACTION * biggest:
            keep[y, x0:x1 + 1] = True
    kept = np.repeat(np.repeat(keep, cell, axis=0), cell, axis=1)[:h, :w]
    return mask & kept, kept


def _runs(counts: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(row, first column, last column, ink) of every horizontal run of occupied cells, row by row."""
    h, w = counts.shape
    # Each row padded with a free cell at both ends: a run starts where the row goes free -> occupied.
    occupied = np.zeros((h, w + 2), np.int8)
    occupied[:, 1:-1] = counts > 0
    edges = occupied[:, 1:] - occupied[:, :-1]
    ys, x0 = np.nonzero(edges == 1)
    x1 = np.nonzero(edges == -1)[1]  # exclusive; row-major order pairs each end with its start
    # Ink of a run: the row's running sum (with a 0 in front) at its end minus at its start.
    cum = np.zeros((h, w + 1), np.int64)
    np.cumsum(counts, axis=1, out=cum[:, 1:])
    ink = cum[ys, x1] - cum[ys, x0]
    return list(zip(ys.tolist(), x0.tolist(), (x1 - 1).tolist(), ink.tolist()))


def ink_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the ink in the mask, bottom/right exclusive."""
    r, c = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1


# --------------------------------------------------------------------------- 6. MNIST layout


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    total = float(img.sum())
    ys = np.arange(img.shape[0], dtype=np.float64)
    xs = np.arange(img.shape[1], dtype=np.float64)
    return float(img.sum(axis=1) @ ys) / total, float(img.sum(axis=0) @ xs) / total


def _extent(mask: np.ndarray) -> int:
    idx = np.flatnonzero(mask)
    return int(idx[-1] - idx[0] + 1)


def is_mnist_layout(img: np.ndarray) -> bool:
    """28x28, digit within a 20x20 box, centre of mass within 2 px of the centre."""
    if img.shape != (SIDE, SIDE):
        return False
    rows, cols = img.any(axis=1), img.any(axis=0)
    if not rows.any() or _extent(rows) > BOX or _extent(cols) > BOX:
        return False
    cy, cx = centre_of_mass(img.astype(np.float64))
    return abs(cy - SIDE / 2) <= 2 and abs(cx - SIDE / 2) <= 2


def layout(crop: np.ndarray) -> np.ndarray:
    """The digit's crop (uint8, white on black) -> float32 [1, 28, 28]: into 20x20, centre of mass centred."""
    h, w = crop.shape
    scale = BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    # An "L" image: whole numbers 0..255 already (nothing to clip or round), sums exact in float64.
    box = _array(_image(crop).resize((new_w, new_h), Image.Resampling.LANCZOS))
    rows, cols = box.sum(axis=1, dtype=np.float64), box.sum(axis=0, dtype=np.float64)
    total = float(rows.sum())
    if total == 0:
        raise BadImageError("no digit found after scaling (the ink is too thin)")
    cy = float(rows @ np.arange(new_h, dtype=np.float64)) / total
    cx = float(cols @ np.arange(new_w, dtype=np.float64)) / total
    top = min(max(round(SIDE / 2 - cy), 0), SIDE - new_h)
    left = min(max(round(SIDE / 2 - cx), 0), SIDE - new_w)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top: top + new_h, left: left + new_w] = box
    return out[None]


# --------------------------------------------------------------------------- the whole pipeline


def _ink_mask(
    gray: np.ndarray, page: Page, ink_threshold: int, steps: Steps
) -> tuple[np.ndarray, int, np.ndarray]:
    """Ink strength, the threshold used and the ink mask, for one reading of the page."""
    ink = ink_strength(gray, page, steps)
    if page.level is not None and steps.adaptive_threshold:
        # A flat page divided by its paper level is paper near 0 and strokes near 255: no histogram
        # needed to split them (half Otsu's level was 29-56, median 47, on the flat capture classes).
        threshold = max(FLAT_THRESHOLD, ink_threshold)
        return ink, threshold, ink >= threshold
    ink8 = ink.astype(np.uint8)
    # Half Otsu's level: clear of paper texture and noise, low enough to keep anti-aliased stroke edges.
    threshold = max(otsu(ink8) // 2, ink_threshold) if steps.adaptive_threshold else ink_threshold
    return ink, threshold, ink8 >= threshold


def to_mnist(pixels: np.ndarray, ink_threshold: int, steps: Steps = ALL_STEPS) -> np.ndarray:
    """Decoded pixels (grey or colour, any size) -> float32 [1, 28, 28] in MNIST's layout (white on black)."""
    gray = to_grey(pixels, steps)
    low, high = int(gray.min()), int(gray.max())
    if high - low < ink_threshold:
        # A uniform image would otherwise be answered with a confident digit about nothing.
        raise BadImageError(
            f"no digit found: the image is uniform (pixel values {low}-{high}, contrast {high - low} below "
            f"{ink_threshold})"
        )
    if gray.shape == (SIDE, SIDE):
        # Already MNIST-sized: if it is in MNIST's layout too, nothing is touched (bit-identical).
        candidate = 255 - gray if bright_background(gray) else gray
        if is_mnist_layout(candidate):
            return candidate.astype(np.float32)[None]
    # A flat page (most captures) needs neither the morphology of `look` nor the exact shrink. An
    # MNIST-sized image out of MNIST's layout keeps the look as before: the drift demo's thicker pen
    # (28x28) is misread only through the look's hollowed strokes (78.8% held-out; 95.8% kept solid).
    flat = flat_page(gray, ink_threshold) if steps.background and gray.shape != (SIDE, SIDE) else None
    if flat is not None:
        page, gray = flat, reduce_flat(gray)
    else:
        gray = shrink(gray)
        page = look(gray, ink_threshold) if steps.background else Page(bright_background(gray), None)
    ink, threshold, mask = _ink_mask(gray, page, ink_threshold, steps)
    share = float(np.count_nonzero(mask)) / mask.size
    if share > MAX_INK_SHARE and page.level is not None:
        # A flat page's division leaves soft stroke edges at full width: judge the strokes' cores (a
        # digit filling a small canvas, as a 28x28 one refitted, is no filled area).
        share = float(np.count_nonzero(ink >= 128)) / mask.size
    if share > MAX_INK_SHARE and steps.background:
        # Ink nearly everywhere: the polarity was misjudged (a small light digit on a large dark
        # canvas can fool the look) or there is no digit. The other polarity is tried before refusing.
        other = look(gray, ink_threshold, dark_ink=not page.dark_ink)
        ink2, threshold2, mask2 = _ink_mask(gray, other, ink_threshold, steps)
        share2 = float(np.count_nonzero(mask2)) / mask2.size
        if share2 < share:
            page, ink, threshold, mask, share = other, ink2, threshold2, mask2, share2
    if share > MAX_INK_SHARE:
        raise BadImageError(
            f"no digit found: {share:.0%} of the pixels are ink (noise or a filled area); a digit covers at "
            f"most {MAX_INK_SHARE:.0%}"
        )
    if steps.borders and page.level is None:
        # A flat page has clean paper all along its edges: no band there to drop.
        mask = drop_borders(mask)
    if not mask.any():
        raise BadImageError(f"no digit found: every pixel is below the ink threshold {threshold} (blank image)")
    mask, keep = digit_cells(mask, steps)
    if keep is not None:
        ink = ink * keep  # specks inside the digit's box go too
    top, bottom, left, right = ink_box(mask)
    crop, inked = ink[top:bottom, left:right], mask[top:bottom, left:right]
    # Inside the box the ink keeps its grey levels (anti-aliased edges, as MNIST has); paper texture
    # and noise below the configured floor are dropped, and faint ink (pencil, a dim photo) is
    # brought to the full strength of MNIST's strokes.
    gain = 1.0
    if page.paper is not None or page.level is not None:
        core = float(quantiles(crop[inked].astype(np.uint8), (0.9,))[0])
        gain = 255.0 / max(core, float(threshold))
    crop = np.where(crop >= ink_threshold, np.minimum(crop * gain, 255.0), 0.0)
    return layout(np.round(crop).astype(np.uint8))
