"""The reference a version's live traffic is compared with: computed at build time from the model's
held-out data (the spec's `monitoring.models.<name>.reference`), by the same statistics code the
serving side uses (control.monitor.stats) and the version's own predictions (ONNX Runtime, offline).

Written as `reference.json` (contract.Reference) into each version folder by the build step in
build_tools/build.py, and by the lifecycle (control/rollout.py) into the folder of a version staged at
runtime (a fine-tuned one, say): `write_version_reference`, one function for both. Bins: ~10 per
statistic at the held-out quantiles, open at both ends, so live values outside the held-out range
still land in a bin.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from build_tools.errors import RepositoryError
from build_tools.spec import DeploySpec
from control.monitor.contract import STAT_NAMES, Reference
from control.monitor.stats import PIXEL_STATS, image_stats

logger = logging.getLogger(__name__)

BINS = 10
BATCH = 256


def load_reference_data(data: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The held-out inputs (.npz: its first array; .npy) and, when given, their labels."""
    try:
        if data.suffix == ".npz":
            with np.load(data) as npz:
                inputs = npz[npz.files[0]]
        else:
            inputs = np.load(data)
        truth = np.load(labels) if labels is not None else None
    except (OSError, ValueError, IndexError) as e:
        raise RepositoryError(f"monitoring reference data {data} / labels {labels}: cannot read: {e}") from e
    if truth is not None and len(truth) != len(inputs):
        raise RepositoryError(f"monitoring reference data {data} has {len(inputs)} samples but {len(truth)} labels")
    return inputs, truth


def quantile_bins(values: np.ndarray, bins: int = BINS) -> tuple[list[float | None], list[float]]:
    """Edges at the held-out quantiles (duplicates merged; first and last open, written as None) and
    the held-out share per bin."""
    inner = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    edges: list[float | None] = [None, *(float(e) for e in inner), None]
    # right=False with finite inner edges: a value equal to an edge goes to the bin above it (the same
    # rule the monitor applies with numpy.digitize on contract.finite_edges).
    idx = np.digitize(values, inner, right=False)
    counts = np.bincount(idx, minlength=len(inner) + 1).astype(np.float64)
    shares = counts / max(1.0, counts.sum())
    return edges, [float(s) for s in shares]


def predict_onnx(onnx_file: Path, input_name: str | None, inputs: np.ndarray, output: str | None) -> np.ndarray:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise RepositoryError(f"{onnx_file}: ONNX Runtime cannot load it: {e}") from e
    name = input_name or session.get_inputs()[0].name
    out = output or session.get_outputs()[0].name
    chunks = [
        session.run([out], {name: inputs[i:i + BATCH].astype(np.float32)})[0] for i in range(0, len(inputs), BATCH)
    ]
    return np.concatenate(chunks)


def compute_reference(
    model: str, version: str, scores: np.ndarray, inputs: np.ndarray, labels: np.ndarray | None,
    scale: float = 255.0,
) -> Reference:
    """The Reference of one version from its held-out scores and inputs (model-ready, e.g. [N, 1, H, W])."""
    predicted = scores.argmax(axis=-1)
    classes = np.bincount(predicted, minlength=scores.shape[-1]).astype(np.float64) / len(predicted)
    values = image_stats(inputs, scale)
    stats: dict[str, dict[str, list[float | None]]] = {}
    for k, name in enumerate(PIXEL_STATS):
        edges, shares = quantile_bins(values[:, k])
        stats[name] = {"edges": edges, "probs": shares}  # type: ignore[dict-item]
    # original_size: held-out data is model-ready (no encoded image), so its size is the input's own.
    side = float(np.sqrt(inputs.shape[-1] * inputs.shape[-2]))
    edges, shares = quantile_bins(np.full(len(inputs), side))
    stats[STAT_NAMES[4]] = {"edges": edges, "probs": shares}  # type: ignore[dict-item]
    accuracy = float((predicted == labels).mean()) if labels is not None else float("nan")
    return Reference(model=model, version=str(version), n=len(inputs), accuracy=accuracy,
                     classes=[float(c) for c in classes], stats=stats)


def write_version_reference(spec: DeploySpec, model: str, version: int | str, onnx_file: Path,
                            folder: Path) -> Reference | None:
    """`reference.json` of one version of `model` into `folder`, from the held-out data the spec names
    (`monitoring.models.<model>.reference`) run through `onnx_file`; None when the model has no reference
    (monitoring off, not monitored, or no reference data)."""
    watched = spec.monitoring.models.get(model)
    if not spec.monitoring.enabled or watched is None or watched.reference is None:
        return None
    labels = spec.resolve(watched.reference.labels) if watched.reference.labels else None
    inputs, truth = load_reference_data(spec.resolve(watched.reference.data), labels)
    inputs_spec = spec.models[model].inputs
    override = inputs_spec.get(watched.input or "") if isinstance(inputs_spec, dict) else None
    if override is None and isinstance(inputs_spec, dict) and len(inputs_spec) == 1:
        override = next(iter(inputs_spec.values()))
    # Full ink: the top of the input's declared range (raw 0-255 pixels when none is declared).
    scale = override.range[1] if override is not None and override.range is not None else 255.0
    scores = predict_onnx(onnx_file, watched.input, inputs, watched.output)
    ref = compute_reference(model, str(version), scores, inputs, truth, scale)
    ref.write(folder)
    logger.info("%s version %s: %s from %d held-out samples (accuracy %.4f)", model, version, Reference.FILENAME,
                ref.n, ref.accuracy)
    return ref
