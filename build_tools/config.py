"""config.pbtxt generation through Triton's own schema (model_config.proto), one function per model kind.

Nothing here formats text by hand: configs are `ModelConfig` protobufs, written with `text_format`.
Interfaces are resolved first (`resolve_model_io`, `resolve_ensemble_io`), shared with the linter, so
the config and the checks can never disagree about a tensor.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build_tools.errors import ModelInspectionError, RepositoryError
from build_tools.onnx_io import GraphInterface, GraphTensor, read_interface
from build_tools.spec import (
    DeploySpec,
    EnsembleSpec,
    FlavorName,
    InputOverride,
    InstanceGroupSpec,
    ModelSpec,
    OutputOverride,
    TensorSpec,
)

logger = logging.getLogger(__name__)

# Parameter keys the embedded ONNX Runtime runner (build_tools/python_models/onnx_runner) reads.
RUNNER_PARAM_ONNX_FILE = "onnx_file"
RUNNER_PARAM_INTRA = "intra_op_threads"
RUNNER_PARAM_INTER = "inter_op_threads"
RUNNER_PARAM_OPT_LEVEL = "graph_optimization_level"
# Parameter keys the generated router (build_tools/python_models/router) reads.
ROUTER_PARAM_TARGET = "target_model"
ROUTER_PARAM_WEIGHTS = "weights"
ROUTER_PARAM_PIN = "pin_parameter"
ONNX_FILENAME = "model.onnx"
PLAN_FILENAME = "model.plan"


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


def model_interface(spec: DeploySpec, model: ModelSpec) -> GraphInterface:
    """The graph interface of the newest version (the one clients see by default)."""
    sources = model.version_sources
    return read_interface(spec.resolve(sources[max(sources)]))


def resolve_model_io(spec: DeploySpec, name: str) -> ModelIO:
    """Config-level inputs/outputs of one model; problems come back as findings, not exceptions."""
    model = spec.models[name]
    findings: list[str] = []
    if model.kind == "python":
        assert isinstance(model.inputs, list) and isinstance(model.outputs, list)
        ins = [_declared(name, t, "inputs", spec, findings) for t in model.inputs]
        outs = [_declared(name, t, "outputs", spec, findings) for t in model.outputs]
        return ModelIO(ins, outs, findings)

    try:
        graph = model_interface(spec, model)
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
    sources = model.version_sources
    for version, src in sorted(sources.items()):
        if version == max(sources):
            continue
        try:
            other = read_interface(spec.resolve(src))
        except ModelInspectionError as e:
            findings.append(f"models.{name}.versions.{version}: {e}")
            continue
        if (other.inputs, other.outputs) != (graph.inputs, graph.outputs):
            findings.append(
                f"models.{name}.versions.{version}: interface differs from version {max(sources)} "
                f"(every version of a model must have the same inputs and outputs)"
            )
    return ModelIO(ins, outs, findings)


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


def step_model_name(spec: DeploySpec, ensemble: EnsembleSpec, flavor: FlavorName, model: str) -> str:
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
    return ModelIO(inputs, outputs, findings)


def _check_match(a: TensorIO, b: TensorIO, a_where: str, b_where: str, findings: list[str]) -> None:
    if a.data_type != b.data_type:
        findings.append(f"{b_where}: data type {b.data_type} does not match {a.data_type} from {a_where}")
    if len(a.dims) != len(b.dims) or any(x != y and -1 not in (x, y) for x, y in zip(a.dims, b.dims)):
        findings.append(f"{b_where}: dims {list(b.dims)} do not match {list(a.dims)} from {a_where}")


# ---------------------------------------------------------------------------------------------------
# Protobuf builders


def _io_protos(cfg: mc.ModelConfig, io: ModelIO) -> None:
    for t in io.inputs:
        inp = cfg.input.add(name=t.name, data_type=t.proto_type, dims=list(t.dims))
        if t.format:
            inp.format = mc.ModelInput.Format.Value(t.format)
        if t.optional:
            inp.optional = True
    for t in io.outputs:
        out = cfg.output.add(name=t.name, data_type=t.proto_type, dims=list(t.dims))
        if t.labels is not None:
            out.label_filename = t.labels.name


def _dynamic_batching(cfg: mc.ModelConfig, model: ModelSpec) -> None:
    db = model.dynamic_batching
    if db is None:
        return
    cfg.dynamic_batching.preferred_batch_size.extend(db.preferred_batch_size)
    cfg.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_microseconds
    if db.preserve_ordering:
        cfg.dynamic_batching.preserve_ordering = True
    if db.max_queue_size is not None or db.default_timeout_microseconds is not None:
        policy = cfg.dynamic_batching.default_queue_policy
        if db.max_queue_size is not None:
            policy.max_queue_size = db.max_queue_size
        if db.default_timeout_microseconds is not None:
            policy.default_timeout_microseconds = db.default_timeout_microseconds
            policy.timeout_action = mc.ModelQueuePolicy.REJECT


def default_instance_groups(model: ModelSpec, flavor: FlavorName) -> list[InstanceGroupSpec]:
    if flavor in model.instance_groups:
        return model.instance_groups[flavor]
    if flavor == "ngc" and model.kind == "onnx":
        return [InstanceGroupSpec(kind="KIND_GPU", count=1)]
    return [InstanceGroupSpec(kind="KIND_CPU", count=1)]


def _instance_groups(cfg: mc.ModelConfig, groups: list[InstanceGroupSpec]) -> None:
    for g in groups:
        grp = cfg.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(g.kind), count=g.count)
        if g.gpus:
            grp.gpus.extend(g.gpus)


def _version_policy(cfg: mc.ModelConfig, model: ModelSpec) -> None:
    vp = model.version_policy
    if vp is None:
        return
    if vp.latest is not None:
        cfg.version_policy.latest.num_versions = vp.latest
    elif vp.all:
        cfg.version_policy.all.SetInParent()
    elif vp.specific:
        cfg.version_policy.specific.versions.extend(vp.specific)


def serialize_bytes_element(data: bytes) -> bytes:
    """One BYTES tensor element in Triton's raw serialization (uint32 little-endian length + data)."""
    return struct.pack("<I", len(data)) + data


def warmup_filename(warmup_name: str, input_name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{warmup_name}_{input_name}")
    return f"{safe}.bin"


def _warmup(cfg: mc.ModelConfig, model: ModelSpec, io: ModelIO) -> None:
    for w in model.warmup:
        mw = cfg.model_warmup.add(name=w.name, batch_size=w.batch_size, count=w.count)
        for t in io.inputs:
            if t.optional and w.data != "file":
                continue
            inp = mw.inputs[t.name]
            inp.data_type = t.proto_type
            # Variable dims need a concrete size for warmup; 1 is the smallest valid choice.
            inp.dims.extend(d if d > 0 else 1 for d in t.dims)
            if w.data == "zero":
                inp.zero_data = True
            elif w.data == "random":
                inp.random_data = True
            else:
                inp.input_data_file = warmup_filename(w.name, t.name)


def _common(cfg: mc.ModelConfig, model: ModelSpec, io: ModelIO, flavor: FlavorName) -> None:
    cfg.max_batch_size = model.max_batch_size
    _io_protos(cfg, io)
    _dynamic_batching(cfg, model)
    _instance_groups(cfg, default_instance_groups(model, flavor))
    _version_policy(cfg, model)
    _warmup(cfg, model, io)
    if model.response_cache:
        cfg.response_cache.enable = True
    for key, value in sorted(model.parameters.items()):
        cfg.parameters[key].string_value = value


def onnx_config_ngc(name: str, model: ModelSpec, io: ModelIO) -> mc.ModelConfig:
    """An ONNX model on the official image's onnxruntime backend."""
    cfg = mc.ModelConfig(name=name, platform="onnxruntime_onnx", default_model_filename=ONNX_FILENAME)
    _common(cfg, model, io, "ngc")
    # The onnxruntime backend reads these parameter names (see its README).
    cfg.parameters["intra_op_thread_count"].string_value = str(model.runtime.intra_op_threads)
    cfg.parameters["inter_op_thread_count"].string_value = str(model.runtime.inter_op_threads)
    if model.ort_tensorrt.enabled:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = model.ort_tensorrt.precision_mode
        acc.parameters["max_workspace_size_bytes"] = str(model.ort_tensorrt.max_workspace_size_bytes)
    return cfg


def onnx_config_embedded(name: str, model: ModelSpec, io: ModelIO) -> mc.ModelConfig:
    """The same ONNX model, run by this project's Python-backend ONNX Runtime runner."""
    cfg = mc.ModelConfig(name=name, backend="python")
    _common(cfg, model, io, "embedded")
    cfg.parameters[RUNNER_PARAM_ONNX_FILE].string_value = ONNX_FILENAME
    cfg.parameters[RUNNER_PARAM_INTRA].string_value = str(model.runtime.intra_op_threads)
    cfg.parameters[RUNNER_PARAM_INTER].string_value = str(model.runtime.inter_op_threads)
    cfg.parameters[RUNNER_PARAM_OPT_LEVEL].string_value = model.runtime.graph_optimization_level
    return cfg


def python_config(name: str, model: ModelSpec, io: ModelIO, flavor: FlavorName) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, backend="python")
    _common(cfg, model, io, flavor)
    return cfg


def router_weights_json(weights: dict[int, float]) -> str:
    """The router's `weights` parameter: {"version": percent}, versions ascending, shares summing to 100."""
    import json

    return json.dumps({str(v): round(float(p), 6) for v, p in sorted(weights.items()) if p > 0}, separators=(",", ":"))


def router_config(
    name: str, target: str, model: ModelSpec, io: ModelIO, weights: dict[int, float]
) -> mc.ModelConfig:
    """The BLS router in front of `target`'s versions: same inputs and outputs, weights as a parameter.

    The same on both flavors (the official image has the python backend too); it batches like its
    target, taking whatever is queued, so versions get one BLS request per batch.
    """
    assert model.lifecycle is not None
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=model.max_batch_size)
    _io_protos(cfg, io)
    if model.max_batch_size > 0:
        cfg.dynamic_batching.max_queue_delay_microseconds = 0
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=model.lifecycle.router_instances)
    cfg.parameters[ROUTER_PARAM_TARGET].string_value = target
    cfg.parameters[ROUTER_PARAM_WEIGHTS].string_value = router_weights_json(weights)
    cfg.parameters[ROUTER_PARAM_PIN].string_value = model.lifecycle.pin_parameter
    return cfg


def tensorrt_config(name: str, model: ModelSpec, io: ModelIO) -> mc.ModelConfig:
    """The TensorRT plan variant of an ONNX model (ngc only), with the same inputs and outputs."""
    cfg = mc.ModelConfig(name=name, platform="tensorrt_plan", default_model_filename=PLAN_FILENAME)
    _common(cfg, model, io, "ngc")
    # Thread settings are onnxruntime-backend parameters; they mean nothing to a plan.
    for key in ("intra_op_thread_count", "inter_op_thread_count"):
        if key in cfg.parameters:
            del cfg.parameters[key]
    # The tensorrt backend only runs on GPUs: a KIND_CPU/KIND_MODEL group copied from the ONNX model's
    # instance groups would fail to load, so the plan keeps the counts and GPU lists but on KIND_GPU.
    for group in cfg.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_GPU
    return cfg


def ensemble_config(name: str, ens: EnsembleSpec, io: ModelIO, step_names: list[str]) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=ens.max_batch_size)
    _io_protos(cfg, io)
    for step, model_name in zip(ens.steps, step_names):
        s = cfg.ensemble_scheduling.step.add(model_name=model_name, model_version=step.model_version)
        for k, v in step.input_map.items():
            s.input_map[k] = v
        for k, v in step.output_map.items():
            s.output_map[k] = v
    return cfg


# ---------------------------------------------------------------------------------------------------
# Text round trip


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str, source: str = "<config.pbtxt>") -> mc.ModelConfig:
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise RepositoryError(f"{source}: not a valid ModelConfig: {e}") from e
    return cfg


def read_config(path: str | Path) -> mc.ModelConfig:
    path = Path(path)
    return parse_pbtxt(path.read_text(), str(path))
