"""The cheap per-image input statistics (contract.STAT_NAMES), vectorised over a batch, and the
cumulative bucket counts the in-Triton metrics export.

Pure numpy, no Triton: the preprocessing model, the serving-side monitor (control.monitor.serving) and
the build-time reference (control.monitor.reference) all compute the statistics here, so a reference
and live traffic are measured the same way. Nothing here knows what the images show: an image is a
[..., H, W] array of non-negative values, `scale` the value of full ink (255 for raw 0-255 pixels),
and ink is bright (the classifier's input convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from control.monitor.contract import STAT_NAMES

# A pixel counts as ink above this share of full ink (MNIST's own strokes are mostly above 0.5; its
# anti-aliased edges reach down to 0.1; 0.2 keeps faint edges out of the bounding box).
INK_LEVEL = 0.2

PIXEL_STATS: tuple[str, ...] = STAT_NAMES[:4]  # computed from the model-ready image itself

# Prometheus bucket upper bounds per statistic (le labels; +Inf is added). Fixed, not learned: the
# series must stay comparable across versions and restarts. The drift monitor uses the reference's
# own held-out quantile bins; these only have to resolve a shift on a dashboard.
STAT_BUCKETS: dict[str, tuple[float, ...]] = {
    "mean_intensity": (0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5),
    "ink_fraction": (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6),
    "bbox_size": (4.0, 8.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 28.0),
    "com_offset": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0),
    "original_size": (0.5, 28.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0),
}
# Top-1 probability (confidence) buckets: fine near 1, where a healthy classifier lives.
TOP_PROBABILITY_BUCKETS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


def image_stats(images: np.ndarray, scale: float = 255.0) -> np.ndarray:
    """[N, 4] float64: mean_intensity, ink_fraction, bbox_size, com_offset per image (PIXEL_STATS order).

    `images` is [N, ..., H, W] (leading channel dims of size 1 are averaged away). Units: intensities in
    [0, 1] of `scale`; bbox_size is sqrt(height * width) of the ink's bounding box in pixels (0 when no
    ink); com_offset is the distance in pixels from the intensity-weighted centre of mass to the image
    centre (0 for a blank image). One pass of vectorised numpy per batch, no Python loop over images.
    """
    arr = np.asarray(images, dtype=np.float32)
    n = arr.shape[0]
    if n == 0:
        return np.zeros((0, len(PIXEL_STATS)))
    h, w = arr.shape[-2:]
    arr = arr.reshape(n, -1, h, w)
    # One channel (the usual case) is a view, not an averaged copy. Values stay in input units (full ink
    # = scale) and are divided once per image at the end: fewer full passes over the batch.
    x = arr[:, 0] if arr.shape[1] == 1 else arr.mean(axis=1)
    x = np.clip(x, 0.0, np.float32(scale))
    out = np.empty((n, len(PIXEL_STATS)), dtype=np.float64)
    row_sums = x.sum(axis=2).astype(np.float64)  # [N, H]
    col_sums = x.sum(axis=1).astype(np.float64)  # [N, W]
    mass = row_sums.sum(axis=1)
    out[:, 0] = mass / (h * w * float(scale))
    ink = x > np.float32(INK_LEVEL * scale)
    out[:, 1] = np.count_nonzero(ink, axis=(1, 2)) / float(h * w)
    rows = ink.any(axis=2)  # [N, H]
    cols = ink.any(axis=1)  # [N, W]
    has = rows.any(axis=1)
    top = np.argmax(rows, axis=1)
    bottom = h - 1 - np.argmax(rows[:, ::-1], axis=1)
    left = np.argmax(cols, axis=1)
    right = w - 1 - np.argmax(cols[:, ::-1], axis=1)
    out[:, 2] = np.where(has, np.sqrt((bottom - top + 1.0) * (right - left + 1.0)), 0.0)
    safe = np.where(mass > 0, mass, 1.0)
    cy = (row_sums @ np.arange(h, dtype=np.float64)) / safe
    cx = (col_sums @ np.arange(w, dtype=np.float64)) / safe
    out[:, 3] = np.where(mass > 0, np.hypot(cy - (h - 1) / 2.0, cx - (w - 1) / 2.0), 0.0)
    return out


class CumulativeHistogram:
    """Prometheus-style histogram counts (cumulative `le` buckets, sum, count) for one label set,
    accumulated with numpy and handed out as deltas since the last `take()`.

    Why not Triton's HISTOGRAM metric kind (present in the 2.51 Python backend): its `observe()` takes one
    value per call, and every call is a round trip from the stub to the server process. These counts
    are added per batch and exported as counters, one increment per bucket per flush, off the request path.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(sorted(bounds), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # per bucket (not cumulative); last = +Inf
        self._sum = 0.0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size == 0:
            return
        # side="left": a value equal to a bound belongs to that bound's bucket (le = less or equal).
        idx = np.searchsorted(self.bounds, values, side="left")
        self._counts += np.bincount(idx, minlength=len(self._counts))
        self._sum += float(values.sum())

    def take(self) -> tuple[np.ndarray, float, int]:
        """(cumulative bucket deltas aligned with bounds + [+Inf], sum delta, count delta); resets."""
        cumulative = np.cumsum(self._counts)
        total = float(self._sum)
        self._counts[:] = 0
        self._sum = 0.0
        return cumulative, total, int(cumulative[-1])


def le_label(bound: float) -> str:
    """Prometheus's `le` label text for a bucket bound (+Inf for the open end)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))
