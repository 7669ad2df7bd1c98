"""Repository assembly: turn a linted spec into the ngc and embedded model repositories on disk.

Each flavor is planned in memory first (`plan_flavor`: configs plus the files each model folder holds),
then written to a temporary sibling folder and swapped in, so a failed build never leaves a half-written
repository behind.
"""

from __future__ import annotations

import filecmp
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from build_tools import config as cfg
from build_tools.errors import LintError, RepositoryError
from build_tools.lint import lint_spec
from build_tools.spec import FLAVORS, DeploySpec, FlavorName

logger = logging.getLogger(__name__)

RUNNER_SOURCE = Path(__file__).parent / "python_models" / "onnx_runner" / "model.py"
ROUTER_SOURCE = Path(__file__).parent / "python_models" / "router" / "model.py"
# Marks a folder as written by build-repo, so a rebuild may replace it without touching anything else.
MARKER = ".triton-repo"
# Model binaries are build outputs: the ngc repository in git holds everything else.
BINARY_SUFFIXES = (".onnx", ".plan", ".json.lock")


@dataclass
class ModelFolder:
    """One model folder: its config and every file under it (relative path -> source file)."""

    name: str
    config: mc.ModelConfig
    files: dict[str, Path | bytes] = field(default_factory=dict)


@dataclass
class FlavorPlan:
    flavor: FlavorName
    output: Path
    models: list[ModelFolder]
    notes: list[str] = field(default_factory=list)


# Hook for build steps that produce extra files (TensorRT plans): called with the spec, the flavor plan
# and the staging folder after the configs are written. Registered by build_tools.tensorrt when present.
PostBuildHook = Callable[[DeploySpec, FlavorPlan, Path], list[str]]
_post_build_hooks: list[PostBuildHook] = []


def register_post_build_hook(hook: PostBuildHook) -> None:
    if hook not in _post_build_hooks:
        _post_build_hooks.append(hook)


def _labels_files(folder: ModelFolder, io: cfg.ModelIO) -> None:
    for t in io.outputs:
        if t.labels is not None:
            folder.files[t.labels.name] = t.labels


def _warmup_files(spec: DeploySpec, name: str, folder: ModelFolder, io: cfg.ModelIO) -> None:
    model = spec.models[name]
    types = {t.name: t.data_type for t in io.inputs}
    for w in model.warmup:
        for input_name, file in w.files.items():
            path = spec.resolve(file)
            rel = f"warmup/{cfg.warmup_filename(w.name, input_name)}"
            if types.get(input_name) == "STRING":
                # Triton reads BYTES warmup data serialized: each element is a 4-byte little-endian
                # length followed by its bytes (a raw file fails with "incomplete string data").
                folder.files[rel] = cfg.serialize_bytes_element(path.read_bytes())
            else:
                folder.files[rel] = path


def _python_sources(src: Path, version: int, folder: ModelFolder) -> None:
    if src.is_dir():
        for f in sorted(src.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                folder.files[f"{version}/{f.relative_to(src).as_posix()}"] = f
    else:
        folder.files[f"{version}/model.py"] = src


def plan_flavor(spec: DeploySpec, flavor: FlavorName, ios: dict[str, cfg.ModelIO]) -> FlavorPlan:
    """Every model folder of one flavor, in memory."""
    folders: list[ModelFolder] = []
    for name, model in spec.models.items():
        io = ios[name]
        if model.kind == "python":
            folder = ModelFolder(name, cfg.python_config(name, model, io, flavor))
            for version, src in model.version_sources.items():
                _python_sources(spec.resolve(src), version, folder)
        elif flavor == "ngc":
            folder = ModelFolder(name, cfg.onnx_config_ngc(name, model, io))
            for version, src in model.version_sources.items():
                folder.files[f"{version}/{cfg.ONNX_FILENAME}"] = spec.resolve(src)
        else:
            folder = ModelFolder(name, cfg.onnx_config_embedded(name, model, io))
            for version, src in model.version_sources.items():
                folder.files[f"{version}/{cfg.ONNX_FILENAME}"] = spec.resolve(src)
                folder.files[f"{version}/model.py"] = RUNNER_SOURCE
        _labels_files(folder, io)
        _warmup_files(spec, name, folder, io)
        folders.append(folder)
        if flavor == "ngc" and "tensorrt_plan" in model.formats:
            trt_name = cfg.trt_model_name(name, model)
            trt = ModelFolder(trt_name, cfg.tensorrt_config(trt_name, model, io))
            _labels_files(trt, io)
            _warmup_files(spec, name, trt, io)
            folders.append(trt)
    for router, target in spec.routers().items():
        model = spec.models[target]
        # A fresh build sends everything to the newest version; the lifecycle commands change it at runtime.
        weights = {max(model.version_sources): 100.0}
        folder = ModelFolder(router, cfg.router_config(router, target, model, ios[target], weights))
        folder.files["1/model.py"] = ROUTER_SOURCE
        _labels_files(folder, ios[target])
        folders.append(folder)
    for name, ens in spec.ensembles.items():
        steps = [cfg.step_model_name(spec, ens, flavor, s.model) for s in ens.steps]
        folder = ModelFolder(name, cfg.ensemble_config(name, ens, ios[name], steps))
        # Ensembles need an (empty) version folder to load.
        folder.files["1/.keep"] = b""
        _labels_files(folder, ios[name])
        folders.append(folder)
    return FlavorPlan(flavor, spec.resolve(spec.flavors[flavor].output), folders)


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


def lint_or_raise(spec: DeploySpec) -> dict[str, cfg.ModelIO]:
    findings, ios = lint_spec(spec)
    if findings:
        raise LintError(findings)
    return ios


def build_repositories(
    spec: DeploySpec, flavors: Iterable[FlavorName] | None = None
) -> dict[FlavorName, FlavorPlan]:
    """Lint, then write every requested (and enabled) flavor. Nothing is written if lint fails."""
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
            for hook in _post_build_hooks:
                plan.notes.extend(hook(spec, plan, staging))
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
