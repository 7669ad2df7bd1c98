"""Triton Python-backend model: encoded PNG/JPEG bytes -> a 28x28 MNIST-style digit (raw 0-255 floats).

First step of the `mnist` ensemble. Each batch element is one encoded image. The steps follow how
MNIST was made: grayscale; white ink on black (inverted when the background is bright, as in photos
of dark ink on paper); the digit's bounding box scaled into 20x20 keeping its aspect ratio; pasted
into 28x28 so that its centre of mass sits at the centre. A 28x28 image that already has that layout
(an MNIST digit saved as PNG) passes through bit-identical.

A request whose image is unusable (empty, not PNG/JPEG, truncated, too large, too small, blank) gets
its own error naming the problem; the other requests of the batch are answered normally.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image, UnidentifiedImageError

SIDE = 28
BOX = 20
ALLOWED_FORMATS = ("PNG", "JPEG")


class BadImageError(ValueError):
    """One image cannot be turned into a digit; the message is sent back to the client."""


class BudgetError(BadImageError):
    """A request asks for more work than one request may: refused before (or while) decoding."""


@dataclass(frozen=True)
class RequestBudget:
    """Per-request limits (config parameters, from the spec): one request cannot hold the single
    preprocessing instance for long, whatever its images say about themselves."""

    max_images: int = 256
    max_element_bytes: int = 4 << 20
    max_total_pixels: int = 4096 * 4096
    deadline_s: float = 1.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RequestBudget:
        return cls(
            max_images=_param(config, "max_images_per_request", cls.max_images),
            max_element_bytes=_param(config, "max_element_bytes", cls.max_element_bytes),
            max_total_pixels=_param(config, "max_pixels_per_request", cls.max_total_pixels),
            deadline_s=_param(config, "deadline_ms", int(cls.deadline_s * 1000)) / 1000.0,
        )


def header_pixels(data: bytes) -> int:
    """Width x height from the header only (0 when unreadable: decode() reports that image itself)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:
        return 0
    return width * height


def check_budget(items: list[bytes], budget: RequestBudget, max_pixels: int) -> None:
    """Everything a request's size can be checked by, before a single pixel is decoded.

    An image above the per-image limit is not counted: decode() refuses it with its own reason.
    """
    if len(items) > budget.max_images:
        raise BudgetError(f"{len(items)} images in one request, above the limit of {budget.max_images}")
    for i, raw in enumerate(items):
        if len(raw) > budget.max_element_bytes:
            raise BudgetError(
                f"image {i} is {len(raw)} bytes, above the limit of {budget.max_element_bytes} bytes per image"
            )
    total = sum(n for n in (header_pixels(raw) for raw in items) if n <= max_pixels)
    if total > budget.max_total_pixels:
        raise BudgetError(
            f"the request's images hold {total} pixels in all, above the limit of {budget.max_total_pixels} "
            f"pixels per request; send fewer or smaller images"
        )


def check_deadline(started: float, budget: RequestBudget, done: int, total: int) -> None:
    """Called between images: a request past its deadline stops and says how far it got."""
    elapsed = time.monotonic() - started
    if elapsed > budget.deadline_s:
        raise BudgetError(
            f"preprocessing deadline of {budget.deadline_s * 1000:.0f} ms exceeded after {done} of {total} "
            f"images ({elapsed * 1000:.0f} ms)"
        )


# A digit is a stroke on a background. Below this contrast (max - min) there is no stroke at all; above
# this share of inked pixels the "digit" is a filled area or noise. MNIST's 5,000 digits ink at most
# MAX_INK_SHARE of their 28x28 canvas (see MODEL_CARD.md): the bound leaves a wide margin.
MAX_INK_SHARE = 0.6


def check_plausible(gray: np.ndarray, ink_threshold: int) -> None:
    """Refuse captures in which no digit can be: a uniform image, or one inked nearly everywhere.

    Without this, a uniform grey image is "inverted", thresholded to all ink, and the network answers
    "8" with p=1.000: a confident answer about nothing. Refusing tells the client what is wrong.
    """
    low, high = int(gray.min()), int(gray.max())
    if high - low < ink_threshold:
        raise BadImageError(
            f"no digit found: the image is uniform (pixel values {low}-{high}, contrast {high - low} below "
            f"{ink_threshold})"
        )
    if _bright_background(gray):
        gray = 255 - gray
    share = float(np.count_nonzero(gray >= ink_threshold)) / gray.size
    if share > MAX_INK_SHARE:
        raise BadImageError(
            f"no digit found: {share:.0%} of the pixels are ink (noise or a filled area); a digit covers at "
            f"most {MAX_INK_SHARE:.0%}"
        )


def _param(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return int(value) if value not in (None, "") else default


def decode(data: bytes, max_pixels: int, min_side: int) -> np.ndarray:
    """Encoded bytes -> grayscale uint8 array, with every check done before pixels are decoded."""
    if not data:
        raise BadImageError("empty image bytes; expected an encoded PNG or JPEG image")
    try:
        # open() reads the header only: size and format are known before any pixel is decoded.
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise BadImageError(f"not an image ({len(data)} bytes, format not recognised); expected PNG or JPEG") from e
    except Image.DecompressionBombError as e:
        raise BadImageError(f"image too large: {e}") from e
    if img.format not in ALLOWED_FORMATS:
        raise BadImageError(f"image format {img.format} is not supported; expected PNG or JPEG")
    width, height = img.size
    if width * height > max_pixels:
        raise BadImageError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
            f"(decompression bomb protection)"
        )
    if min(width, height) < min_side:
        raise BadImageError(f"image is {width}x{height} pixels; a digit needs at least {min_side}x{min_side}")
    try:
        # No bomb warning can fire here: the pixel count was checked against the same limit above.
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"corrupt or truncated {img.format} image: {e}") from e
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent canvases are drawn on as if on white paper.
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _bright_background(gray: np.ndarray) -> bool:
    """Most of the border is bright (median above mid-grey): dark ink on paper, to be inverted."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return 2 * int(np.count_nonzero(border > 127)) > border.size


def _centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    total = float(img.sum())
    ys = np.arange(img.shape[0], dtype=np.float64)
    xs = np.arange(img.shape[1], dtype=np.float64)
    return float(img.sum(axis=1) @ ys) / total, float(img.sum(axis=0) @ xs) / total


def _extent(mask: np.ndarray) -> int:
    idx = np.flatnonzero(mask)
    return int(idx[-1] - idx[0] + 1)


def _is_mnist_layout(img: np.ndarray) -> bool:
    """28x28, digit within a 20x20 box, centre of mass within 2 px of the centre."""
    if img.shape != (SIDE, SIDE):
        return False
    rows, cols = img.any(axis=1), img.any(axis=0)
    if not rows.any() or _extent(rows) > BOX or _extent(cols) > BOX:
        return False
    cy, cx = _centre_of_mass(img.astype(np.float64))
    return abs(cy - SIDE / 2) <= 2 and abs(cx - SIDE / 2) <= 2


def to_mnist(gray: np.ndarray, ink_threshold: int) -> np.ndarray:
    """Grayscale uint8 of any size -> float32 [1, 28, 28] in MNIST's layout (white on black)."""
    if _bright_background(gray):
        gray = 255 - gray
    if _is_mnist_layout(gray):
        return gray.astype(np.float32)[None]
    # Paper texture and JPEG noise would stretch the bounding box: drop faint pixels first.
    ink = np.where(gray >= ink_threshold, gray, 0).astype(np.uint8)
    if not ink.any():
        raise BadImageError(f"no digit found: every pixel is below the ink threshold {ink_threshold} (blank image)")
    rows, cols = np.nonzero(ink)
    crop = ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    box = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS), dtype=np.float64)
    box = np.clip(box, 0, 255)
    if box.sum() == 0:
        raise BadImageError("no digit found after scaling (the ink is too thin)")
    cy, cx = _centre_of_mass(box)
    top = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - new_h))
    left = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - new_w))
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top: top + new_h, left: left + new_w] = np.round(box)
    return out[None]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.max_pixels = _param(self.config, "max_pixels", 4096 * 4096)
        self.min_side = _param(self.config, "min_side", 8)
        self.ink_threshold = _param(self.config, "ink_threshold", 32)
        self.budget = RequestBudget.from_config(self.config)
        inputs = {i["name"]: i for i in self.config["input"]}
        outputs = {o["name"]: o for o in self.config["output"]}
        if "image_bytes" not in inputs or inputs["image_bytes"]["data_type"] != "TYPE_STRING":
            raise pb_utils.TritonModelException(f"{self.name}: needs a BYTES input named 'image_bytes'")
        if "image" not in outputs or [int(d) for d in outputs["image"]["dims"]] != [1, SIDE, SIDE]:
            raise pb_utils.TritonModelException(f"{self.name}: needs an output 'image' with dims [1, 28, 28]")
        self.batching = int(self.config.get("max_batch_size", 0)) > 0
        # Pillow's own bomb check would only warn below 2x its limit; ours runs on the header first.
        Image.MAX_IMAGE_PIXELS = self.max_pixels

    def _one(self, request: Any) -> Any:
        data = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy()
        flat = data.reshape(-1)
        items = [item if isinstance(item, bytes) else bytes(item) for item in flat]
        check_budget(items, self.budget, self.max_pixels)
        started = time.monotonic()
        images = []
        for i, raw in enumerate(items):
            if i:
                check_deadline(started, self.budget, i, len(items))
            try:
                gray = decode(raw, self.max_pixels, self.min_side)
                check_plausible(gray, self.ink_threshold)
                images.append(to_mnist(gray, self.ink_threshold))
            except BudgetError:
                raise
            except BadImageError as e:
                where = f"image {i}" if flat.size > 1 else "image"
                raise BadImageError(f"{where}: {e}") from e
        batch = np.stack(images) if self.batching else images[0]
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", batch.astype(np.float32))])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except BadImageError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.name}: {e}", pb_utils.TritonError.INVALID_ARG)
                ))
        return responses
