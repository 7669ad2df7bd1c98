"""The evaluation gate: served answers against offline ONNX Runtime, and the rules that fail a run.

Pure functions (no server, no I/O), so that every rule is tested on its own and under mutation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from clients.report import PathResult

# The gate's limits (also the CLI's defaults): any top-1 disagreement fails, whatever these are.
MIN_ACCURACY = 0.97
PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class Comparison:
    """Served probabilities compared with the reference, over every sample (unanswered ones included)."""

    answered: np.ndarray  # bool [N]: the server answered this sample
    predicted: np.ndarray  # int [N]: served top-1, -1 where unanswered
    accuracy: float  # over all N samples: an unanswered sample counts as wrong
    disagreements: int  # samples whose served top-1 differs from the reference's (unanswered included)
    max_abs_diff: float  # over answered samples; inf when none was answered


def compare(outputs: Mapping[int, np.ndarray], reference: np.ndarray, labels: np.ndarray) -> Comparison:
    """``outputs`` maps the first sample index of each answered request to its probabilities."""
    served = np.full(reference.shape, np.nan, dtype=np.float64)
    for start, probs in outputs.items():
        served[start:start + len(probs)] = np.asarray(probs).reshape(len(probs), -1)
    answered = ~np.isnan(served).any(axis=1)
    predicted = np.where(answered, np.nan_to_num(served).argmax(axis=1), -1)
    diff = float(np.max(np.abs(served[answered] - reference[answered]))) if answered.any() else float("inf")
    return Comparison(
        answered=answered,
        predicted=predicted,
        accuracy=float((predicted == labels).mean()),
        disagreements=int((predicted != reference.argmax(axis=1)).sum()),
        max_abs_diff=diff,
    )


def gate_failures(
    results: Sequence[PathResult], min_accuracy: float = MIN_ACCURACY, parity_atol: float = PARITY_ATOL
) -> list[str]:
    """Why the gate fails, one line per broken rule and path; empty when every path passes.

    Rules: no failed request; no top-1 prediction that differs from offline ONNX Runtime (not even
    one); no probability further than ``parity_atol`` from it; accuracy at least ``min_accuracy``.
    """
    failures = []
    for r in results:
        where = f"{r.name} over {r.protocol}"
        if r.errors:
            failures.append(f"{where}: {len(r.errors)} request(s) failed, first: {r.errors[0]}")
        if r.parity_disagreements:
            failures.append(f"{where}: {r.parity_disagreements} top-1 prediction(s) differ from offline ONNX Runtime")
        if r.parity_max_abs_diff > parity_atol:
            failures.append(
                f"{where}: probabilities differ from offline ONNX Runtime by up to {r.parity_max_abs_diff:.2e} "
                f"(tolerance {parity_atol:.0e})"
            )
        if r.accuracy < min_accuracy:
            failures.append(f"{where}: accuracy {r.accuracy:.4f} is below the threshold {min_accuracy}")
    return failures
