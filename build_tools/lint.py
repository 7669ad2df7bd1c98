"""Repository linter: every check that needs the model files or several spec fields at once.

`build-repo` runs `lint_spec` before it writes anything; each finding names the model and the field.
"""

from __future__ import annotations

import logging

import numpy as np

from build_tools.config import default_instance_groups, torchscript_instance_groups
from build_tools.interfaces import (
    Interfaces,
    ModelIO,
    resolve_interfaces,
    torchscript_model_name,
    trt_model_name,
)
from build_tools.proxy import lint_request_limits
from build_tools.spec import FLAVORS, DeploySpec, FlavorName, ModelSpec

logger = logging.getLogger(__name__)

# Which instance kinds each flavor can load, per model kind. The embedded server has no GPU backend
# for ONNX (our runner is onnxruntime on the CPU); the ngc image serves both.
ALLOWED_KINDS: dict[FlavorName, dict[str, set[str]]] = {
    "ngc": {
        "onnx": {"KIND_AUTO", "KIND_GPU", "KIND_CPU"},
        "python": {"KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL"},
    },
    "embedded": {
        "onnx": {"KIND_CPU"},
        "python": {"KIND_CPU", "KIND_MODEL"},
    },
}
# The TorchScript variant: the PyTorch backend (ngc) and the torch runner (embedded) both run on a GPU;
# the runner fails at load with a clear message where torch sees no CUDA device.
TORCHSCRIPT_KINDS: dict[FlavorName, set[str]] = {
    "ngc": {"KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL"},
    "embedded": {"KIND_CPU", "KIND_GPU"},
}


def _lint_batching(name: str, model: ModelSpec, findings: list[str]) -> None:
    where = f"models.{name}"
    db = model.dynamic_batching
    if db is not None:
        if model.max_batch_size == 0:
            findings.append(
                f"{where}.dynamic_batching: needs max_batch_size > 0 (Triton rejects dynamic batching "
                f"for a model that does not batch)"
            )
        for size in db.preferred_batch_size:
            if model.max_batch_size and size > model.max_batch_size:
                findings.append(
                    f"{where}.dynamic_batching.preferred_batch_size: {size} is above max_batch_size "
                    f"{model.max_batch_size}"
                )
        if sorted(set(db.preferred_batch_size)) != list(db.preferred_batch_size):
            findings.append(
                f"{where}.dynamic_batching.preferred_batch_size: {db.preferred_batch_size} must be "
                f"distinct and ascending"
            )
    for i, w in enumerate(model.warmup):
        limit = max(model.max_batch_size, 1)
        if w.batch_size > limit:
            findings.append(
                f"{where}.warmup[{i}].batch_size: {w.batch_size} is above max_batch_size {model.max_batch_size}"
                f"{' (a non-batching model warms up with batch_size 1)' if model.max_batch_size == 0 else ''}"
            )


def _lint_instances(name: str, model: ModelSpec, spec: DeploySpec, findings: list[str]) -> None:
    for flavor in FLAVORS:
        if flavor not in spec.flavors:
            continue
        allowed = ALLOWED_KINDS[flavor][model.kind]
        for i, g in enumerate(default_instance_groups(model, flavor)):
            if g.kind not in allowed:
                findings.append(
                    f"models.{name}.instance_groups.{flavor}[{i}].kind: {g.kind} cannot load in the "
                    f"{flavor} flavor for a {model.kind} model; allowed: {', '.join(sorted(allowed))}"
                )
            if g.gpus and g.kind not in ("KIND_GPU", "KIND_AUTO"):
                findings.append(f"models.{name}.instance_groups.{flavor}[{i}].gpus: only valid with KIND_GPU")


def _lint_files(name: str, model: ModelSpec, io: ModelIO, spec: DeploySpec, findings: list[str]) -> None:
    for version, src in sorted(model.version_sources.items()):
        path = spec.resolve(src)
        field = "source" if model.versions is None else f"versions.{version}"
        if not path.exists():
            findings.append(f"models.{name}.{field}: {src!r} not found (resolved to {path})")
        elif model.kind == "onnx" and path.suffix != ".onnx":
            findings.append(f"models.{name}.{field}: {src!r} is not an .onnx file")
        elif model.kind == "python" and path.is_file() and path.suffix != ".py":
            findings.append(f"models.{name}.{field}: {src!r} must be a model.py file or a folder holding one")
        elif model.kind == "python" and path.is_dir() and not (path / "model.py").is_file():
            findings.append(f"models.{name}.{field}: folder {src!r} has no model.py")
    by_name = {t.name: t for t in io.inputs}
    for i, w in enumerate(model.warmup):
        if w.data != "file":
            strings = [t.name for t in io.inputs if t.data_type == "STRING" and not t.optional]
            if strings:
                findings.append(
                    f"models.{name}.warmup[{i}].data: {w.data} data cannot fill BYTES input(s) {strings}; "
                    f"use data: file with files: {{input: path}}"
                )
            continue
        for input_name, file in w.files.items():
            if input_name not in by_name:
                findings.append(
                    f"models.{name}.warmup[{i}].files.{input_name}: the model has no input {input_name!r}; "
                    f"inputs: {sorted(by_name)}"
                )
            elif not spec.resolve(file).is_file():
                findings.append(f"models.{name}.warmup[{i}].files.{input_name}: {file!r} not found")
        missing = [t for t in by_name if t not in w.files and not by_name[t].optional]
        if missing:
            findings.append(f"models.{name}.warmup[{i}].files: no file for input(s) {missing}")


def _lint_formats(name: str, model: ModelSpec, spec: DeploySpec, findings: list[str]) -> None:
    if "tensorrt_plan" in model.formats:
        trt_name = trt_model_name(name, model)
        if trt_name in spec.models or trt_name in spec.ensembles:
            findings.append(
                f"models.{name}.tensorrt.model_name: {trt_name!r} clashes with a model of the spec"
            )
        if model.tensorrt.opt_batch_size and model.tensorrt.opt_batch_size > max(model.max_batch_size, 1):
            findings.append(
                f"models.{name}.tensorrt.opt_batch_size: {model.tensorrt.opt_batch_size} is above "
                f"max_batch_size {model.max_batch_size}"
            )
        for key in ("calibration_data", "evaluation_data"):
            value = getattr(model.tensorrt, key)
            if value and not spec.resolve(value).is_file():
                findings.append(f"models.{name}.tensorrt.{key}: {value!r} not found")
        if model.tensorrt.precision == "int8" and not model.tensorrt.calibration_data:
            findings.append(f"models.{name}.tensorrt.calibration_data: int8 precision needs calibration data")


def _lint_gate(name: str, model: ModelSpec, io: ModelIO, spec: DeploySpec, findings: list[str]) -> None:
    gate = model.lifecycle.gate if model.lifecycle else None
    if gate is None:
        return
    where = f"models.{name}.lifecycle.gate"
    for key in ("data", "labels"):
        path = spec.resolve(getattr(gate, key))
        if not path.is_file():
            findings.append(f"{where}.{key}: file {getattr(gate, key)!r} not found (resolved to {path})")
    outputs = [t.name for t in io.outputs]
    if gate.output is not None and gate.output not in outputs:
        findings.append(f"{where}.output: {gate.output!r} is not an output of {name}; outputs: {outputs}")
    elif gate.output is None and len(outputs) != 1:
        findings.append(f"{where}.output: {name} has {len(outputs)} outputs {outputs}; name the one with class scores")


def _lint_evaluation(name: str, model: ModelSpec, io: ModelIO, spec: DeploySpec, findings: list[str]) -> None:
    """The labelled evaluation set: both files readable, one array for the model's input, one label each."""
    ev = model.evaluation
    if ev is None:
        return
    where = f"models.{name}.evaluation"
    paths = {key: spec.resolve(getattr(ev, key)) for key in ("data", "labels")}
    missing = [key for key, path in paths.items() if not path.is_file()]
    for key in missing:
        findings.append(f"{where}.{key}: file {getattr(ev, key)!r} not found (resolved to {paths[key]})")
    if missing:
        return
    inputs = [t.name for t in io.inputs]
    try:
        with np.load(paths["data"], allow_pickle=False) as npz:
            arrays = {k: npz[k].shape for k in npz.files}
        labels = np.load(paths["labels"], allow_pickle=False)
    except (OSError, ValueError) as e:
        findings.append(f"{where}: cannot read {ev.data!r} / {ev.labels!r}: {e}")
        return
    shape = next((arrays[k] for k in inputs if k in arrays), None)
    if shape is None and len(arrays) == 1:
        shape = next(iter(arrays.values()))
    if shape is None:
        findings.append(f"{where}.data: {ev.data!r} holds {sorted(arrays)}; expected an array named like "
                        f"the input ({', '.join(inputs)}) or exactly one array")
    elif labels.ndim != 1 or len(labels) != shape[0]:
        findings.append(f"{where}.labels: {ev.labels!r} has shape {list(labels.shape)}; expected "
                        f"[{shape[0]}] (one label per sample of {ev.data!r})")


def _lint_torchscript(name: str, model: ModelSpec, spec: DeploySpec, findings: list[str]) -> None:
    if "torchscript" not in model.formats:
        if model.torchscript.source or model.torchscript.instance_groups or model.torchscript.model_name:
            findings.append(f"models.{name}.torchscript: set, but `formats` {model.formats} lacks torchscript")
        return
    if model.kind != "onnx":
        return  # the spec rejects formats on python models
    ts_name = torchscript_model_name(name, model)
    if ts_name in spec.models or ts_name in spec.ensembles or ts_name == trt_model_name(name, model):
        findings.append(f"models.{name}.torchscript.model_name: {ts_name!r} clashes with another model")
    for version, src in sorted(model.torchscript_sources.items()):
        path = spec.resolve(src)
        field = "torchscript.source" if model.versions is None else f"versions.{version} (as .pt)"
        if not path.is_file():
            findings.append(
                f"models.{name}.{field}: TorchScript file {src!r} not found (resolved to {path}); "
                f"export the TorchScript twin of {model.version_sources[version]!r} with the script that "
                f"trained that model, or drop torchscript from formats"
            )
    for flavor in FLAVORS:
        if flavor not in spec.flavors:
            continue
        for i, g in enumerate(torchscript_instance_groups(model, flavor)):
            if g.kind not in TORCHSCRIPT_KINDS[flavor]:
                findings.append(
                    f"models.{name}.torchscript.instance_groups.{flavor}[{i}].kind: {g.kind} cannot load "
                    f"the TorchScript variant in the {flavor} flavor; allowed: "
                    f"{', '.join(sorted(TORCHSCRIPT_KINDS[flavor]))}"
                )


def lint_spec(spec: DeploySpec) -> tuple[list[str], Interfaces]:
    """All findings for the spec, and the resolved interface of every model and ensemble."""
    findings: list[str] = []
    ios = resolve_interfaces(spec)
    for name, model in spec.models.items():
        io = ios[name]
        findings.extend(io.findings)
        _lint_batching(name, model, findings)
        _lint_instances(name, model, spec, findings)
        _lint_files(name, model, io, spec, findings)
        _lint_formats(name, model, spec, findings)
        _lint_torchscript(name, model, spec, findings)
        _lint_evaluation(name, model, io, spec, findings)
    for router, target in spec.routers().items():
        findings.extend(ios[router].findings)
        _lint_gate(target, spec.models[target], ios[target], spec, findings)
    # Models a substitution may name: every model, its router, and every plan and TorchScript variant the
    # spec builds.
    known = (
        set(spec.models)
        | set(spec.routers())
        | {trt_model_name(n, m) for n, m in spec.models.items() if "tensorrt_plan" in m.formats}
        | {torchscript_model_name(n, m) for n, m in spec.models.items() if "torchscript" in m.formats}
    )
    for name, ens in spec.ensembles.items():
        for flavor, subs in ens.substitutions.items():
            for original, replacement in subs.items():
                if replacement not in known:
                    findings.append(
                        f"ensembles.{name}.substitutions.{flavor}.{original}: {replacement!r} is not a "
                        f"model this spec builds; known: {sorted(known)}"
                    )
        findings.extend(ios[name].findings)
    findings.extend(lint_request_limits(spec))
    # One message per problem, in spec order: findings from shared resolution can repeat.
    unique = list(dict.fromkeys(findings))
    for f in unique:
        logger.debug("lint: %s", f)
    return unique, ios
