"""Encoding images for requests: the ensemble takes encoded PNG/JPEG bytes, one per batch element."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W] grayscale -> PNG bytes (lossless, so the server sees exactly these pixels)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def bytes_batch(items: Iterable[bytes]) -> np.ndarray:
    """A BYTES tensor [N, 1] (Triton's object-array form) from encoded images."""
    items = list(items)
    batch = np.empty((len(items), 1), dtype=np.object_)
    for i, item in enumerate(items):
        batch[i, 0] = item
    return batch


def read_files(paths: Iterable[Path | str]) -> list[bytes]:
    return [Path(p).read_bytes() for p in paths]
