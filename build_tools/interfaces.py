"""Model interfaces, resolved once from the spec and the model files: every job downstream reads these.

For each model and ensemble: input/output names, data types, config-level dims (batch dim removed when
batching), formats, labels files, the warmup files its folder must hold, and the ONNX graph of every
version. Problems come back as findings (strings naming the spec field), never as exceptions, so the
linter reports them all at once. Config builders, the shm estimate, the plan step and clients' name
lookups take these instead of re-reading graphs.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from build_tools.errors import ModelInspectionError
from build_tools.onnx_io import GraphInterface, GraphTensor, read_interface
from build_tools.spec import (
    DeploySpec,
    EnsembleSpec,
    FlavorName,
    InputOverride,
    ModelSpec,
    OutputOverride,
    TensorSpec,
)

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TensorIO:
    """A tensor as it appears in config.pbtxt: dims exclude the batch dimension when batching."""

    name: str
    data_type: str  # Triton name without TYPE_, e.g. FP32
    dims: tuple[int, ...]
    format: str | None = None
    labels: Path | None = None
    optional: bool = False

    @property
    def proto_type(self) -> int:
        return mc.DataType.Value(f"TYPE_{self.data_type}")


@dataclass
class ModelIO:
    inputs: list[TensorIO]
    outputs: list[TensorIO]
    findings: list[str] = field(default_factory=list)
    # What the model's folder holds besides its sources (labels, warmup data): relative path -> content.
    files: dict[str, Path | bytes] = field(default_factory=dict)
    # The ONNX graph of every version (ONNX models only), read once here for every later step.
    graphs: dict[int, GraphInterface] = field(default_factory=dict)


def _batch_fix_hint(model: str, tensor: str) -> str:
    return (
        f"re-export it with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={{'{tensor}': "
        f"{{0: 'batch'}}}})) or set models.{model}.max_batch_size: 0 to serve it without batching"
    )


def _graph_tensor_io(
    model_name: str, model: ModelSpec, t: GraphTensor, role: str, findings: list[str]
) -> tuple[int, ...]:
    where = f"models.{model_name}.{role}.{t.name}"
    if model.max_batch_size == 0:
        return t.dims
    if not t.dims:
        findings.append(
            f"{where}: a scalar tensor has no batch dimension, but max_batch_size is "
            f"{model.max_batch_size}; set max_batch_size: 0"
        )
        return t.dims
    if not t.batch_dim_dynamic:
        findings.append(
            f"{where}: the graph fixes the batch dimension to {t.dims[0]} (shape {list(t.dims)}) but "
            f"max_batch_size is {model.max_batch_size}; {_batch_fix_hint(model_name, t.name)}"
        )
    return t.dims[1:]


def resolve_model_io(spec: DeploySpec, name: str) -> ModelIO:
    """Config-level inputs/outputs of one model; problems come back as findings, not exceptions."""
    model = spec.models[name]
    findings: list[str] = []
    if model.kind == "python":
        assert isinstance(model.inputs, list) and isinstance(model.outputs, list)
        ins = [_declared(name, t, "inputs", spec, findings) for t in model.inputs]
        outs = [_declared(name, t, "outputs", spec, findings) for t in model.outputs]
        return _with_files(spec, model, ModelIO(ins, outs, findings))

    sources = model.version_sources
    try:
        graph = read_interface(spec.resolve(sources[max(sources)]))
    except ModelInspectionError as e:
        return ModelIO([], [], [f"models.{name}.source: {e}"])
    assert isinstance(model.inputs, dict) and isinstance(model.outputs, dict)
    for key, overrides, tensors, role in (
        ("inputs", model.inputs, graph.inputs, "input"),
        ("outputs", model.outputs, graph.outputs, "output"),
    ):
        known = [t.name for t in tensors]
        for override_name in overrides:
            if override_name not in known:
                findings.append(
                    f"models.{name}.{key}.{override_name}: the graph has no {role} named "
                    f"{override_name!r}; its {key} are {known}"
                )
    ins = []
    for t in graph.inputs:
        override = model.inputs.get(t.name, InputOverride())
        dims = _graph_tensor_io(name, model, t, "inputs", findings)
        fmt = override.format
        if fmt in ("FORMAT_NCHW", "FORMAT_NHWC") and len(dims) != 3:
            findings.append(
                f"models.{name}.inputs.{t.name}.format: {fmt} needs 3 dims (excluding batch), "
                f"the graph gives {list(dims)}"
            )
        ins.append(TensorIO(t.name, t.data_type, dims, fmt, None, bool(override.optional)))
    outs = []
    for t in graph.outputs:
        override = model.outputs.get(t.name, OutputOverride())
        dims = _graph_tensor_io(name, model, t, "outputs", findings)
        labels = _labels(name, "outputs", t.name, override.labels, dims, spec, findings)
        outs.append(TensorIO(t.name, t.data_type, dims, None, labels))
    # Every version must expose the same interface, or clients break when the version changes.
    graphs = {max(sources): graph}
    for version, src in sorted(sources.items()):
        if version == max(sources):
            continue
        try:
            other = read_interface(spec.resolve(src))
        except ModelInspectionError as e:
            findings.append(f"models.{name}.versions.{version}: {e}")
            continue
        graphs[version] = other
        if (other.inputs, other.outputs) != (graph.inputs, graph.outputs):
            findings.append(
                f"models.{name}.versions.{version}: interface differs from version {max(sources)} "
                f"(every version of a model must have the same inputs and outputs)"
            )
    return _with_files(spec, model, ModelIO(ins, outs, findings, graphs=dict(sorted(graphs.items()))))


def _labels_files(io: ModelIO) -> None:
    for t in io.outputs:
        if t.labels is not None:
            io.files[t.labels.name] = t.labels


def _with_files(spec: DeploySpec, model: ModelSpec, io: ModelIO) -> ModelIO:
    """Fill io.files: labels next to the config, warmup data under warmup/ (named as the config says)."""
    _labels_files(io)
    types = {t.name: t.data_type for t in io.inputs}
    for w in model.warmup:
        for input_name, file in w.files.items():
            path = spec.resolve(file)
            if not path.is_file():
                continue  # the linter reports it
            rel = f"warmup/{warmup_filename(w.name, input_name)}"
            if types.get(input_name) == "STRING":
                # Triton reads BYTES warmup data serialized: each element is a 4-byte little-endian
                # length followed by its bytes (a raw file fails with "incomplete string data").
                io.files[rel] = serialize_bytes_element(path.read_bytes())
            else:
                io.files[rel] = path
    return io


def _declared(name: str, t: TensorSpec, key: str, spec: DeploySpec, findings: list[str]) -> TensorIO:
    dims = tuple(t.dims)
    labels = _labels(name, key, t.name, t.labels, dims, spec, findings) if key == "outputs" else None
    return TensorIO(t.name, t.data_type, dims, t.format, labels, t.optional)


def _labels(
    owner: str,
    key: str,
    tensor: str,
    labels: str | None,
    dims: tuple[int, ...],
    spec: DeploySpec,
    findings: list[str],
    section: str = "models",
) -> Path | None:
    if labels is None:
        return None
    path = spec.resolve(labels)
    where = f"{section}.{owner}.{key}.{tensor}.labels"
    if not path.is_file():
        findings.append(f"{where}: labels file {labels!r} not found (resolved to {path})")
        return None
    count = len([line for line in path.read_text().splitlines() if line.strip()])
    if dims and dims[-1] > 0 and count != dims[-1]:
        findings.append(
            f"{where}: {labels!r} has {count} labels but the output has {dims[-1]} classes"
        )
    return path


def trt_model_name(name: str, model: ModelSpec) -> str:
    """The name of the TensorRT plan variant of model `name` in the ngc repository."""
    return model.tensorrt.model_name or f"{name}_trt"


def torchscript_model_name(name: str, model: ModelSpec) -> str:
    """The name of the TorchScript variant of model `name` (both flavors)."""
    return model.torchscript.model_name or f"{name}_torchscript"


def step_model_name(ensemble: EnsembleSpec, flavor: FlavorName, model: str) -> str:
    """The model a step runs in a flavor (its substitution, if any)."""
    return ensemble.substitutions.get(flavor, {}).get(model, model)


def resolve_ensemble_io(spec: DeploySpec, name: str, ios: dict[str, ModelIO]) -> ModelIO:
    """Ensemble inputs/outputs derived from the steps' models, with wiring checks as findings."""
    ens = spec.ensembles[name]
    findings: list[str] = []
    produced: dict[str, tuple[TensorIO, str]] = {}
    consumed: dict[str, list[tuple[TensorIO, str]]] = {}
    for i, step in enumerate(ens.steps):
        where = f"ensembles.{name}.steps[{i}]"
        if step.model not in ios:
            findings.append(
                f"{where}.model: {step.model!r} is not a model in this spec; models: {sorted(ios)}"
            )
            continue
        io = ios[step.model]
        owner = spec.routers().get(step.model, step.model)  # a router batches like its target
        step_mbs = spec.models[owner].max_batch_size if owner in spec.models else 0
        if ens.max_batch_size > 0 and step_mbs < ens.max_batch_size:
            findings.append(
                f"{where}.model: {step.model!r} has max_batch_size {step_mbs}, below the ensemble's "
                f"max_batch_size {ens.max_batch_size}"
            )
        by_in = {t.name: t for t in io.inputs}
        by_out = {t.name: t for t in io.outputs}
        for model_tensor, ens_tensor in step.input_map.items():
            if model_tensor not in by_in:
                findings.append(
                    f"{where}.input_map.{model_tensor}: {step.model!r} has no input {model_tensor!r}; "
                    f"its inputs are {sorted(by_in)}"
                )
                continue
            consumed.setdefault(ens_tensor, []).append((by_in[model_tensor], f"{where}.input_map.{model_tensor}"))
        for model_tensor in by_in:
            if model_tensor not in step.input_map and not by_in[model_tensor].optional:
                findings.append(
                    f"{where}.input_map: input {model_tensor!r} of {step.model!r} is not mapped to any "
                    f"ensemble tensor"
                )
        for model_tensor, ens_tensor in step.output_map.items():
            if model_tensor not in by_out:
                findings.append(
                    f"{where}.output_map.{model_tensor}: {step.model!r} has no output {model_tensor!r}; "
                    f"its outputs are {sorted(by_out)}"
                )
                continue
            if ens_tensor in produced:
                findings.append(
                    f"{where}.output_map.{model_tensor}: ensemble tensor {ens_tensor!r} is already "
                    f"produced by {produced[ens_tensor][1]}"
                )
            produced[ens_tensor] = (by_out[model_tensor], f"{where}.output_map.{model_tensor}")
    # Triton schedules steps by data flow, not list order: check every use against its producer.
    for ens_tensor, uses in consumed.items():
        if ens_tensor in produced:
            src, src_where = produced[ens_tensor]
            for use, use_where in uses:
                _check_match(src, use, src_where, use_where, findings)
    inputs: list[TensorIO] = []
    for ens_tensor, uses in consumed.items():
        if ens_tensor in produced:
            continue
        first, first_where = uses[0]
        for other, other_where in uses[1:]:
            _check_match(first, other, first_where, other_where, findings)
        override = ens.inputs.get(ens_tensor, InputOverride())
        inputs.append(TensorIO(ens_tensor, first.data_type, first.dims, override.format or first.format))
    for declared in ens.inputs:
        if declared not in {t.name for t in inputs}:
            findings.append(
                f"ensembles.{name}.inputs.{declared}: no step consumes {declared!r} as an ensemble input"
            )
    outputs: list[TensorIO] = []
    for out_name, override in ens.outputs.items():
        if out_name not in produced:
            findings.append(
                f"ensembles.{name}.outputs.{out_name}: no step's output_map produces {out_name!r}; "
                f"produced tensors: {sorted(produced)}"
            )
            continue
        src = produced[out_name][0]
        labels = src.labels
        if override.labels:
            labels = _labels(name, "outputs", out_name, override.labels, src.dims, spec, findings, "ensembles")
        outputs.append(TensorIO(out_name, src.data_type, src.dims, None, labels))
    for ens_tensor, (_, where) in produced.items():
        if ens_tensor not in consumed and ens_tensor not in ens.outputs:
            findings.append(f"{where}: ensemble tensor {ens_tensor!r} is produced but never used")
    io = ModelIO(inputs, outputs, findings)
    _labels_files(io)
    return io


def _check_match(a: TensorIO, b: TensorIO, a_where: str, b_where: str, findings: list[str]) -> None:
    if a.data_type != b.data_type:
        findings.append(f"{b_where}: data type {b.data_type} does not match {a.data_type} from {a_where}")
    if len(a.dims) != len(b.dims) or any(x != y and -1 not in (x, y) for x, y in zip(a.dims, b.dims)):
        findings.append(f"{b_where}: dims {list(b.dims)} do not match {list(a.dims)} from {a_where}")


def serialize_bytes_element(data: bytes) -> bytes:
    """One BYTES tensor element in Triton's raw serialization (uint32 little-endian length + data)."""
    return struct.pack("<I", len(data)) + data


def warmup_filename(warmup_name: str, input_name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{warmup_name}_{input_name}")
    return f"{safe}.bin"


Interfaces = dict[str, ModelIO]


def router_original_size_input(spec: DeploySpec, target: str) -> str | None:
    """The router's own optional input carrying each image's original size (monitoring), if any."""
    watched = spec.monitoring.models.get(target)
    return watched.original_size_input if watched is not None else None


def resolve_interfaces(spec: DeploySpec) -> Interfaces:
    """Every model's, then every ensemble's interface (findings inside each ModelIO)."""
    ios: Interfaces = {name: resolve_model_io(spec, name) for name in spec.models}
    for router, target in spec.routers().items():
        # A lifecycle router has its target's interface (an ensemble step may name it instead of the
        # target) and its labels, not its warmup data.
        t = ios[target]
        labels = {k: v for k, v in t.files.items() if not k.startswith("warmup/")}
        inputs, findings = list(t.inputs), []
        side = router_original_size_input(spec, target)
        if side is not None:
            # The router keeps this one (the monitoring's original_size); the target never sees it.
            if side in {i.name for i in inputs}:
                findings.append(f"monitoring.models.{target}.original_size_input: {side!r} is already an input "
                                f"of {target}; pick a name its inputs {[i.name for i in inputs]} do not use")
            else:
                inputs.append(TensorIO(side, "FP32", (1,), optional=True))
        ios[router] = ModelIO(inputs, t.outputs, findings, files=labels)
    for name in spec.ensembles:
        ios[name] = resolve_ensemble_io(spec, name, ios)
    return ios
