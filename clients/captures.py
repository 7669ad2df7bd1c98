"""A seeded evaluation set of photo-like captures: held-out digits rendered as phone photos of ink on paper.

Each degradation class changes one thing about a plain capture (dark ink on white paper, digit
centred, 112 px PNG) at a documented strength, so a per-class accuracy says which real-world
condition the served preprocessing handles. `mixed` combines several at once (the conditions of the
first field report), and `font` renders digits in the TrueType fonts matplotlib ships instead of
handwriting. Everything is drawn from `numpy.random.default_rng((seed, class index))`: the same seed
gives byte-identical images on any machine with the same Pillow.

Strengths are what the served ensemble is held to (see README, "Photo-like captures").
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from build_tools.errors import ToolkitError

logger = logging.getLogger(__name__)

# MNIST puts the digit in a 20x20 box inside 28x28: a digit `height` px tall needs a 28/20 larger square.
MNIST_SPAN = 28 / 20
PAPER = 245.0
INK = 25.0
CANVAS = 112
HEIGHT = 0.6  # digit height as a fraction of the canvas side
# Ink and paper colours as a phone sees them (RGB): ballpoint, felt pen, pencil on white and coloured paper.
INK_PAPER_PAIRS: tuple[tuple[str, tuple[int, int, int], tuple[int, int, int]], ...] = (
    ("blue ballpoint on white", (30, 50, 160), (245, 245, 240)),
    ("blue ballpoint on yellow", (40, 60, 170), (250, 235, 140)),
    ("red pen on white", (200, 30, 40), (245, 245, 245)),
    ("red pen on light blue", (190, 40, 50), (190, 220, 245)),
    ("green felt pen on pink", (30, 140, 60), (250, 205, 215)),
    ("black on yellow", (30, 30, 30), (250, 230, 120)),
    ("blue on kraft brown", (30, 40, 120), (200, 160, 110)),
    ("pencil on white", (110, 110, 115), (240, 240, 235)),
    # Pairs about as bright as each other: luminance barely separates them, one colour channel does.
    ("green felt pen on red paper", (40, 160, 60), (200, 80, 80)),
    ("red pen on teal paper", (220, 60, 60), (90, 150, 150)),
)


@dataclass
class Capture:
    """How one capture is drawn; each degradation changes some of these fields."""

    canvas: tuple[int, int] = (CANVAS, CANVAS)  # height, width
    height: float = HEIGHT * CANVAS  # digit height, px
    centre: tuple[float, float] | None = None  # digit centre (y, x); None: canvas centre
    angle: float = 0.0  # degrees, counter-clockwise
    paper: tuple[float, float, float] | float = PAPER
    ink: tuple[float, float, float] | float = INK
    light: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (yy, xx) in 0..1 -> multiplier
    blur: float = 0.0  # Gaussian sigma, px
    noise: float = 0.0  # Gaussian sigma, 0..255
    specks: int = 0
    borders: int = 0
    jpeg_quality: int | None = None  # None: PNG
    exif_orientation: int = 1


@dataclass(frozen=True)
class Degradation:
    name: str
    strength: str  # the documented strength, as the README table shows it
    draw: Callable[[np.random.Generator], Capture]
    glyph: str = "handwritten"  # handwritten: a held-out digit; font: a digit drawn in a TrueType font


def _linear_light(rng: np.random.Generator, darkest: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    theta = rng.uniform(0, 2 * np.pi)
    dy, dx = np.sin(theta), np.cos(theta)

    def light(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        t = (yy - 0.5) * dy + (xx - 0.5) * dx  # -0.71..0.71 across the page
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        return 1.0 - (1.0 - darkest) * t

    return light


def _shadow(rng: np.random.Generator, depth: float, softness: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    theta = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(-0.25, 0.25)  # the shadow's edge passes through the middle half of the page
    dy, dx = np.sin(theta), np.cos(theta)

    def light(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        d = (yy - 0.5) * dy + (xx - 0.5) * dx - offset
        inside = 1.0 / (1.0 + np.exp(-d / (softness / 4)))
        return 1.0 - depth * inside

    return light


def _canvas_and_height(rng: np.random.Generator, sides: tuple[int, int], heights: tuple[float, float]) -> Capture:
    side = int(rng.integers(sides[0], sides[1] + 1))
    return Capture(canvas=(side, side), height=rng.uniform(*heights) * side)


def _off_centre(rng: np.random.Generator) -> Capture:
    side = int(rng.integers(160, 257))
    height = 0.3 * side
    half = height * MNIST_SPAN / 2 * 0.75
    centre = (rng.uniform(half, side - half), rng.uniform(half, side - half))
    return Capture(canvas=(side, side), height=height, centre=centre)


def _ink_colour(rng: np.random.Generator) -> Capture:
    _, ink, paper = INK_PAPER_PAIRS[int(rng.integers(len(INK_PAPER_PAIRS)))]
    return Capture(ink=tuple(float(v) for v in ink), paper=tuple(float(v) for v in paper))


def _mixed(rng: np.random.Generator) -> Capture:
    # The field report: grey paper 200-255, sensor noise, slight blur, 64-256 px, off-centre, rotated.
    side = int(rng.integers(64, 257))
    height = rng.uniform(0.35, 0.6) * side
    half = height * MNIST_SPAN / 2 * 0.75
    return Capture(
        canvas=(side, side), height=height, centre=(rng.uniform(half, side - half), rng.uniform(half, side - half)),
        angle=rng.uniform(-12, 12), paper=rng.uniform(200, 255), ink=rng.uniform(0, 40), noise=6.0,
        blur=0.01 * side,
    )


DEGRADATIONS: tuple[Degradation, ...] = (
    Degradation("paper", "none: dark ink (25) on white paper (245), centred, 112 px PNG", lambda rng: Capture()),
    Degradation("paper_grey", "paper level 110-215, ink 0-40",
                lambda rng: Capture(paper=rng.uniform(110, 215), ink=rng.uniform(0, 40))),
    Degradation("gradient", "light falls linearly to 40% across the page, any direction",
                lambda rng: Capture(light=_linear_light(rng, 0.4))),
    Degradation("shadow", "soft shadow (edge 20% of the page) darkening to 45%, across the middle",
                lambda rng: Capture(light=_shadow(rng, 0.55, 0.2))),
    Degradation("noise", "Gaussian sensor noise, sigma 40 (of 255)", lambda rng: Capture(noise=40.0)),
    Degradation("blur", "Gaussian blur, sigma 4% of the digit height",
                lambda rng: Capture(blur=0.04 * HEIGHT * CANVAS)),
    Degradation("rotation", "rotated uniformly within +-12 degrees", lambda rng: Capture(angle=rng.uniform(-12, 12))),
    Degradation("scale", "canvas 64-256 px, digit 20-95% of it",
                lambda rng: _canvas_and_height(rng, (64, 256), (0.2, 0.95))),
    Degradation("offset", "digit 30% of a 160-256 px page, anywhere on it", _off_centre),
    Degradation("jpeg", "JPEG quality 20", lambda rng: Capture(jpeg_quality=20)),
    Degradation("ink_colour", f"{len(INK_PAPER_PAIRS)} ink/paper colour pairs (blue on yellow, green on red, ...)",
                _ink_colour),
    Degradation("exif_rotation", "JPEG stored rotated 90/180/270 degrees with the EXIF orientation tag",
                lambda rng: Capture(jpeg_quality=92, exif_orientation=int(rng.choice([3, 6, 8])))),
    Degradation("specks", "15 dark specks (radius 1-3 px) scattered over the page", lambda rng: Capture(specks=15)),
    Degradation("page_border", "dark band 2-6 px along 1-4 edges (paper edge, table)",
                lambda rng: Capture(borders=int(rng.integers(1, 5)))),
    Degradation("mixed", "grey paper 200-255, noise 6, blur, 64-256 px, off-centre, +-12 degrees", _mixed),
    Degradation("font", "digits in the fonts matplotlib ships (DejaVu, STIX, Computer Modern), 112 px",
                lambda rng: Capture(height=rng.uniform(0.5, 0.7) * CANVAS), glyph="font"),
)
NAMES = tuple(d.name for d in DEGRADATIONS)


# --------------------------------------------------------------------------- drawing


def glyph_from_digit(digit: np.ndarray, height: float, angle: float) -> np.ndarray:
    """An MNIST digit (white on black, 28x28) scaled so the 20 px box is `height` px; alpha 0..1."""
    side = max(8, round(height * MNIST_SPAN))
    img = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    if angle:
        img = img.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    return np.asarray(img, dtype=np.float32) / 255.0


def _font_paths() -> list[Path]:
    import matplotlib  # only for the fonts it ships; pyplot is never imported

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
             "STIXGeneral.ttf", "STIXGeneralBol.ttf", "cmr10.ttf", "cmss10.ttf")
    found = [ttf / n for n in names if (ttf / n).is_file()]
    if not found:
        raise ToolkitError(f"no TrueType fonts found in {ttf}; the font class needs matplotlib's bundled fonts")
    return found


def _glyph_from_font(label: int, font_path: Path, height: float, angle: float) -> np.ndarray:
    size = 200
    font = ImageFont.truetype(str(font_path), size)
    img = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(img).text((size // 2, size // 4), str(label), fill=255, font=font)
    box = img.getbbox()
    if box is None:
        raise ToolkitError(f"{font_path.name} draws nothing for {label}")
    img = img.crop(box)
    scale = height / img.height
    img = img.resize((max(1, round(img.width * scale)), max(1, round(height))), Image.Resampling.LANCZOS)
    if angle:
        img = img.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    return np.asarray(img, dtype=np.float32) / 255.0


def render(alpha: np.ndarray, cap: Capture, rng: np.random.Generator) -> bytes:
    """Ink coverage (0..1, any size) -> encoded capture bytes, as `cap` describes."""
    h, w = cap.canvas
    cy, cx = cap.centre if cap.centre is not None else (h / 2, w / 2)
    coverage = np.zeros((h, w), np.float32)
    top, left = round(cy - alpha.shape[0] / 2), round(cx - alpha.shape[1] / 2)
    # Clip the glyph to the canvas (a rotated square's empty corners may stick out).
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(h, top + alpha.shape[0]), min(w, left + alpha.shape[1])
    coverage[y0:y1, x0:x1] = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
    paper = np.asarray(cap.paper, np.float32).reshape(1, 1, -1)
    ink = np.asarray(cap.ink, np.float32).reshape(1, 1, -1)
    img = paper * (1 - coverage[..., None]) + ink * coverage[..., None]
    for _ in range(cap.specks):
        y, x, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 3)
        yy, xx = np.ogrid[:h, :w]
        img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = ink
    if cap.borders:
        table = float(rng.uniform(30, 80))
        for edge in rng.permutation(4)[: cap.borders]:
            width = int(rng.integers(2, 7))
            region = [np.s_[:width, :], np.s_[-width:, :], np.s_[:, :width], np.s_[:, -width:]][edge]
            img[region] = table
    if cap.light is not None:
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        img = img * cap.light(yy, xx)[..., None].astype(np.float32)
    if cap.blur:
        # Pillow blurs 8-bit images only: one channel at a time, before the noise (as a lens would).
        planes = np.clip(np.round(img), 0, 255).astype(np.uint8)
        blur = ImageFilter.GaussianBlur(cap.blur)
        blurred = [Image.fromarray(planes[..., c]).filter(blur) for c in range(img.shape[2])]
        img = np.stack([np.asarray(b, np.float32) for b in blurred], axis=-1)
    if cap.noise:
        img = img + rng.normal(0, cap.noise, img.shape).astype(np.float32)
    pixels = np.clip(np.round(img), 0, 255).astype(np.uint8)
    out = Image.fromarray(pixels[..., 0], "L") if pixels.shape[2] == 1 else Image.fromarray(pixels, "RGB")
    return _encode(out, cap)


# The transpose that, applied to the upright image, gives the pixels a camera stores with that tag.
_STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _encode(img: Image.Image, cap: Capture) -> bytes:
    buf = io.BytesIO()
    if cap.exif_orientation != 1:
        img = img.transpose(_STORED[cap.exif_orientation])
        exif = Image.Exif()
        exif[0x0112] = cap.exif_orientation
        img.save(buf, format="JPEG", quality=cap.jpeg_quality or 92, exif=exif.tobytes())
    elif cap.jpeg_quality is not None:
        img.save(buf, format="JPEG", quality=cap.jpeg_quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the set


@dataclass
class CaptureSet:
    """Encoded captures with their labels and degradation class, in class order."""

    payloads: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def of(self, name: str) -> tuple[list[bytes], np.ndarray]:
        idx = [i for i, c in enumerate(self.classes) if c == name]
        return [self.payloads[i] for i in idx], np.asarray([self.labels[i] for i in idx], dtype=np.int64)


def degradation(name: str) -> Degradation:
    for d in DEGRADATIONS:
        if d.name == name:
            return d
    raise ToolkitError(f"degradation {name!r} is not known; expected one of {', '.join(NAMES)}")


def make_captures(
    digits: np.ndarray, labels: np.ndarray, names: Sequence[str] = NAMES, per_class: int | None = None, seed: int = 0
) -> CaptureSet:
    """Render `per_class` captures of every named degradation (default: every held-out digit).

    The digits are taken in an order balanced over labels, so a small `per_class` still covers
    every class equally. Fonts cycle through matplotlib's fonts and the ten digits.
    """
    order = _balanced_order(labels)
    count = len(order) if per_class is None else min(per_class, len(order))
    out = CaptureSet()
    fonts: list[Path] | None = None
    for name in names:
        deg = degradation(name)
        rng = np.random.default_rng((seed, NAMES.index(name)))
        for k in range(count):
            cap = deg.draw(rng)
            if deg.glyph == "font":
                fonts = fonts or _font_paths()
                label = k % 10
                alpha = _glyph_from_font(label, fonts[(k // 10) % len(fonts)], cap.height, cap.angle)
            else:
                i = order[k]
                label = int(labels[i])
                alpha = glyph_from_digit(digits[i], cap.height, cap.angle)
            out.payloads.append(render(alpha, cap, rng))
            out.labels.append(label)
            out.classes.append(name)
    logger.debug("rendered %d captures in %d classes", len(out.payloads), len(names))
    return out


def _balanced_order(labels: np.ndarray) -> list[int]:
    """Indices interleaved by label: first of each class, then the second of each, ..."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order: list[int] = []
    for k in range(max(len(b) for b in by_class)):
        order += [int(b[k]) for b in by_class if k < len(b)]
    return order
