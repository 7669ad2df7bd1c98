"""The standard build: which steps complete a repository after its configs are written, for every caller.

The CLI, the demo, the tests, the compose repo-builder and the load tests all call `build_repositories`
from here, so they all build the same repository from the same spec. Steps are listed, not registered:
nothing depends on which module was imported first.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

from build_tools import repository
from build_tools.config import monitored_here
from build_tools.interfaces import torchscript_model_name
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
    folder, from the held-out data named in `monitoring.models.<name>.reference`. A TorchScript twin
    that watches its own predictions (embedded flavor) gets the ONNX version's reference under its own
    name: the twin was checked against that ONNX file at export."""
    from control.monitor.reference import write_version_reference

    spec = ctx.spec
    notes: list[str] = []
    for name in spec.monitoring.models:
        model = spec.models[name]
        refs = {version: write_version_reference(spec, name, version, spec.resolve(src),
                                                 ctx.staging / name / str(version))
                for version, src in model.version_sources.items()}
        if "torchscript" not in model.formats or not monitored_here(spec, name, ctx.plan.flavor):
            continue
        twin = torchscript_model_name(name, model)
        for version in model.torchscript_sources:
            ref = refs.get(version)
            if ref is None:
                notes.append(f"{twin} version {version}: no reference.json of {name} version {version} to "
                             "give it; its drift is not measured")
                continue
            dataclasses.replace(ref, model=twin).write(ctx.staging / twin / str(version))
    return notes


STANDARD_STEPS: tuple[BuildStep, ...] = (shm_note_step, plan_step, reference_step)


def build_repositories(
    spec: DeploySpec,
    flavors: Iterable[FlavorName] | None = None,
    steps: Sequence[BuildStep] = STANDARD_STEPS,
) -> dict[FlavorName, FlavorPlan]:
    """Lint, write every requested (and enabled) flavor and run the standard steps on it."""
    return repository.build_repositories(spec, steps, flavors)
