"""Optimization profile and precision settings of a TensorRT plan, derived from the spec.

Profile rules (docs/tensorrt.md repeats them):

* Batch axis (axis 0 when max_batch_size > 0): min 1, opt from `choose_opt_batch`, max = max_batch_size,
  so the plan accepts every batch the Triton config allows and nothing more.
* A dynamic axis that is not the batch axis takes its range from `tensorrt.dynamic_dims.<input>.<axis>:
  [min, opt, max]`. Without one the build stops: TensorRT needs a finite max, and a guessed one either
  rejects real requests at serve time (too small) or costs memory and tuning time (too large). Only the
  owner of the model knows the range (sequence length, image size).
* Static axes keep their graph size in min, opt and max.
* Inputs whose shape is entirely static get no profile entry: TensorRT fixes their shape itself, and
  trtexec rejects explicit shapes for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from build_tools.errors import PlanBuildError
from build_tools.onnx_io import DYNAMIC, GraphInterface
from build_tools.spec import ModelSpec, Precision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptBatchChoice:
    size: int
    reason: str


@dataclass(frozen=True)
class InputProfile:
    """min/opt/max shapes of one input, full ONNX shape (batch axis included)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def choose_opt_batch(model: ModelSpec) -> OptBatchChoice:
    """The batch size TensorRT tunes its kernels for (other sizes in [1, max] still run, a bit slower)."""
    mbs = model.max_batch_size
    if mbs == 0:
        return OptBatchChoice(1, "max_batch_size is 0: the model does not batch")
    explicit = model.tensorrt.opt_batch_size
    if explicit is not None:
        if explicit > mbs:
            raise PlanBuildError(
                f"tensorrt.opt_batch_size {explicit} is above max_batch_size {mbs}; expected 1..{mbs}"
            )
        return OptBatchChoice(explicit, "tensorrt.opt_batch_size from the spec")
    db = model.dynamic_batching
    if db is not None and db.preferred_batch_size:
        # Under sustained load the dynamic batcher keeps forming the largest preferred size that fits
        # the queue, so most GPU time is spent at that size; at light load the GPU is idle anyway and a
        # smaller batch running on kernels tuned for a larger one costs little.
        fitting = [s for s in db.preferred_batch_size if s <= mbs]
        size = max(fitting) if fitting else mbs
        return OptBatchChoice(
            size,
            f"largest dynamic_batching.preferred_batch_size ({size}): the batch size the dynamic batcher "
            f"forms under sustained load",
        )
    if db is not None:
        return OptBatchChoice(
            mbs, f"dynamic batching without preferred sizes fills batches up to max_batch_size ({mbs})"
        )
    return OptBatchChoice(
        1,
        "no dynamic batching: requests run at the batch size clients send, typically 1 for online "
        "traffic (set tensorrt.opt_batch_size if clients send larger batches)",
    )


def derive_profiles(model_name: str, model: ModelSpec, graph: GraphInterface) -> list[InputProfile]:
    """One profile entry per input with a dynamic axis, by the rules in the module docstring."""
    where = f"models.{model_name}.tensorrt.dynamic_dims"
    batched = model.max_batch_size > 0
    opt_batch = choose_opt_batch(model).size
    ranges = model.tensorrt.dynamic_dims
    known = {t.name for t in graph.inputs}
    for name in ranges:
        if name not in known:
            raise PlanBuildError(f"{where}.{name}: the graph has no input {name!r}; its inputs are {sorted(known)}")
    profiles: list[InputProfile] = []
    for t in graph.inputs:
        given = ranges.get(t.name, {})
        for axis in given:
            if axis >= len(t.dims):
                raise PlanBuildError(
                    f"{where}.{t.name}.{axis}: input {t.name!r} has {len(t.dims)} axes (shape {list(t.dims)}); "
                    f"expected an axis in 0..{len(t.dims) - 1}"
                )
            if t.dims[axis] != DYNAMIC:
                raise PlanBuildError(
                    f"{where}.{t.name}.{axis}: axis {axis} of {t.name!r} is fixed to {t.dims[axis]} in the graph; "
                    f"only dynamic axes take a range"
                )
            if batched and axis == 0:
                raise PlanBuildError(
                    f"{where}.{t.name}.0: axis 0 is the batch axis; its range comes from max_batch_size "
                    f"({model.max_batch_size}) and tensorrt.opt_batch_size"
                )
        if DYNAMIC not in t.dims:
            continue
        lo: list[int] = []
        mid: list[int] = []
        hi: list[int] = []
        for axis, d in enumerate(t.dims):
            if d != DYNAMIC:
                lo.append(d)
                mid.append(d)
                hi.append(d)
            elif batched and axis == 0:
                lo.append(1)
                mid.append(opt_batch)
                hi.append(model.max_batch_size)
            elif axis in given:
                a, b, c = given[axis]
                lo.append(a)
                mid.append(b)
                hi.append(c)
            else:
                raise PlanBuildError(
                    f"{where}.{t.name}.{axis}: axis {axis} of input {t.name!r} (shape {list(t.dims)}) is dynamic and "
                    f"TensorRT needs its range; set {where}.{t.name}.{axis}: [min, opt, max] "
                    f"(e.g. the shortest, most common and longest size clients send)"
                )
        profiles.append(InputProfile(t.name, tuple(lo), tuple(mid), tuple(hi)))
    return profiles


@dataclass(frozen=True)
class PrecisionSettings:
    precision: Precision
    fp16: bool
    int8: bool
    tf32: bool

    @property
    def needs_calibration(self) -> bool:
        return self.int8


def precision_settings(precision: Precision) -> PrecisionSettings:
    """Builder flags for the spec's precision.

    fp32 turns TF32 off: TensorRT enables TF32 by default on Ampere and later, which rounds matmul and
    convolution inputs to a 10-bit mantissa; a plan labelled fp32 should compute in fp32.
    int8 also allows fp16, so layers that quantize badly fall back to fp16 rather than fp32.
    """
    if precision == "fp32":
        return PrecisionSettings("fp32", fp16=False, int8=False, tf32=False)
    if precision == "fp16":
        return PrecisionSettings("fp16", fp16=True, int8=False, tf32=True)
    if precision == "int8":
        return PrecisionSettings("int8", fp16=True, int8=True, tf32=True)
    raise PlanBuildError(f"precision {precision!r} is not supported; expected fp32, fp16 or int8")


def opt_shapes(profiles: list[InputProfile]) -> dict[str, tuple[int, ...]]:
    return {p.name: p.opt for p in profiles}
