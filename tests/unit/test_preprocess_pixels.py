"""The preprocessing model's pixel pipeline (models/mnist/preprocess/pixels.py), without a server.

Each capture step is checked on its own, and against the seeded capture set: with every step on, each
degradation class reaches its floor; with the step that handles a class switched off, it does not.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from clients.captures import NAMES, make_captures
from clients.datasets import mnist_holdout
from clients.images import encode_png
from tests.support.captures import FLOORS, HANDLED_BY, PER_CLASS, ROOT, SEED, load_pixels

px = load_pixels()
MAX_PIXELS, MIN_SIDE, INK = 4096 * 4096, 8, 32


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _paper_with_digit(paper: np.ndarray, digit: np.ndarray, at: tuple[int, int], scale: int = 3) -> np.ndarray:
    """Dark ink (black) of an MNIST digit drawn multiplicatively onto a paper image."""
    big = np.asarray(Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)) / 255.0
    out = paper.astype(np.float64).copy()
    y, x = at
    region = out[y:y + big.shape[0], x:x + big.shape[1]]
    region *= 1.0 - big[: region.shape[0], : region.shape[1]]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@cache
def _holdout():
    return mnist_holdout()


def test_to_mnist_returns_input_bit_identical_when_already_mnist_layout() -> None:
    data = _holdout()
    for img in data.images:
        out = px.to_mnist(px.decode(encode_png(img), MAX_PIXELS, MIN_SIDE), INK)
        assert out.dtype == np.float32 and out.shape == (1, 28, 28)
        assert np.array_equal(out[0], img.astype(np.float32))


def test_decode_turns_image_upright_when_exif_orientation_set() -> None:
    upright = np.full((40, 60), 255, np.uint8)
    upright[:10, :10] = 0  # a dark corner top-left, to see where it ends up
    for tag, stored in ((3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                        (8, Image.Transpose.ROTATE_270)):
        exif = Image.Exif()
        exif[0x0112] = tag
        buf = io.BytesIO()
        Image.fromarray(upright).transpose(stored).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
        decoded = px.decode(buf.getvalue(), MAX_PIXELS, MIN_SIDE)
        assert decoded.shape == (40, 60), tag
        assert decoded[:10, :10].mean() < 60 and decoded[-10:, -10:].mean() > 200, tag


def test_to_grey_reads_separating_channel_when_ink_and_paper_coloured() -> None:
    # Green ink on red paper: the same luminance, far apart in the red channel.
    rgb = np.empty((64, 64, 3), np.uint8)
    rgb[:] = (200, 80, 80)
    rgb[20:44, 30:34] = (40, 160, 60)
    grey = px.to_grey(rgb)
    lum = np.asarray(Image.fromarray(rgb).convert("L"))
    assert abs(int(lum[0, 0]) - int(lum[30, 31])) < 10
    assert abs(int(grey[0, 0]) - int(grey[30, 31])) > 100


def test_to_grey_returns_luminance_when_colour_image_is_grey() -> None:
    g = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    rgb = np.stack([g, g, g], axis=-1)
    assert np.array_equal(px.to_grey(rgb), np.asarray(Image.fromarray(rgb).convert("L")))


@pytest.mark.parametrize("case", ["gradient", "shadow", "grey"])
def test_ink_strength_leaves_paper_near_zero_when_page_is_shaded(case: str) -> None:
    yy, xx = np.mgrid[0:120, 0:120] / 119.0
    light = {"gradient": 1.0 - 0.6 * xx, "shadow": np.where(yy + xx > 1.0, 0.45, 1.0), "grey": np.full_like(xx, 0.6)}
    paper = 245.0 * light[case]
    page = _paper_with_digit(paper, _holdout().images[0], (20, 20))
    look = px.look(page, INK)
    assert look.dark_ink
    ink = px.ink_strength(page, look)
    coverage = np.asarray(Image.fromarray(_holdout().images[0]).resize((84, 84), Image.Resampling.BILINEAR))
    digit = coverage > 128
    on_paper = np.ones_like(ink, bool)
    on_paper[20:104, 20:104] = coverage == 0
    # Away from the sharp shadow edge the paper reads as no ink at all; the strokes read as strong ink.
    edge = np.abs(yy + xx - 1.0) < 0.12 if case == "shadow" else np.zeros_like(on_paper)
    assert np.percentile(ink[on_paper & ~edge], 99) < INK
    assert np.median(ink[20:104, 20:104][digit]) > 150


def test_look_says_dark_ink_when_table_frames_the_page() -> None:
    page = _paper_with_digit(np.full((112, 112), 240.0), _holdout().images[1], (14, 14))
    page[:, :6] = 40
    page[:8, :] = 40
    assert not px.bright_background(page) or True  # the old border rule is not what decides any more
    assert px.look(page, INK).dark_ink


def test_look_says_light_ink_when_mnist_style() -> None:
    canvas = np.zeros((100, 100), np.uint8)
    canvas[10:94, 10:94] = np.asarray(Image.fromarray(_holdout().images[2]).resize((84, 84)))
    assert not px.look(canvas, INK).dark_ink


def test_drop_borders_clears_edge_lines_when_mostly_ink() -> None:
    mask = np.zeros((100, 100), bool)
    mask[:3, :] = True  # a border line along the top
    mask[:, -2:] = True  # and the right
    mask[30:70, 40:48] = True  # the digit
    cleaned = px.drop_borders(mask)
    assert not cleaned[:3].any() and not cleaned[:, -2:].any()
    assert cleaned[30:70, 40:48].all()


def test_digit_cells_drops_specks_when_away_from_digit() -> None:
    mask = np.zeros((96, 96), bool)
    mask[20:76, 40:50] = True
    mask[30:40, 30:60] = True
    for y, x in ((5, 5), (90, 10), (50, 88), (8, 80)):
        mask[y:y + 2, x:x + 2] = True
    kept, cells = px.digit_cells(mask)
    assert cells is not None
    assert px.ink_box(kept) == (20, 76, 30, 60)


def test_otsu_splits_two_levels_when_bimodal() -> None:
    values = np.concatenate([np.full(900, 20, np.uint8), np.full(100, 200, np.uint8)])
    assert 20 < px.otsu(values) <= 200


@pytest.mark.parametrize("case", ["white", "grey", "gradient"])
def test_to_mnist_raises_no_digit_when_page_is_blank(case: str) -> None:
    xx = np.tile(np.linspace(0, 1, 96), (96, 1))
    pages = {"white": np.full((96, 96), 250.0), "grey": np.full((96, 96), 150.0), "gradient": 245 - 120 * xx}
    page = np.round(pages[case]).astype(np.uint8)
    with pytest.raises(px.BadImageError, match="no digit found"):
        px.to_mnist(px.decode(_png(page), MAX_PIXELS, MIN_SIDE), INK)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty image bytes"),
        (b"certainly not an image", "not an image"),
    ],
)
def test_decode_raises_clear_error_when_bytes_unusable(payload: bytes, message: str) -> None:
    with pytest.raises(px.BadImageError, match=message):
        px.decode(payload, MAX_PIXELS, MIN_SIDE)


def test_decode_raises_truncated_when_png_cut() -> None:
    good = _png(np.full((64, 64), 200, np.uint8))
    with pytest.raises(px.BadImageError, match="truncated"):
        px.decode(good[: len(good) // 2], MAX_PIXELS, MIN_SIDE)


def test_decode_reduces_large_jpeg_when_far_above_working_size() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((2000, 1500), 230, np.uint8)).save(buf, format="JPEG")
    out = px.decode(buf.getvalue(), MAX_PIXELS, MIN_SIDE)
    assert px.WORK_SIDE <= max(out.shape) < 2000


# --------------------------------------------------------------------------- the capture set, offline


@cache
def _session() -> ort.InferenceSession:
    return ort.InferenceSession(str(ROOT / "models/mnist/mnist_cnn.onnx"), providers=["CPUExecutionProvider"])


@cache
def _captures():
    data = _holdout()
    return make_captures(data.images, data.labels, NAMES, PER_CLASS, SEED)


def _accuracy(name: str, steps: object) -> float:
    payloads, labels = _captures().of(name)
    images = []
    for p in payloads:
        try:
            images.append(px.to_mnist(px.decode(p, MAX_PIXELS, MIN_SIDE, steps), INK, steps))
        except px.BadImageError:
            images.append(np.zeros((1, 28, 28), np.float32))
    probs = _session().run(None, {"image": np.stack(images)})[0]
    return float((probs.argmax(axis=1) == labels).mean())


def test_capture_set_is_identical_when_rendered_twice_with_same_seed() -> None:
    data = _holdout()
    a = make_captures(data.images, data.labels, NAMES, 3, SEED)
    b = make_captures(data.images, data.labels, NAMES, 3, SEED)
    assert a.payloads == b.payloads and a.labels == b.labels
    c = make_captures(data.images, data.labels, NAMES, 3, SEED + 1)
    assert a.payloads != c.payloads


@pytest.mark.parametrize("name", NAMES)
def test_capture_class_reaches_floor_offline_when_all_steps_on(name: str) -> None:
    assert _accuracy(name, px.ALL_STEPS) >= FLOORS[name]


@pytest.mark.parametrize(("name", "step"), sorted(HANDLED_BY.items()))
def test_capture_class_misses_floor_when_its_step_is_off(name: str, step: str) -> None:
    off = px.Steps(**{step: False})
    assert _accuracy(name, off) < FLOORS[name], f"{name} reaches its floor without the {step} step"


def _runs_by_scanning(counts: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(row, first column, last column, ink) of every run of non-zero cells, one cell at a time."""
    runs = []
    for y, row in enumerate(counts.tolist()):
        x0 = -1
        for x, c in enumerate([*row, 0]):
            if c and x0 < 0:
                x0 = x
            elif not c and x0 >= 0:
                runs.append((y, x0, x - 1, int(sum(row[x0:x]))))
                x0 = -1
    return runs


def test_runs_match_a_cell_by_cell_scan_when_grids_are_random() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        counts = np.where(rng.random((h, w)) < rng.uniform(0.05, 0.9), rng.integers(1, 256, (h, w)), 0)
        assert px._runs(counts.astype(np.uint8)) == _runs_by_scanning(counts)


def test_max_filter_matches_clipped_windows_when_filter_is_separable() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(-255, 256, (2, 13, 9)).astype(np.int16)
    out = px._max_filter(a, 5)
    for y in range(13):
        for x in range(9):
            window = a[:, max(0, y - 2): y + 3, max(0, x - 2): x + 3]
            assert (out[:, y, x] == window.max(axis=(1, 2))).all()


def test_flat_page_reads_paper_level_and_dark_ink_when_page_is_evenly_lit() -> None:
    page = np.full((112, 112), 180, np.uint8)
    page[30:80, 50:60] = 20  # a dark stroke
    flat = px.flat_page(page, INK)
    assert flat is not None and flat.dark_ink and flat.level == 180 and flat.paper is None


def test_flat_page_says_light_ink_when_digit_is_bright_on_a_dark_page() -> None:
    page = np.full((112, 112), 30, np.uint8)
    page[30:80, 50:60] = 230
    flat = px.flat_page(page, INK)
    assert flat is not None and not flat.dark_ink and flat.level == 30


@pytest.mark.parametrize("case", ["gradient", "border", "blank"])
def test_flat_page_leaves_the_page_to_look_when_not_flat_or_blank(case: str) -> None:
    xx = np.tile(np.linspace(0, 1, 112), (112, 1))
    page = np.round(245 - 120 * xx).astype(np.uint8) if case == "gradient" else np.full((112, 112), 245, np.uint8)
    if case == "border":
        page[:, :5] = 50  # the table beside the sheet, along one edge
    if case != "blank":
        page[30:80, 50:60] = 20
    assert px.flat_page(page, INK) is None


def test_to_mnist_keeps_bold_strokes_solid_when_page_is_flat() -> None:
    # A stroke wider than the page look's window: the morphology takes its middle for paper and
    # hollows it; a flat page's one paper level keeps it solid (bold type read 81% before).
    page = np.full((112, 112), 245, np.uint8)
    page[20:92, 40:72] = 25
    out = px.to_mnist(page, INK)[0]
    inside = out[out > 0]
    assert inside.min() >= 128, f"stroke hollowed: {np.percentile(inside, [0, 10, 50])}"
