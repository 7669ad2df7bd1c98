"""The build step that puts TensorRT plans (and their locks) into the ngc repository.

It is one of build_tools.build.STANDARD_STEPS, passed to `build_repositories` explicitly; it reads each
version's ONNX interface from the resolved interfaces instead of re-reading the graph.

For every version of every model whose formats include tensorrt_plan:
1. a plan already in the repository is kept when its lock shows it was built from the same ONNX file,
   precision and profile, for the same target TensorRT/release (and this GPU, when one is visible);
2. otherwise it is built, lock-checked and gated (builder.build_plan) when a builder is available;
3. otherwise, for `tensorrt.optional: true`, build-repo notes that the plan is missing and goes on
   (the repository is complete without it); for `optional: false`, or with TRITON_REPO_REQUIRE_PLANS=1
   (the repo-builder container), it stops with PlanBuildError.
Each plan gets one note: `plan <label>: built|reused|skipped, <why>`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from build_tools.config import PLAN_FILENAME
from build_tools.errors import PlanBuildError
from build_tools.repository import BuildContext
from build_tools.tensorrt.backend import NoBuilderError, PlanBackend
from build_tools.tensorrt.builder import (
    build_plan,
    plan_targets,
    reuse_problems,
    select_backend,
)
from build_tools.tensorrt.lock import lock_path, read_lock, require_consistent_target
from build_tools.tensorrt.profile import derive_profiles

logger = logging.getLogger(__name__)

# Set by the repo-builder container: there, an optional plan that cannot be built is an error, not a note.
REQUIRE_PLANS_ENV = "TRITON_REPO_REQUIRE_PLANS"


def _place(plan: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plan, dest)
    shutil.copyfile(lock_path(plan), lock_path(dest))


def plan_step(ctx: BuildContext) -> list[str]:
    """repository.BuildStep: add plans to the ngc staging folder; returns notes for build-repo."""
    spec, plan, staging = ctx.spec, ctx.plan, ctx.staging
    if plan.flavor != "ngc":
        return []
    notes: list[str] = []
    names = [n for n, m in spec.models.items() if m.kind == "onnx" and "tensorrt_plan" in m.formats]
    if not names:
        return notes
    require_consistent_target(spec.triton)
    require_all = plans_required()
    backend: PlanBackend | None = None
    missing: NoBuilderError | None = None
    gpu_cc: str | None = None
    for name in names:
        model = spec.models[name]
        for target in plan_targets(spec, name):
            graph = ctx.interfaces[name].graphs[target.version]
            # Spec problems (e.g. a dynamic axis without a range) stop the build on every machine.
            profiles = derive_profiles(name, model, graph)
            dest = staging / target.trt_model / str(target.version) / PLAN_FILENAME
            previous = plan.output / target.trt_model / str(target.version) / PLAN_FILENAME
            if backend is None and missing is None:
                try:
                    backend = select_backend()
                except NoBuilderError as e:
                    missing = e
                else:
                    from build_tools.tensorrt.api import current_compute_capability

                    gpu_cc = current_compute_capability()
            reasons = reuse_problems(previous, spec, target, profiles, gpu_cc)
            if not reasons:
                lock = read_lock(previous)
                _place(previous, dest)
                notes.append(
                    f"plan {target.label}: reused, built {lock.built_at or 'earlier'} with TensorRT "
                    f"{lock.tensorrt_version} on {lock.gpu_name} (sm {lock.compute_capability}) from unchanged inputs"
                )
                continue
            if previous.is_file():
                logger.info("%s: not keeping the previous plan: %s", target.label, "; ".join(reasons))
            if backend is None:
                why = f"{missing}"
                if previous.is_file():
                    why += f" (the previous plan was dropped: {'; '.join(reasons)})"
                if not model.tensorrt.optional or require_all:
                    rule = (
                        f"{REQUIRE_PLANS_ENV}=1" if model.tensorrt.optional
                        else f"models.{name}.tensorrt.optional is false"
                    )
                    raise PlanBuildError(
                        f"plan {target.label} not built: {why}; {rule}, so build-repo stops. Build the "
                        f"repository in the serving image on a GPU (docs/tensorrt.md)"
                    ) from missing
                notes.append(
                    f"plan {target.label}: skipped, {why}. The repository is complete without it "
                    f"(tensorrt.optional), but Triton reports {target.trt_model} UNAVAILABLE until the plan is built "
                    f"in the serving image (docs/tensorrt.md)"
                )
                continue
            artifact = build_plan(spec, target, backend, graph)
            _place(artifact.plan_path, dest)
            lock = artifact.lock
            notes.append(
                f"plan {target.label}: built, {lock.precision} with TensorRT {lock.tensorrt_version} "
                f"({lock.builder}) on {lock.gpu_name} (sm {lock.compute_capability}) for tritonserver:"
                f"{lock.triton_release}-py3; gate passed: {artifact.gate.summary()}"
            )
    return notes


def plans_required() -> bool:
    """True when every plan the spec asks for must be built, `optional` ones included (the repo-builder)."""
    return os.environ.get(REQUIRE_PLANS_ENV, "").strip().lower() in ("1", "true", "yes")
