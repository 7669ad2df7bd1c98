"""The accuracy gate for a new version, run offline with ONNX Runtime before the version reaches Triton.

Two comparisons on the spec's labelled set (`lifecycle.gate`): the candidate's accuracy (against the
labels, and against the champion's accuracy on the same samples) and its top-1 agreement with the
champion. The verdict and every figure go into the registry.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.errors import RolloutError
from build_tools.spec import GateSpec

logger = logging.getLogger(__name__)

BATCH = 256


@dataclass(frozen=True)
class GateResult:
    passed: bool
    samples: int
    accuracy: float
    champion_accuracy: float | None
    agreement_with_champion: float | None
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def load_gate_data(gate: GateSpec, base: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    data_path = gate.data if Path(gate.data).is_absolute() else base / gate.data
    labels_path = gate.labels if Path(gate.labels).is_absolute() else base / gate.labels
    try:
        with np.load(data_path) as npz:
            inputs = {k: npz[k] for k in npz.files}
        labels = np.load(labels_path)
    except (OSError, ValueError) as e:
        raise RolloutError(f"gate data {data_path} / labels {labels_path}: cannot read: {e}") from e
    sizes = {k: len(v) for k, v in inputs.items()}
    if any(n != len(labels) for n in sizes.values()):
        raise RolloutError(f"gate data has {sizes} samples per input but {len(labels)} labels")
    return inputs, labels


def predict(onnx_file: Path, inputs: dict[str, np.ndarray], output: str | None) -> np.ndarray:
    """Class scores of `onnx_file` on every sample, in batches (the candidate's input types are honoured)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise RolloutError(f"{onnx_file}: ONNX Runtime cannot load it: {e}") from e
    names = {i.name: i for i in session.get_inputs()}
    missing = sorted(set(names) - set(inputs))
    if missing:
        raise RolloutError(f"{onnx_file}: gate data has no array for input(s) {missing}; it has {sorted(inputs)}")
    out_name = output or session.get_outputs()[0].name
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(uint8)": np.uint8, "tensor(double)": np.float64}
    total = len(next(iter(inputs.values())))
    chunks = []
    for start in range(0, total, BATCH):
        feed = {n: inputs[n][start:start + BATCH].astype(types.get(i.type, np.float32)) for n, i in names.items()}
        try:
            chunks.append(session.run([out_name], feed)[0])
        except Exception as e:  # a runtime failure on the labelled set is a gate failure, not a crash
            raise RolloutError(f"{onnx_file}: ONNX Runtime failed on the gate data: {e}") from e
    return np.concatenate(chunks)


def run_gate(
    gate: GateSpec, base: Path, candidate: Path, champion: Path | None
) -> tuple[GateResult, np.ndarray]:
    """The verdict, and the candidate's scores (the live smoke check compares the served ones with them)."""
    inputs, labels = load_gate_data(gate, base)
    scores = predict(candidate, inputs, gate.output)
    top1 = scores.argmax(axis=-1)
    accuracy = float((top1 == labels).mean())
    reasons = []
    if accuracy < gate.min_accuracy:
        reasons.append(f"accuracy {accuracy:.4f} is below min_accuracy {gate.min_accuracy:.4f}")
    champ_acc = agreement = None
    if champion is not None:
        champ_top1 = predict(champion, inputs, gate.output).argmax(axis=-1)
        champ_acc = float((champ_top1 == labels).mean())
        agreement = float((champ_top1 == top1).mean())
        if accuracy < champ_acc - gate.max_accuracy_drop:
            reasons.append(
                f"accuracy {accuracy:.4f} is more than max_accuracy_drop {gate.max_accuracy_drop:.4f} below the "
                f"champion's {champ_acc:.4f}"
            )
        if agreement < gate.min_agreement:
            reasons.append(
                f"top-1 agreement with the champion {agreement:.4f} is below min_agreement {gate.min_agreement:.4f}"
            )
    result = GateResult(not reasons, len(labels), accuracy, champ_acc, agreement, tuple(reasons))
    logger.info("gate %s: %s", candidate.name, result)
    return result, scores
