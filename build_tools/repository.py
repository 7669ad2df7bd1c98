"""Repository assembly: write the folders build_tools.config plans for each flavor, run the build steps
it is given, and swap the result in; plus the drift check.

Each flavor is planned in memory first (`plan_flavor`: configs plus the files each model folder holds),
then written to a temporary sibling folder, completed by the explicit build steps (e.g. TensorRT plans)
and swapped in, so a failed build never leaves a half-written repository behind.
"""

from __future__ import annotations

import filecmp
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from build_tools import config as cfg
from build_tools.config import ModelFolder
from build_tools.errors import LintError, RepositoryError
from build_tools.interfaces import Interfaces
from build_tools.lint import lint_spec
from build_tools.spec import FLAVORS, DeploySpec, FlavorName

logger = logging.getLogger(__name__)

# Marks a folder as written by build-repo, so a rebuild may replace it without touching anything else.
MARKER = ".triton-repo"
# Model binaries are build outputs: the ngc repository in git holds everything else.
# reference.json (the monitoring reference) is computed from the ONNX file by a build step, like a plan.
BINARY_SUFFIXES = (".onnx", ".plan", ".pt", ".json.lock", "reference.json")


@dataclass
class FlavorPlan:
    flavor: FlavorName
    output: Path
    models: list[ModelFolder]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BuildContext:
    """What a build step sees: the spec, its resolved interfaces, the flavor's plan and its staging folder."""

    spec: DeploySpec
    interfaces: Interfaces
    plan: FlavorPlan
    staging: Path


# A step that adds files after the configs are written (e.g. TensorRT plans) and returns notes for the
# user. Steps are passed to build_repositories explicitly; build_tools.build.STANDARD_STEPS is the list
# every caller uses.
BuildStep = Callable[[BuildContext], list[str]]


def plan_flavor(spec: DeploySpec, flavor: FlavorName, ios: Interfaces) -> FlavorPlan:
    """Every model folder of one flavor, in memory."""
    return FlavorPlan(flavor, spec.resolve(spec.flavors[flavor].output), cfg.flavor_folders(spec, flavor, ios))


def _write(plan: FlavorPlan, staging: Path) -> None:
    (staging / MARKER).write_text(
        "Written by `triton-repo build-repo` from deploy.yaml; edit the spec, not this folder.\n"
    )
    for folder in plan.models:
        root = staging / folder.name
        root.mkdir(parents=True)
        (root / "config.pbtxt").write_text(cfg.to_pbtxt(folder.config))
        for rel, src in sorted(folder.files.items()):
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dest.write_bytes(src)
            else:
                shutil.copyfile(src, dest)


def _swap_in(staging: Path, output: Path) -> None:
    if output.exists():
        if any(output.iterdir()) and not (output / MARKER).exists():
            raise RepositoryError(
                f"{output}: exists, is not empty and was not written by build-repo (no {MARKER} file); "
                f"refusing to replace it"
            )
        old = output.with_name(output.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)
        staging.rename(output)
        shutil.rmtree(old)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(output)


def lint_or_raise(spec: DeploySpec) -> Interfaces:
    findings, ios = lint_spec(spec)
    if findings:
        raise LintError(findings)
    return ios


def build_repositories(
    spec: DeploySpec, steps: Sequence[BuildStep], flavors: Iterable[FlavorName] | None = None
) -> dict[FlavorName, FlavorPlan]:
    """Lint, then write every requested (and enabled) flavor and run `steps` on it, in order, before it is
    swapped in. Nothing is written if lint or a step fails."""
    ios = lint_or_raise(spec)
    chosen = [f for f in (flavors or FLAVORS) if f in spec.flavors and spec.flavors[f].enabled]
    plans = {f: plan_flavor(spec, f, ios) for f in chosen}
    for flavor, plan in plans.items():
        # Round-trip every config through Triton's schema before it reaches disk.
        for folder in plan.models:
            cfg.parse_pbtxt(cfg.to_pbtxt(folder.config), f"{flavor}/{folder.name}")
        plan.output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{plan.output.name}.", dir=plan.output.parent))
        # mkdtemp makes 0700 folders; a server running as another user must be able to read the repository.
        staging.chmod(0o755)
        try:
            _write(plan, staging)
            context = BuildContext(spec, ios, plan, staging)
            for step in steps:
                plan.notes.extend(step(context))
            _swap_in(staging, plan.output)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("wrote %s repository (%d models) to %s", flavor, len(plan.models), plan.output)
    return plans


def _source_files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(BINARY_SUFFIXES) and "__pycache__" not in p.parts
    }


def diff_repositories(expected: Path, actual: Path) -> list[str]:
    """Differences in source files (configs, labels, model.py, warmup data), binaries ignored."""
    exp, act = _source_files(expected), _source_files(actual)
    problems = [f"missing: {p}" for p in sorted(exp - act)]
    problems += [f"not generated by the spec: {p}" for p in sorted(act - exp)]
    problems += [
        f"differs: {p}" for p in sorted(exp & act) if not filecmp.cmp(expected / p, actual / p, shallow=False)
    ]
    return problems


def check_drift(spec: DeploySpec, flavor: FlavorName = "ngc") -> list[str]:
    """Build the flavor into a temporary folder and compare it with what is on disk."""
    ios = lint_or_raise(spec)
    plan = plan_flavor(spec, flavor, ios)
    with tempfile.TemporaryDirectory(prefix="triton-repo-check.") as tmp:
        staging = Path(tmp) / "repo"
        staging.mkdir()
        _write(plan, staging)
        if not plan.output.exists():
            return [f"{plan.output}: does not exist; run `make build-repo`"]
        return diff_repositories(staging, plan.output)
