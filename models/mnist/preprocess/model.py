"""Triton Python-backend model: encoded PNG/JPEG bytes -> a 28x28 MNIST-style digit (raw 0-255 floats).

First step of the `mnist` ensemble. Each batch element is one encoded image. The pixel work lives in
`pixels.py` next to this file (decode with EXIF orientation, ink channel, background removal,
adaptive ink mask, MNIST layout); this file is the Triton glue: configuration, batching, errors.
A 28x28 image that already has MNIST's layout (an MNIST digit saved as PNG) passes through
bit-identical.

A request whose image is unusable (empty, not PNG/JPEG, truncated, too large, too small, blank) gets
its own error naming the problem; the other requests of the batch are answered normally.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

# The stub imports this file by path; its sibling module is found through its folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixels import SIDE, BadImageError, decode, to_mnist


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
        images = []
        for i, item in enumerate(flat):
            raw = item if isinstance(item, bytes) else bytes(item)
            try:
                pixels = decode(raw, self.max_pixels, self.min_side)
                images.append(to_mnist(pixels, self.ink_threshold))
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
