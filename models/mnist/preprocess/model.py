"""Triton Python-backend model: encoded PNG/JPEG bytes -> a 28x28 MNIST-style digit (raw 0-255 floats).

First step of the `mnist` ensemble. Each batch element is one encoded image. The pixel work lives in
`pixels.py` next to this file (decode with EXIF orientation, ink channel, background removal,
adaptive ink mask, MNIST layout); this file is the Triton glue: configuration, batching, errors.
A 28x28 image that already has MNIST's layout (an MNIST digit saved as PNG) passes through
bit-identical.

A request whose image is unusable (empty, not PNG/JPEG, truncated, too large, too small, blank, no
plausible digit) gets its own error naming the problem; the other requests of the batch are answered
normally. Per-request budgets (images, bytes per image, pixels per request, a deadline) are checked from
the headers before anything is decoded, so one request cannot hold the instance for long.

Monitoring (`monitoring.enabled`, from the spec's `monitoring:` section): the input statistics of every
image it produced (control/monitor/stats.py, once per batch, vectorised; `original_size` from the
header) as histograms, and rejected images by reason, exported by a background thread
(docs/monitoring.md).
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

# The stub imports this file by path; its sibling module is found through its folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))
# On the ngc flavor the watching code (control.monitor) is a copy beside this file, `tdk_monitoring/`
# (build_tools.config.MONITORING_VENDOR_DIR): the official image has no copy of this project's package.
_VENDORED = Path(__file__).resolve().parent / "tdk_monitoring"
if _VENDORED.is_dir() and str(_VENDORED) not in sys.path:
    sys.path.insert(0, str(_VENDORED))
from pixels import SIDE, BadImageError, decode, to_mnist  # noqa: E402

ORIGINAL_SIZE = "size"


class BudgetError(BadImageError):
    """A request asks for more work than one request may: refused before (or while) decoding."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "budget")


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


def check_budget(items: list[bytes], budget: RequestBudget, max_pixels: int) -> list[int]:
    """Everything a request's size can be checked by, before a single pixel is decoded; returns each
    image's pixel count from its header (0 when unreadable).

    An image above the per-image limit is not counted: decode() refuses it with its own reason.
    """
    if len(items) > budget.max_images:
        raise BudgetError(f"{len(items)} images in one request, above the limit of {budget.max_images}")
    for i, raw in enumerate(items):
        if len(raw) > budget.max_element_bytes:
            raise BudgetError(
                f"image {i} is {len(raw)} bytes, above the limit of {budget.max_element_bytes} bytes per image"
            )
    sizes = [header_pixels(raw) for raw in items]
    total = sum(n for n in sizes if n <= max_pixels)
    if total > budget.max_total_pixels:
        raise BudgetError(
            f"the request's images hold {total} pixels in all, above the limit of {budget.max_total_pixels} "
            f"pixels per request; send fewer or smaller images"
        )
    return sizes


def check_deadline(started: float, budget: RequestBudget, done: int, total: int) -> None:
    """Called between images: a request past its deadline stops and says how far it got."""
    elapsed = time.monotonic() - started
    if elapsed > budget.deadline_s:
        raise BudgetError(
            f"preprocessing deadline of {budget.deadline_s * 1000:.0f} ms exceeded after {done} of {total} "
            f"images ({elapsed * 1000:.0f} ms)"
        )


def _param(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return int(value) if value not in (None, "") else default


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
        # Optional output: sqrt(height * width) of each image as sent (its header), for the router's
        # prediction log records (the spec's monitoring.models.<classifier>.original_size_input).
        self.original_size = ORIGINAL_SIZE in outputs
        if self.original_size and [int(d) for d in outputs[ORIGINAL_SIZE]["dims"]] != [1]:
            raise pb_utils.TritonModelException(f"{self.name}: output {ORIGINAL_SIZE!r} must have dims [1]")
        # Pillow's own bomb check would only warn below 2x its limit; ours runs on the header first.
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        self.monitor = None
        params = self.config.get("parameters", {})
        if params.get("monitoring.enabled", {}).get("string_value") == "true":
            self.monitor = InputMonitor(
                pb_utils, self.name, args["model_version"], "image_bytes",
                int(params.get("monitoring.flush_ms", {}).get("string_value", "500")) / 1000.0,
            )

    def _one(self, request: Any) -> tuple[Any, np.ndarray, list[int]]:
        """The response, the [N, 1, 28, 28] images and each image's header pixel count."""
        data = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy()
        flat = data.reshape(-1)
        items = [item if isinstance(item, bytes) else bytes(item) for item in flat]
        sizes = check_budget(items, self.budget, self.max_pixels)
        started = time.monotonic()
        images = []
        for i, raw in enumerate(items):
            if i:
                check_deadline(started, self.budget, i, len(items))
            try:
                pixels = decode(raw, self.max_pixels, self.min_side)
                images.append(to_mnist(pixels, self.ink_threshold))
            except BudgetError:
                raise
            except BadImageError as e:
                where = f"image {i}" if flat.size > 1 else "image"
                raise BadImageError(f"{where}: {e}", e.reason) from e
        stacked = np.stack(images)
        batch = stacked if self.batching else images[0]
        tensors = [pb_utils.Tensor("image", batch.astype(np.float32))]
        if self.original_size:
            side = np.sqrt(np.asarray(sizes, dtype=np.float32)).reshape(-1, 1)
            tensors.append(pb_utils.Tensor(ORIGINAL_SIZE, side if self.batching else side[0]))
        return pb_utils.InferenceResponse(output_tensors=tensors), stacked, sizes

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        produced: list[np.ndarray] = []
        sizes: list[int] = []
        rejected: dict[str, int] = {}
        for request in requests:
            try:
                response, images, pixels = self._one(request)
                responses.append(response)
                produced.append(images)
                sizes.extend(pixels)
            except BadImageError as e:
                rejected[e.reason] = rejected.get(e.reason, 0) + 1
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.name}: {e}", pb_utils.TritonError.INVALID_ARG)
                ))
        if self.monitor is not None:
            self.monitor.observe(produced, sizes, rejected)
        return responses

    def finalize(self) -> None:
        if self.monitor is not None:
            self.monitor.close()


# The `reason` of every BadImageError raised here or in pixels.py (tdk_serving_input_rejected_total{reason}).
REJECT_REASONS = ("empty", "not_an_image", "too_large", "too_small", "corrupt", "no_digit", "budget")


class InputMonitor:
    """The preprocessing step's metrics: input statistics of the images it produced, rejections by reason.

    `observe()` (in `execute`) only appends to a pending list; a background thread computes the
    statistics over everything pending in one vectorised pass and sends the counts to Triton
    (control.monitor.serving), so the request path pays for neither.
    """

    def __init__(self, pb: Any, model: str, version: str, input_name: str, flush_s: float) -> None:
        from control.monitor import serving, stats

        self._stats = stats
        self.labels = (("model", model), ("version", str(version)), ("input", input_name))
        self.inputs = serving.InputStatsExport(pb, (*stats.PIXEL_STATS, "original_size"))
        self.rejected = serving.PendingCounters(pb.MetricFamily(
            name=serving.REJECTED, description="Images refused by preprocessing, by reason",
            kind=pb.MetricFamily.COUNTER))
        self._model = model
        for reason in REJECT_REASONS:
            self.rejected.ensure((("model", model), ("reason", reason)))
        self._lock = threading.Lock()
        self._images: list[np.ndarray] = []
        self._sizes: list[int] = []
        self._rejected: dict[str, int] = {}
        self._ticker = serving.Ticker(flush_s, self.flush, f"input-metrics-{model}")

    def observe(self, produced: list[np.ndarray], sizes: list[int], rejected: dict[str, int]) -> None:
        with self._lock:
            self._images.extend(produced)
            self._sizes.extend(sizes)
            for reason, count in rejected.items():
                self._rejected[reason] = self._rejected.get(reason, 0) + count

    def flush(self) -> None:
        with self._lock:
            images, self._images = self._images, []
            sizes, self._sizes = self._sizes, []
            rejected, self._rejected = self._rejected, {}
        if images:
            values = self._stats.image_stats(np.concatenate(images))
            columns = {name: values[:, k] for k, name in enumerate(self._stats.PIXEL_STATS)}
            # sqrt(height * width) of the image as sent (its header), before any resizing.
            columns["original_size"] = np.sqrt(np.asarray(sizes, dtype=np.float64))
            self.inputs.add(self.labels, columns)
        for reason, count in rejected.items():
            self.rejected.add((("model", self._model), ("reason", reason)), float(count))
        self.rejected.send(self.rejected.take())
        self.inputs.flush()

    def close(self) -> None:
        self._ticker.close()
        self.rejected.clear()
        self.inputs.clear()
