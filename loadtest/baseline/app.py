"""The seed's way of serving the classifier, kept as the baseline the benchmark compares with.

A Flask app that loads the same ONNX file with ONNX Runtime and answers one JSON request at a time:
each request is parsed from JSON, run through its own ``session.run`` (no batching across requests)
and answered in JSON. H and W are the model's, read from its ONNX input ([N, 1, H, W]).

    POST /predict  {"image": [[...H x W pixels 0..255...]]}             one image
                   {"images": [[[...]], ...]}  or  {"image": [N x H x W]}  a batch ([N,1,H,W] too)
    ->             {"labels": [7, ...], "probabilities": [[...10...], ...]}
    GET  /health   {"status": "ok"}

Started the way the seed started it (Flask's development server, ``app.run()``, threaded as Flask
defaults)::

    python -m loadtest.baseline.app --port 5000

or, to be fair to it, under gunicorn with several worker processes::

    gunicorn -w 3 -b 127.0.0.1:5000 'loadtest.baseline.app:create_app()'

Environment: ``BASELINE_MODEL`` (default: the spec's classifier ONNX file) and
``BASELINE_ORT_THREADS`` (ONNX Runtime intra-op threads per process; default 1).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request

from build_tools.served import load_classifier_names

ROOT = Path(__file__).resolve().parents[2]


class BadInputError(ValueError):
    """The request body is not an image or a batch of images; answered with 400 and the reason."""


def load_session(model_path: Path | str, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])


def image_size(session: ort.InferenceSession) -> tuple[int, int]:
    """(H, W) of the model's one-channel image input [N, 1, H, W]."""
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or shape[1] != 1 or not all(isinstance(d, int) for d in shape[2:]):
        raise ValueError(f"the baseline serves one-channel images [N, 1, H, W]; the model's input is {shape}")
    return int(shape[2]), int(shape[3])


def to_batch(payload: Any, size: tuple[int, int]) -> np.ndarray:
    """The JSON body as float32 [N, 1, H, W] (size = (H, W)); raises BadInputError naming what is wrong."""
    h, w = size
    if not isinstance(payload, dict):
        raise BadInputError(f'expected a JSON object like {{"image": [[...{h}x{w}...]]}}')
    key = "images" if "images" in payload else "image"
    if key not in payload:
        raise BadInputError(f'missing "image" (one {h}x{w} image) or "images" (a batch)')
    try:
        arr = np.asarray(payload[key], dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise BadInputError(f'"{key}" is not a numeric array: {e}') from e
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1:] != (1, h, w) or arr.shape[0] == 0:
        raise BadInputError(f'"{key}" has shape {list(arr.shape)}; expected [{h}, {w}], [N, {h}, {w}] or '
                            f'[N, 1, {h}, {w}]')
    if not np.isfinite(arr).all():
        raise BadInputError(f'"{key}" holds NaN or infinite values')
    return arr


def create_app(model_path: Path | str | None = None, threads: int | None = None) -> Flask:
    model_path = model_path or os.environ.get("BASELINE_MODEL") or load_classifier_names().onnx
    threads = threads if threads is not None else int(os.environ.get("BASELINE_ORT_THREADS", "1"))
    session = load_session(model_path, threads)
    input_name = session.get_inputs()[0].name
    size = image_size(session)
    app = Flask(__name__)

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    @app.post("/predict")
    def predict() -> Any:
        payload = request.get_json(silent=True)
        try:
            batch = to_batch(payload, size)
        except BadInputError as e:
            return jsonify(error=str(e)), 400
        probabilities = session.run(None, {input_name: batch})[0]
        return jsonify(labels=probabilities.argmax(axis=1).tolist(), probabilities=probabilities.tolist())

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The seed's Flask baseline (Flask development server).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--model", default=None, help="ONNX file (default: the spec's classifier)")
    args = parser.parse_args(argv)
    app = create_app(args.model)
    app.run(host=args.host, port=args.port)  # the seed's call: development server, threaded


if __name__ == "__main__":
    main()
