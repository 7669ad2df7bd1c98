"""The accuracy gates for a new version, run offline with ONNX Runtime before the version reaches Triton.

Every version: two comparisons on the spec's labelled set (`lifecycle.gate`): the candidate's accuracy
(against the labels, and against the champion's accuracy on the same samples) and its top-1 agreement
with the champion. A fine-tuned version also (`judge_finetune`, `lifecycle.finetune`): better than the
champion on labelled feedback it was not trained on, and no more than `max_holdout_drop` worse on the
held-out set. The verdict and every figure go into the registry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.errors import RolloutError
from build_tools.spec import FinetuneSpec, GateSpec

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


def mcnemar_p_value(fixed: int, broken: int) -> float:
    """One-sided exact McNemar test on paired answers: the chance of the candidate fixing at least `fixed`
    of the champion's mistakes if, among the `fixed + broken` samples where the two disagree on being
    right, each were a coin flip (P[X >= fixed], X ~ Binomial(fixed + broken, 1/2))."""
    n = fixed + broken
    if n == 0:
        return 1.0
    return math.fsum(math.comb(n, k) for k in range(fixed, n + 1)) / 2.0**n


@dataclass(frozen=True)
class FinetuneGateResult:
    """The fine-tune gate's verdict with every figure (recorded in the registry under `finetune`)."""

    passed: bool
    feedback_samples: int
    feedback_accuracy: float
    champion_feedback_accuracy: float
    feedback_fixed: int  # held-back samples the candidate gets right and the champion wrong
    feedback_broken: int  # ... and the other way round
    feedback_p_value: float
    holdout_samples: int
    holdout_accuracy: float
    champion_holdout_accuracy: float
    min_feedback_gain: float
    max_feedback_p_value: float
    max_holdout_drop: float
    reasons: tuple[str, ...]

    name = "finetune"

    @property
    def feedback_gain(self) -> float:
        return self.feedback_accuracy - self.champion_feedback_accuracy

    @property
    def holdout_drop(self) -> float:
        return self.champion_holdout_accuracy - self.holdout_accuracy

    def summary(self) -> str:
        """Both comparisons with their thresholds, in one line (what a rejection message carries)."""
        return (
            f"held-back feedback ({self.feedback_samples}): {self.feedback_accuracy:.4f} vs the champion's "
            f"{self.champion_feedback_accuracy:.4f}, gain {self.feedback_gain:+.4f} (needs > "
            f"{self.min_feedback_gain:.4f}), McNemar p {self.feedback_p_value:.2g} (needs <= "
            f"{self.max_feedback_p_value:g}); held-out set ({self.holdout_samples}): {self.holdout_accuracy:.4f} vs "
            f"the champion's {self.champion_holdout_accuracy:.4f}, drop {self.holdout_drop:+.4f} (allowed <= "
            f"{self.max_holdout_drop:.4f})"
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["feedback_gain"] = self.feedback_gain
        d["holdout_drop"] = self.holdout_drop
        return d


def judge_finetune(
    candidate_feedback: np.ndarray,
    champion_feedback: np.ndarray,
    candidate_holdout: np.ndarray,
    champion_holdout: np.ndarray,
    rules: FinetuneSpec,
) -> FinetuneGateResult:
    """The fine-tune gate from per-sample correctness (bool arrays, paired: same samples, same order)."""
    cand_fb, champ_fb = np.asarray(candidate_feedback, bool), np.asarray(champion_feedback, bool)
    cand_ho, champ_ho = np.asarray(candidate_holdout, bool), np.asarray(champion_holdout, bool)
    if cand_fb.shape != champ_fb.shape or cand_ho.shape != champ_ho.shape or not len(cand_fb) or not len(cand_ho):
        raise RolloutError(f"fine-tune gate: candidate and champion must be judged on the same, non-empty sets "
                           f"(feedback {cand_fb.shape} vs {champ_fb.shape}, held-out {cand_ho.shape} vs "
                           f"{champ_ho.shape})")
    n_fb, n_ho = len(cand_fb), len(cand_ho)
    fixed, broken = int((cand_fb & ~champ_fb).sum()), int((~cand_fb & champ_fb).sum())
    p_value = mcnemar_p_value(fixed, broken)
    # Counts, not float accuracies, decide: 5 of 500 is exactly the 1-point allowance, not a rounding error.
    gain_count = int(cand_fb.sum()) - int(champ_fb.sum())
    drop_count = int(champ_ho.sum()) - int(cand_ho.sum())
    eps = 1e-9
    result = FinetuneGateResult(
        passed=False, feedback_samples=n_fb, feedback_accuracy=float(cand_fb.mean()),
        champion_feedback_accuracy=float(champ_fb.mean()), feedback_fixed=fixed, feedback_broken=broken,
        feedback_p_value=p_value, holdout_samples=n_ho, holdout_accuracy=float(cand_ho.mean()),
        champion_holdout_accuracy=float(champ_ho.mean()), min_feedback_gain=rules.min_feedback_gain,
        max_feedback_p_value=rules.max_feedback_p_value, max_holdout_drop=rules.max_holdout_drop, reasons=(),
    )
    reasons = []
    if not gain_count / n_fb > rules.min_feedback_gain + eps:
        reasons.append(
            f"accuracy on the held-back feedback {result.feedback_accuracy:.4f} does not beat the champion's "
            f"{result.champion_feedback_accuracy:.4f} by more than min_feedback_gain {rules.min_feedback_gain:.4f}"
        )
    if p_value > rules.max_feedback_p_value:
        reasons.append(
            f"McNemar p-value {p_value:.2g} on the held-back feedback (right where the champion was wrong on "
            f"{fixed}, wrong where it was right on {broken}) is above max_feedback_p_value "
            f"{rules.max_feedback_p_value:g}"
        )
    if drop_count / n_ho > rules.max_holdout_drop + eps:
        reasons.append(
            f"accuracy on the held-out set {result.holdout_accuracy:.4f} is more than max_holdout_drop "
            f"{rules.max_holdout_drop:.4f} below the champion's {result.champion_holdout_accuracy:.4f}"
        )
    result = replace(result, passed=not reasons, reasons=tuple(reasons))
    logger.info("fine-tune gate: %s", result.summary())
    return result
