"""Build one plan end to end: choose a builder, derive the profile, build, lock, gate.

Builder choice: the TensorRT Python API when `tensorrt` (or the bindings-only `tensorrt_bindings`) imports,
else `trtexec` ($TRTEXEC, PATH, or where the serving image keeps it), else NoBuilderError.
TRITON_REPO_PLAN_BUILDER=python|trtexec forces one (and skips the GPU check, leaving the tool to report a
missing GPU itself). The choice and its reason are logged.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build_tools.config import PLAN_FILENAME, trt_model_name
from build_tools.errors import PlanBuildError
from build_tools.onnx_io import GraphInterface, read_interface
from build_tools.spec import DeploySpec, ModelSpec
from build_tools.tensorrt import gate as gate_mod
from build_tools.tensorrt.backend import BuildRequest, CalibrationSet, NoBuilderError, PlanBackend
from build_tools.tensorrt.lock import PlanLock, lock_problems, read_lock, sha256_file, write_lock
from build_tools.tensorrt.profile import (
    InputProfile,
    choose_opt_batch,
    derive_profiles,
    precision_settings,
)
from build_tools.tensorrt.trtexec import (
    PYTHON_API_HINT,
    TrtexecBackend,
    locate_trtexec,
    trtexec_search_description,
)

logger = logging.getLogger(__name__)

BUILDER_ENV = "TRITON_REPO_PLAN_BUILDER"
TENSORRT_MODULES = ("tensorrt", "tensorrt_bindings")
BUILD_DIR = "build/tensorrt"
TIMING_CACHE = "timing.cache"


def _tensorrt_module_name() -> str | None:
    """`tensorrt` (the full package), else `tensorrt_bindings` (the bindings-only wheel that uses the
    TensorRT libraries already in the serving image), else None."""
    for name in TENSORRT_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return None


def select_backend() -> PlanBackend:
    """The plan builder this machine offers, or NoBuilderError saying what is missing. Logs the choice
    and why at INFO."""
    from build_tools.tensorrt.api import TensorRTApiBackend, visible_gpu_count

    choice = os.environ.get(BUILDER_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "python", "trtexec"):
        raise PlanBuildError(f"{BUILDER_ENV}={choice!r} is not a builder; expected auto, python or trtexec")
    forced = f" ({BUILDER_ENV}={choice})" if choice != "auto" else ""
    module = _tensorrt_module_name() if choice in ("auto", "python") else None
    python_why = "not tried" if choice == "trtexec" else f"neither of {', '.join(TENSORRT_MODULES)} is installed"
    if module is not None:
        try:
            backend = TensorRTApiBackend(module)
        except Exception as e:  # placeholder wheels and bindings without their libraries raise on import
            python_why = f"`import {module}` failed: {e}"
            if choice == "python":
                raise NoBuilderError(f"{BUILDER_ENV}=python but {python_why}") from e
        else:
            if choice == "auto" and visible_gpu_count() == 0:
                raise NoBuilderError(f"TensorRT {backend.version} is importable but no NVIDIA GPU is visible")
            logger.info("plan builder: the TensorRT %s Python API (module %s)%s", backend.version, module, forced)
            return backend
    if choice == "python":
        raise NoBuilderError(f"{BUILDER_ENV}=python but {python_why}")
    found = locate_trtexec()
    if found:
        if choice == "auto" and visible_gpu_count() == 0:
            raise NoBuilderError(f"trtexec found ({found.path}) but no NVIDIA GPU is visible")
        logger.info("plan builder: trtexec at %s (%s)%s; the Python API was not used: %s",
                    found.path, found.reason, forced, python_why)
        return TrtexecBackend(found.path)
    raise NoBuilderError(
        f"no TensorRT Python API ({python_why}) and no trtexec ({trtexec_search_description()}); "
        f"plans are built in the serving image on a GPU (docs/tensorrt.md)"
    )


@dataclass(frozen=True)
class PlanTarget:
    """One plan to produce: a version of an ONNX model, served by the model's _trt folder."""

    model: str
    trt_model: str
    version: int
    onnx_path: Path

    @property
    def label(self) -> str:
        return f"{self.trt_model}/{self.version}/{PLAN_FILENAME}"


def plan_targets(spec: DeploySpec, name: str) -> list[PlanTarget]:
    model = spec.models[name]
    trt_name = trt_model_name(name, model)
    return [
        PlanTarget(name, trt_name, version, spec.resolve(src)) for version, src in sorted(model.version_sources.items())
    ]


def build_dir(spec: DeploySpec) -> Path:
    return spec.resolve(BUILD_DIR)


@dataclass(frozen=True)
class PlanArtifact:
    plan_path: Path
    lock: PlanLock
    gate: gate_mod.GateReport


def profile_record(model: ModelSpec, profiles: list[InputProfile]) -> dict[str, object]:
    opt = choose_opt_batch(model)
    return {
        "inputs": {p.name: p.as_dict() for p in profiles},
        "opt_batch": opt.size,
        "opt_batch_reason": opt.reason,
    }


def _sample_shapes(
    graph: GraphInterface, profiles: list[InputProfile], batched: bool
) -> dict[str, tuple[int, ...]]:
    by_name = {p.name: p for p in profiles}
    return {
        t.name: gate_mod.sample_shape(t, batched, by_name[t.name].opt if t.name in by_name else None)
        for t in graph.inputs
    }


def evaluation_arrays(
    spec: DeploySpec, name: str, graph: GraphInterface, profiles: list[InputProfile]
) -> tuple[dict[str, np.ndarray], str]:
    """The gate's inputs: evaluation_data when the spec names it, else seeded random samples."""
    model = spec.models[name]
    batched = model.max_batch_size > 0
    shapes = _sample_shapes(graph, profiles, batched)
    if model.tensorrt.evaluation_data:
        path = spec.resolve(model.tensorrt.evaluation_data)
        ranges = {p.name: (p.min, p.max) for p in profiles}
        arrays = gate_mod.load_arrays(path, graph.inputs, shapes, f"models.{name}.tensorrt.evaluation_data", ranges)
        return arrays, f"evaluation_data {model.tensorrt.evaluation_data}"
    value_range = model.tensorrt.random_input_range
    logger.warning(
        "models.%s: no tensorrt.evaluation_data; gating on %d seeded random samples%s. Real data gives a "
        "more meaningful top-1 agreement", name, gate_mod.DEFAULT_RANDOM_SAMPLES,
        f" in [{value_range[0]}, {value_range[1]})" if value_range else " (range by data type)",
    )
    arrays = gate_mod.random_inputs(graph.inputs, shapes, value_range=value_range)
    where = f"[{value_range[0]}, {value_range[1]})" if value_range else "the data type's default range"
    return arrays, f"{gate_mod.DEFAULT_RANDOM_SAMPLES} seeded random samples in {where}"


def calibration_set(
    spec: DeploySpec, target: PlanTarget, graph: GraphInterface, profiles: list[InputProfile]
) -> CalibrationSet:
    """Calibration batches at the profile's opt shape (TensorRT calibrates at kOPT), plus the cache file."""
    model = spec.models[target.model]
    where = f"models.{target.model}.tensorrt.calibration_data"
    if not model.tensorrt.calibration_data:
        raise PlanBuildError(f"{where}: int8 precision needs calibration data (.npy/.npz of representative inputs)")
    path = spec.resolve(model.tensorrt.calibration_data)
    batched = model.max_batch_size > 0
    shapes = _sample_shapes(graph, profiles, batched)
    arrays = gate_mod.load_arrays(path, graph.inputs, shapes, where)
    for n, a in arrays.items():
        if a.shape[1:] != shapes[n]:
            raise PlanBuildError(
                f"{where}: input {n!r} samples have shape {list(a.shape[1:])}; calibration runs at the profile's "
                f"opt shape, expected {list(shapes[n])}"
            )
    count = next(iter(arrays.values())).shape[0]
    batch = choose_opt_batch(model).size if batched else 1
    if count < batch:
        raise PlanBuildError(f"{where}: {count} samples, fewer than one calibration batch of {batch} (the opt batch)")
    if batched:
        batches = [{n: np.ascontiguousarray(a[i : i + batch]) for n, a in arrays.items()}
                   for i in range(0, count - batch + 1, batch)]
    else:
        batches = [{n: np.ascontiguousarray(a[i]) for n, a in arrays.items()} for i in range(count)]
    if count % batch:
        logger.info("%s: %d trailing samples do not fill a batch of %d and are not used", where, count % batch, batch)
    # The cache is only valid for this model and this data: key it on both.
    key = hashlib.sha256((sha256_file(target.onnx_path) + sha256_file(path)).encode()).hexdigest()[:12]
    cache = build_dir(spec) / target.trt_model / str(target.version) / f"calibration-{key}.cache"
    return CalibrationSet(batches, cache)


def reuse_problems(
    previous: Path, spec: DeploySpec, target: PlanTarget, profiles: list[InputProfile], gpu_cc: str | None
) -> list[str]:
    """Why a plan already in the repository cannot be kept (empty: keep it, it was built from the same inputs)."""
    if not previous.is_file():
        return ["no plan from an earlier build"]
    try:
        lock = read_lock(previous)
    except PlanBuildError as e:
        return [str(e)]
    model = spec.models[target.model]
    problems = lock_problems(lock, spec.triton, target.label)
    if lock.onnx_sha256 != sha256_file(target.onnx_path):
        problems.append(f"{target.onnx_path.name} changed since the plan was built")
    if lock.precision != model.tensorrt.precision:
        problems.append(f"precision changed ({lock.precision} -> {model.tensorrt.precision})")
    if lock.profile.get("inputs") != profile_record(model, profiles)["inputs"]:
        problems.append("the optimization profile changed")
    if lock.plan_sha256 != sha256_file(previous):
        problems.append("the plan file does not match the checksum in its lock")
    agreement = lock.gate.get("agreement")
    if not isinstance(agreement, (int, float)) or agreement < model.tensorrt.min_top1_agreement:
        problems.append(f"its recorded gate agreement {agreement} is below min_top1_agreement")
    if gpu_cc is not None and lock.compute_capability != gpu_cc:
        problems.append(f"it was built for compute capability {lock.compute_capability}, this GPU is {gpu_cc}")
    return problems


def build_plan(
    spec: DeploySpec, target: PlanTarget, backend: PlanBackend, graph: GraphInterface | None = None
) -> PlanArtifact:
    """Build, lock-check and gate one plan in the build folder; raises PlanBuildError on any refusal.

    graph: the target's ONNX interface when the caller already resolved it (read from the file otherwise).
    """
    model = spec.models[target.model]
    if graph is None:
        graph = read_interface(target.onnx_path)
    profiles = derive_profiles(target.model, model, graph)
    precision = precision_settings(model.tensorrt.precision)
    out = build_dir(spec) / target.trt_model / str(target.version) / PLAN_FILENAME
    # Before anything is built: a model this builder cannot build or gate fails with the way out.
    backend.check_supported(graph)
    calibration = calibration_set(spec, target, graph, profiles) if precision.needs_calibration else None
    request = BuildRequest(
        onnx_path=target.onnx_path,
        plan_path=out,
        precision=precision,
        profiles=profiles,
        workspace_mib=model.tensorrt.workspace_mib,
        timing_cache=build_dir(spec) / TIMING_CACHE,
        calibration=calibration,
    )
    logger.info("building %s (%s, %s) with %s", target.label, precision.precision,
                ", ".join(f"{p.name} {list(p.min)}..{list(p.max)}" for p in profiles) or "static shapes", backend.name)
    info = backend.build(request)
    lock = PlanLock(
        model=target.model,
        trt_model=target.trt_model,
        version=target.version,
        tensorrt_version=info.tensorrt_version,
        gpu_name=info.gpu_name,
        compute_capability=info.compute_capability,
        triton_release=spec.triton.release,
        triton_server_version=spec.triton.server_version,
        target_tensorrt_version=spec.triton.tensorrt_version,
        precision=precision.precision,
        builder=info.builder,
        onnx_sha256=sha256_file(target.onnx_path),
        plan_sha256=sha256_file(out),
        profile=profile_record(model, profiles),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    # The lock comes before the gate: a plan the target image cannot load is not worth evaluating.
    problems = lock_problems(lock, spec.triton, target.label)
    if problems:
        raise PlanBuildError("refusing to place the plan: " + "; ".join(problems))
    arrays, source = evaluation_arrays(spec, target.model, graph, profiles)
    # One run per batch of the profile's largest size: the fewest runs the plan accepts.
    batch_size, batched = max(model.max_batch_size, 1), model.max_batch_size > 0
    arrays, cut = gate_mod.limit_runs(arrays, batch_size, batched, backend.max_gate_runs)
    if cut:
        logger.warning("%s: the %s gate runs on the %s; the Python API gates on all of them (%s)",
                       target.label, backend.name, cut, PYTHON_API_HINT)
        source = f"{source}, {cut}"
    report = gate_mod.run_gate(
        backend.runner(out, [p.name for p in profiles]),
        target.onnx_path,
        arrays,
        batch_size=batch_size,
        batched=batched,
        precision=precision.precision,
        min_top1_agreement=model.tensorrt.min_top1_agreement,
        source=source,
    )
    gate_mod.require_pass(report, target.label)
    lock = dataclasses.replace(lock, gate=report.as_dict())
    write_lock(out, lock)
    return PlanArtifact(out, lock, report)
