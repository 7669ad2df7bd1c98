"""Accuracy gate: a plan reaches the repository only if it agrees with ONNX Runtime on the same inputs.

The comparison (`compare_outputs`) is a pure function over numpy arrays. The rest prepares the inputs
(the spec's `evaluation_data`, else seeded random inputs in the model's value range) and runs both
sides batch by batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build_tools.errors import PlanBuildError
from build_tools.onnx_io import DYNAMIC, GraphTensor

logger = logging.getLogger(__name__)

# (atol, rtol) for outputs without a class axis, by plan precision: fp16 keeps ~3 significant digits.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-3),
    "fp16": (1e-2, 1e-2),
    "int8": (5e-2, 5e-2),
}
DEFAULT_RANDOM_SAMPLES = 1000
RANDOM_SEED = 5  # fixed: the same spec must gate on the same inputs on every build

# Triton data type names -> numpy dtypes a TensorRT plan can take (BYTES/BF16 have no plan equivalent here).
NUMPY_TYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs_diff: float
    element_agreement: float  # share of elements within (atol, rtol); exact match for integer outputs
    top1_agreement: float | None  # share of samples with the same top class; None without a class axis
    nonfinite: int  # NaN/Inf in the plan's output where ONNX Runtime has a different value

    @property
    def agreement(self) -> float:
        return self.top1_agreement if self.top1_agreement is not None else self.element_agreement


@dataclass(frozen=True)
class GateReport:
    outputs: tuple[OutputComparison, ...]
    samples: int
    min_top1_agreement: float
    source: str

    @property
    def agreement(self) -> float:
        return min(o.agreement for o in self.outputs)

    @property
    def max_abs_diff(self) -> float:
        return max(o.max_abs_diff for o in self.outputs)

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_top1_agreement and not any(o.nonfinite for o in self.outputs)

    def summary(self) -> str:
        parts = []
        for o in self.outputs:
            what = (
                f"top-1 agreement {o.top1_agreement:.4f}" if o.top1_agreement is not None
                else f"element agreement {o.element_agreement:.4f}"
            )
            extra = f", {o.nonfinite} NaN/Inf" if o.nonfinite else ""
            parts.append(f"{o.name}: {what}, max abs diff {o.max_abs_diff:.3g}{extra}")
        return (
            f"{'; '.join(parts)} (required >= {self.min_top1_agreement}, {self.samples} samples, {self.source})"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "samples": self.samples,
            "source": self.source,
            "min_top1_agreement": self.min_top1_agreement,
            "agreement": self.agreement,
            "max_abs_diff": self.max_abs_diff,
            "outputs": {
                o.name: {
                    "max_abs_diff": o.max_abs_diff,
                    "element_agreement": o.element_agreement,
                    "top1_agreement": o.top1_agreement,
                    "nonfinite": o.nonfinite,
                }
                for o in self.outputs
            },
        }


def _compare_one(
    name: str, ref: np.ndarray, cand: np.ndarray, *, atol: float, rtol: float, batched: bool
) -> OutputComparison:
    if ref.shape != cand.shape:
        raise PlanBuildError(
            f"output {name!r}: the plan returned shape {list(cand.shape)}, ONNX Runtime {list(ref.shape)}; "
            f"expected identical shapes for identical inputs"
        )
    if ref.size == 0:
        raise PlanBuildError(f"output {name!r} is empty; the gate needs at least one evaluation sample")
    integer = ref.dtype.kind in "biu" and cand.dtype.kind in "biu"
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    # Identical non-finite values (both NaN, or the same infinity) count as agreement.
    same_nonfinite = (np.isnan(r) & np.isnan(c)) | (np.isinf(r) & (r == c))
    both_finite = np.isfinite(r) & np.isfinite(c)
    nonfinite = int(np.count_nonzero(~both_finite & ~same_nonfinite))
    diff = np.abs(r - c)[both_finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    if nonfinite:
        max_abs = float("inf")
    # Integer outputs (labels, indices) must match exactly; floats within the precision's tolerance.
    within = ((r == c) | same_nonfinite) if integer else np.isclose(c, r, atol=atol, rtol=rtol, equal_nan=True)
    element = float(np.mean(within))
    top1 = None
    class_rank = 2 if batched else 1
    if not integer and ref.ndim >= class_rank and ref.shape[-1] >= 2:
        # The plan's top class agrees when ONNX Runtime scores it as (one of) its own top classes,
        # so an exact tie in the reference is not counted as a disagreement.
        best = np.max(r, axis=-1)
        picked = np.argmax(np.where(np.isnan(c), -np.inf, c), axis=-1)
        at_pick = np.take_along_axis(r, picked[..., None], axis=-1)[..., 0]
        top1 = float(np.mean(at_pick >= best))
    return OutputComparison(name, max_abs, element, top1, nonfinite)


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    min_top1_agreement: float,
    atol: float = 1e-2,
    rtol: float = 1e-2,
    batched: bool = True,
    source: str = "",
) -> GateReport:
    """Compare the plan's outputs (candidate) with ONNX Runtime's (reference) for the same inputs.

    Per output: max abs diff; top-1 agreement over the last axis when it is a class axis (floating
    point, at least 2 entries, not the batch axis); otherwise the share of elements within tolerance.
    The gate passes when every output's agreement reaches `min_top1_agreement` and the plan produced
    no NaN/Inf that ONNX Runtime did not.
    """
    if set(reference) != set(candidate):
        raise PlanBuildError(
            f"the plan's outputs {sorted(candidate)} differ from the ONNX model's {sorted(reference)}; "
            f"expected the same output names"
        )
    if not reference:
        raise PlanBuildError("the model has no outputs to compare")
    outputs = tuple(
        _compare_one(n, np.asarray(reference[n]), np.asarray(candidate[n]), atol=atol, rtol=rtol, batched=batched)
        for n in sorted(reference)
    )
    first = np.asarray(reference[sorted(reference)[0]])
    samples = int(first.shape[0]) if first.ndim else 1
    return GateReport(outputs, samples, min_top1_agreement, source)


# ---------------------------------------------------------------------------------------------------
# Evaluation inputs


def numpy_type(tensor: GraphTensor) -> type[np.generic]:
    try:
        return NUMPY_TYPES[tensor.data_type]
    except KeyError:
        raise PlanBuildError(
            f"input {tensor.name!r} has data type {tensor.data_type}, which a TensorRT plan cannot take here; "
            f"expected one of {sorted(NUMPY_TYPES)}"
        ) from None


def sample_shape(tensor: GraphTensor, batched: bool, opt: tuple[int, ...] | None) -> tuple[int, ...]:
    """Shape of one sample: without the batch axis when batching; dynamic axes at their opt size."""
    dims = list(tensor.dims)
    for axis, d in enumerate(dims):
        if d == DYNAMIC and not (batched and axis == 0):
            if opt is None:
                raise PlanBuildError(f"input {tensor.name!r} axis {axis} is dynamic and has no profile range")
            dims[axis] = opt[axis]
    return tuple(dims[1:] if batched else dims)


def default_value_range(data_type: str) -> tuple[float, float]:
    if data_type.startswith("FP"):
        return (0.0, 1.0)
    if data_type == "UINT8":
        return (0.0, 256.0)
    if data_type == "BOOL":
        return (0.0, 2.0)
    return (0.0, 10.0)


def random_inputs(
    inputs: Sequence[GraphTensor],
    shapes: Mapping[str, tuple[int, ...]],
    count: int = DEFAULT_RANDOM_SAMPLES,
    value_range: tuple[float, float] | None = None,
    seed: int = RANDOM_SEED,
) -> dict[str, np.ndarray]:
    """`count` seeded samples per input, uniform in value_range (else a range by data type)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in inputs:
        dtype = numpy_type(t)
        low, high = value_range or default_value_range(t.data_type)
        size = (count, *shapes[t.name])
        if np.issubdtype(dtype, np.floating):
            out[t.name] = rng.uniform(low, high, size=size).astype(dtype)
        else:
            out[t.name] = rng.integers(int(np.ceil(low)), int(np.ceil(high)), size=size).astype(dtype)
    return out


def load_arrays(
    path: Path,
    inputs: Sequence[GraphTensor],
    shapes: Mapping[str, tuple[int, ...]],
    what: str,
    ranges: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
) -> dict[str, np.ndarray]:
    """Samples from .npy (single-input models: array [N, *sample]) or .npz (one array per input name).

    Static axes must match the graph; dynamic axes must lie within the profile's [min, max] (`ranges`,
    full shapes) so the plan can run them.
    """
    if not path.is_file():
        raise PlanBuildError(f"{what}: {path} not found")
    names = [t.name for t in inputs]
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PlanBuildError(f"{what}: {path} is not a readable .npy/.npz file ({e})") from e
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise PlanBuildError(
                f"{what}: {path} holds one array but the model has {len(names)} inputs {names}; "
                f"use an .npz with one array per input name"
            )
        arrays = {names[0]: loaded}
    else:
        with loaded:
            missing = [n for n in names if n not in loaded.files]
            if missing:
                raise PlanBuildError(f"{what}: {path} has arrays {loaded.files}, missing input(s) {missing}")
            arrays = {n: loaded[n] for n in names}
    counts = {n: a.shape[0] if a.ndim else 0 for n, a in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise PlanBuildError(f"{what}: {path} must hold the same number (>= 1) of samples per input, got {counts}")
    by_name = {t.name: t for t in inputs}
    out = {}
    for n, a in arrays.items():
        expected = shapes[n]
        got = a.shape[1:]
        t = by_name[n]
        if len(got) != len(expected):
            raise PlanBuildError(
                f"{what}: {path} input {n!r} samples have shape {list(got)}; expected rank {len(expected)} "
                f"like {list(expected)} (array shape [N, *sample])"
            )
        offset = len(t.dims) - len(expected)  # 1 when the batch axis is not part of a sample
        for i, (g, e) in enumerate(zip(got, expected)):
            axis = i + offset
            if t.dims[axis] != DYNAMIC and g != e:
                raise PlanBuildError(f"{what}: {path} input {n!r} axis {axis} is {g}; the graph fixes it to {e}")
            if t.dims[axis] == DYNAMIC and ranges and n in ranges:
                lo, hi = ranges[n][0][axis], ranges[n][1][axis]
                if not lo <= g <= hi:
                    raise PlanBuildError(
                        f"{what}: {path} input {n!r} axis {axis} is {g}, outside the profile range [{lo}, {hi}]"
                    )
        dtype = numpy_type(t)
        if a.dtype.kind == "f" and np.dtype(dtype).kind in "biu":
            raise PlanBuildError(
                f"{what}: {path} input {n!r} holds {a.dtype} values; the input is {t.data_type}, expected integers"
            )
        out[n] = np.ascontiguousarray(a.astype(dtype, copy=False))
    return out


def iter_chunks(
    arrays: Mapping[str, np.ndarray], batch_size: int, batched: bool
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of at most batch_size samples; one sample at a time (its own shape) when not batching."""
    count = next(iter(arrays.values())).shape[0]
    if not batched:
        for i in range(count):
            yield {n: np.ascontiguousarray(a[i]) for n, a in arrays.items()}
        return
    for start in range(0, count, batch_size):
        yield {n: np.ascontiguousarray(a[start : start + batch_size]) for n, a in arrays.items()}


def runs_needed(count: int, batch_size: int, batched: bool) -> int:
    """How many plan runs the gate makes for `count` samples: one per batch of up to batch_size."""
    return -(-count // batch_size) if batched else count


def limit_runs(
    arrays: Mapping[str, np.ndarray], batch_size: int, batched: bool, max_runs: int | None
) -> tuple[dict[str, np.ndarray], str]:
    """The samples a runner limited to max_runs runs can take (the first ones), and a note when cut."""
    count = next(iter(arrays.values())).shape[0]
    runs = runs_needed(count, batch_size, batched)
    if max_runs is None or runs <= max_runs:
        return dict(arrays), ""
    keep = max_runs * (batch_size if batched else 1)
    note = (
        f"first {keep} of {count} samples: the profile takes {batch_size if batched else 1} sample(s) per run and "
        f"this builder starts a process per run, at most {max_runs}"
    )
    return {n: a[:keep] for n, a in arrays.items()}, note


def _collect(parts: list[dict[str, np.ndarray]], batched: bool) -> dict[str, np.ndarray]:
    join = np.concatenate if batched else np.stack
    return {n: join([p[n] for p in parts]) for n in parts[0]}


def run_in_chunks(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    batched: bool,
) -> dict[str, np.ndarray]:
    return _collect([run(chunk) for chunk in iter_chunks(arrays, batch_size, batched)], batched)


def onnxruntime_runner(onnx_path: Path) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The reference: ONNX Runtime on the CPU, full precision."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feed)))

    return run


def run_gate(
    plan_runner: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    onnx_path: Path,
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    batched: bool,
    precision: str,
    min_top1_agreement: float,
    source: str,
) -> GateReport:
    """Run ONNX Runtime and the plan on the same samples and compare them."""
    reference = run_in_chunks(onnxruntime_runner(onnx_path), arrays, batch_size, batched)
    candidate = run_in_chunks(plan_runner, arrays, batch_size, batched)
    atol, rtol = TOLERANCES.get(precision, TOLERANCES["fp16"])
    report = compare_outputs(
        reference, candidate, min_top1_agreement=min_top1_agreement, atol=atol, rtol=rtol,
        batched=batched, source=source,
    )
    logger.info("accuracy gate: %s", report.summary())
    return report


def require_pass(report: GateReport, what: str) -> None:
    if not report.passed:
        raise PlanBuildError(
            f"{what}: accuracy gate failed, the plan is not written to the repository: {report.summary()}. "
            f"Use a higher precision (tensorrt.precision), better calibration data, or lower "
            f"tensorrt.min_top1_agreement if this loss is acceptable"
        )
