"""The standard build: which steps complete a repository after its configs are written, for every caller.

The CLI, the demo, the tests, the compose repo-builder and the load tests all call `build_repositories`
from here, so they all build the same repository from the same spec. Steps are listed, not registered:
nothing depends on which module was imported first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from build_tools import repository
from build_tools.repository import BuildContext, BuildStep, FlavorPlan
from build_tools.resources import shm_note
from build_tools.spec import DeploySpec, FlavorName
from build_tools.tensorrt.hook import plan_step

logger = logging.getLogger(__name__)


def shm_note_step(ctx: BuildContext) -> list[str]:
    """Note the Python backend's shared-memory needs of the ngc flavor (its container's shm_size)."""
    if ctx.plan.flavor != "ngc":
        return []
    note = shm_note(ctx.spec, "ngc", ctx.interfaces)
    return [note] if note else []


def reference_step(ctx: BuildContext) -> list[str]:
    """Write each monitored model's reference.json (the drift monitor's baseline) into every version
    folder, from the held-out data named in `monitoring.models.<name>.reference`."""
    from control.monitor.reference import compute_reference, load_reference_data, predict_onnx

    spec = ctx.spec
    notes: list[str] = []
    for name, watched in spec.monitoring.models.items():
        if not spec.monitoring.enabled or watched.reference is None:
            continue
        model = spec.models[name]
        labels = spec.resolve(watched.reference.labels) if watched.reference.labels else None
        inputs, truth = load_reference_data(spec.resolve(watched.reference.data), labels)
        override = model.inputs.get(watched.input or "") if isinstance(model.inputs, dict) else None
        if override is None and isinstance(model.inputs, dict) and len(model.inputs) == 1:
            override = next(iter(model.inputs.values()))
        scale = override.range[1] if override is not None and override.range is not None else 255.0
        for version, src in model.version_sources.items():
            scores = predict_onnx(spec.resolve(src), watched.input, inputs, watched.output)
            ref = compute_reference(name, str(version), scores, inputs, truth, scale)
            ref.write(ctx.staging / name / str(version))
            logger.info("%s version %s: reference.json from %d held-out samples (accuracy %.4f)",
                        name, version, ref.n, ref.accuracy)
    return notes


STANDARD_STEPS: tuple[BuildStep, ...] = (shm_note_step, plan_step, reference_step)


def build_repositories(
    spec: DeploySpec,
    flavors: Iterable[FlavorName] | None = None,
    steps: Sequence[BuildStep] = STANDARD_STEPS,
) -> dict[FlavorName, FlavorPlan]:
    """Lint, write every requested (and enabled) flavor and run the standard steps on it."""
    return repository.build_repositories(spec, steps, flavors)
