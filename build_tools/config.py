"""Model folders for one flavor: each folder's config.pbtxt (a ModelConfig protobuf, Triton's own schema)
and every file it holds, built from the spec and the resolved interfaces (build_tools.interfaces).

Nothing here formats text by hand or reads model files: configs are `ModelConfig` protobufs, written with
`text_format`; assembly (build_tools.repository) only writes what `flavor_folders` returns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build_tools.errors import RepositoryError
from build_tools.interfaces import (
    Interfaces,
    ModelIO,
    router_original_size_input,
    step_model_name,
    torchscript_model_name,
    trt_model_name,
    warmup_filename,
)
from build_tools.runner_params import (
    MONITOR_PARAM_DATABASE,
    MONITOR_PARAM_ENABLED,
    MONITOR_PARAM_FLUSH_MS,
    MONITOR_PARAM_INPUT,
    MONITOR_PARAM_KEEP_INPUTS,
    MONITOR_PARAM_MAX_DAYS,
    MONITOR_PARAM_MAX_ROWS,
    MONITOR_PARAM_MODEL,
    MONITOR_PARAM_OUTPUT,
    MONITOR_PARAM_QUEUE,
    MONITOR_PARAM_SAMPLE,
    MONITOR_PARAM_SCALE,
    ROUTER_PARAM_BYPASS,
    ROUTER_PARAM_ORIGINAL_SIZE,
    ROUTER_PARAM_PIN,
    ROUTER_PARAM_TARGET,
    ROUTER_PARAM_WEIGHTS,
    RUNNER_PARAM_INTER,
    RUNNER_PARAM_INTRA,
    RUNNER_PARAM_ONNX_FILE,
    RUNNER_PARAM_OPT_LEVEL,
    RUNNER_PARAM_RANGE_PREFIX,
    RUNNER_PARAM_TORCH_THREADS,
    RUNNER_PARAM_TORCHSCRIPT_FILE,
)
from build_tools.spec import DeploySpec, EnsembleSpec, FlavorName, InstanceGroupSpec, ModelSpec

logger = logging.getLogger(__name__)

ONNX_FILENAME = "model.onnx"
PLAN_FILENAME = "model.plan"
TORCHSCRIPT_FILENAME = "model.pt"
RUNNER_SOURCE = Path(__file__).parent / "python_models" / "onnx_runner" / "model.py"
ROUTER_SOURCE = Path(__file__).parent / "python_models" / "router" / "model.py"
TORCH_RUNNER_SOURCE = Path(__file__).parent / "python_models" / "torch_runner" / "model.py"

# The watching code (control.monitor.serving and what it imports: numpy and the standard library only)
# copied into an ngc model's version folder, because the official image has no copy of this project's
# package. The router and the preprocessing glue put this folder first on sys.path when it is there.
MONITORING_VENDOR_DIR = "tdk_monitoring"
MONITORING_VENDOR_MODULES: tuple[str, ...] = (
    "build_tools/__init__.py",
    "build_tools/errors.py",
    "build_tools/runner_params.py",
    "control/__init__.py",
    "control/db.py",
    "control/monitor/__init__.py",
    "control/monitor/contract.py",
    "control/monitor/stats.py",
    "control/monitor/serving.py",
    "control/monitor/log_writer.py",
    "control/monitor/sink.py",
)
_PACKAGES_ROOT = Path(__file__).resolve().parent.parent  # where build_tools/ and control/ are installed


@dataclass
class ModelFolder:
    """One model folder: its config and every file under it (relative path -> source file or bytes)."""

    name: str
    config: mc.ModelConfig
    files: dict[str, Path | bytes] = field(default_factory=dict)


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
    if (db.max_queue_size is not None or db.default_timeout_microseconds is not None
            or db.allow_timeout_override):
        # Load shedding: a full queue or an expired timeout is refused at once (REJECT), never delayed.
        policy = cfg.dynamic_batching.default_queue_policy
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        if db.max_queue_size is not None:
            policy.max_queue_size = db.max_queue_size
        if db.default_timeout_microseconds is not None:
            policy.default_timeout_microseconds = db.default_timeout_microseconds
        if db.allow_timeout_override:
            policy.allow_timeout_override = True


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
    if isinstance(model.inputs, dict):
        for input_name, override in sorted(model.inputs.items()):
            if override.range is not None:
                low, high = override.range
                cfg.parameters[RUNNER_PARAM_RANGE_PREFIX + input_name].string_value = f"{low!r},{high!r}"
    return cfg


def python_config(name: str, model: ModelSpec, io: ModelIO, flavor: FlavorName) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, backend="python")
    _common(cfg, model, io, flavor)
    return cfg


def router_weights_json(weights: dict[int, float]) -> str:
    """The router's `weights` parameter: {"version": percent}, versions ascending, shares summing to 100."""
    return json.dumps({str(v): round(float(p), 6) for v, p in sorted(weights.items()) if p > 0}, separators=(",", ":"))


def router_config(
    name: str, target: str, model: ModelSpec, io: ModelIO, weights: dict[int, float], bypass: bool = False,
    original_size_input: str | None = None,
) -> mc.ModelConfig:
    """The BLS router in front of `target`'s versions: same inputs and outputs, weights as a parameter.

    The same on both flavors (the official image has the python backend too); it batches like its
    target, taking whatever is queued, so versions get one BLS request per batch. `original_size_input`:
    the router's own optional input (monitoring.models.<target>.original_size_input), never forwarded.
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
    cfg.parameters[ROUTER_PARAM_BYPASS].string_value = "true" if bypass else "false"
    if original_size_input is not None:
        cfg.parameters[ROUTER_PARAM_ORIGINAL_SIZE].string_value = original_size_input
    return cfg


def build_weights(model: ModelSpec) -> dict[int, float]:
    """A fresh build sends everything to the newest version; the lifecycle commands change it at runtime."""
    return {max(model.version_sources): 100.0}


def direct_version(weights: dict[int, float], bypass: bool) -> int | None:
    """The version ensembles call directly instead of the router: the only one with traffic, when the
    router may be bypassed; None while traffic is split (the router must be in the path)."""
    shares = [v for v, p in weights.items() if p > 0]
    return shares[0] if bypass and len(shares) == 1 else None


def router_bypass(spec: DeploySpec, target: str) -> bool:
    """Whether ensembles may call `target` straight while one version takes all its traffic: the spec
    allows it (`lifecycle.bypass_router`) and nothing the router does is lost that way, i.e. the
    target's predictions are not watched (the router is where they are watched, in both flavors; having
    the target's runner instances watch instead was measured to cost far more: docs/lifecycle.md)."""
    lifecycle = spec.models[target].lifecycle
    if lifecycle is None or not lifecycle.bypass_router:
        return False
    return not watched(spec, target)


def _monitoring_flush(cfg: mc.ModelConfig, spec: DeploySpec) -> None:
    cfg.parameters[MONITOR_PARAM_ENABLED].string_value = "true"
    cfg.parameters[MONITOR_PARAM_FLUSH_MS].string_value = str(spec.monitoring.flush_ms)


def monitoring_parameters(cfg: mc.ModelConfig, spec: DeploySpec, name: str, io: ModelIO) -> None:
    """The `monitoring.*` parameters of the model that watches `name`'s predictions (its router, or its
    embedded runner when it has none): what to watch, where the prediction log goes, how much of it."""
    mon = spec.monitoring
    watched = mon.models[name]
    model = spec.models[name]
    _monitoring_flush(cfg, spec)
    p = cfg.parameters
    p[MONITOR_PARAM_MODEL].string_value = name
    input_name = watched.input or io.inputs[0].name
    p[MONITOR_PARAM_INPUT].string_value = input_name
    labelled = [t.name for t in io.outputs if t.labels is not None]
    p[MONITOR_PARAM_OUTPUT].string_value = watched.output or (labelled or [io.outputs[0].name])[0]
    override = model.inputs.get(input_name) if isinstance(model.inputs, dict) else None
    # Full ink: the top of the input's declared range (raw 0-255 pixels when none is declared).
    scale = override.range[1] if override is not None and override.range is not None else 255.0
    p[MONITOR_PARAM_SCALE].string_value = repr(float(scale))
    p[MONITOR_PARAM_DATABASE].string_value = mon.database
    p[MONITOR_PARAM_SAMPLE].string_value = repr(mon.sample_rate)
    p[MONITOR_PARAM_KEEP_INPUTS].string_value = repr(mon.keep_inputs_rate)
    p[MONITOR_PARAM_MAX_ROWS].string_value = str(mon.retention.max_rows)
    p[MONITOR_PARAM_MAX_DAYS].string_value = repr(mon.retention.max_days)
    p[MONITOR_PARAM_QUEUE].string_value = str(mon.queue_size)


def watched(spec: DeploySpec, name: str) -> bool:
    """Whether the spec watches `name`'s predictions (its router does so in both flavors)."""
    return spec.monitoring.enabled and name in spec.monitoring.models


def monitored_here(spec: DeploySpec, name: str, flavor: FlavorName) -> bool:
    """Whether `name`'s own runner watches its predictions in this flavor: only the embedded flavor's
    Python-backend runners can (on ngc the model runs in a native backend; its router watches)."""
    return flavor == "embedded" and spec.monitoring.enabled and name in spec.monitoring.models


def monitoring_vendor_files(spec: DeploySpec, flavor: FlavorName, version: int) -> dict[str, Path | bytes]:
    """The watching code copied into a Python-backend model's version folder on ngc (nothing on
    embedded, where the project's package is installed beside the server, nor with monitoring off)."""
    if flavor != "ngc" or not spec.monitoring.enabled:
        return {}
    return {f"{version}/{MONITORING_VENDOR_DIR}/{m}": _PACKAGES_ROOT / m for m in MONITORING_VENDOR_MODULES}


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


def torchscript_instance_groups(model: ModelSpec, flavor: FlavorName) -> list[InstanceGroupSpec]:
    """The TorchScript variant's groups: its own when the spec sets them, else the model's."""
    return model.torchscript.instance_groups.get(flavor) or default_instance_groups(model, flavor)


def _torchscript_common(cfg: mc.ModelConfig, model: ModelSpec, io: ModelIO, flavor: FlavorName) -> None:
    _common(cfg, model, io, flavor)
    del cfg.instance_group[:]
    _instance_groups(cfg, torchscript_instance_groups(model, flavor))


def torchscript_config_ngc(name: str, model: ModelSpec, io: ModelIO) -> mc.ModelConfig:
    """The TorchScript variant on the official image's PyTorch backend.

    The backend maps config inputs to forward() by argument name and, for names without `__<index>`,
    outputs by config order (its STRICT_CONFIG_ORDERING convention), so the ONNX names carry over.
    """
    cfg = mc.ModelConfig(name=name, platform="pytorch_libtorch", default_model_filename=TORCHSCRIPT_FILENAME)
    _torchscript_common(cfg, model, io, "ngc")
    # The PyTorch backend's own thread parameters (see its README).
    cfg.parameters["INTRA_OP_THREAD_COUNT"].string_value = str(model.runtime.intra_op_threads)
    cfg.parameters["INTER_OP_THREAD_COUNT"].string_value = str(model.runtime.inter_op_threads)
    return cfg


def torchscript_config_embedded(name: str, model: ModelSpec, io: ModelIO) -> mc.ModelConfig:
    """The TorchScript variant in the project's Python-backend torch runner (device from the instance)."""
    cfg = mc.ModelConfig(name=name, backend="python")
    _torchscript_common(cfg, model, io, "embedded")
    cfg.parameters[RUNNER_PARAM_TORCHSCRIPT_FILE].string_value = TORCHSCRIPT_FILENAME
    cfg.parameters[RUNNER_PARAM_TORCH_THREADS].string_value = str(model.runtime.intra_op_threads)
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


# ---------------------------------------------------------------------------------------------------
# Folders


def _python_sources(src: Path, version: int) -> dict[str, Path | bytes]:
    if not src.is_dir():
        return {f"{version}/model.py": src}
    return {
        f"{version}/{f.relative_to(src).as_posix()}": f
        for f in sorted(src.rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    }


def model_folders(spec: DeploySpec, name: str, io: ModelIO, flavor: FlavorName) -> list[ModelFolder]:
    """The folder(s) one model becomes in a flavor: itself, plus its TensorRT variant on ngc."""
    model = spec.models[name]
    files: dict[str, Path | bytes] = {}
    if model.kind == "python":
        config = python_config(name, model, io, flavor)
        if spec.monitoring.enabled:
            # Python steps (e.g. preprocessing) may export their own input metrics.
            _monitoring_flush(config, spec)
        for version, src in model.version_sources.items():
            files.update(_python_sources(spec.resolve(src), version))
            files.update(monitoring_vendor_files(spec, flavor, version))
    else:
        config = onnx_config_ngc(name, model, io) if flavor == "ngc" else onnx_config_embedded(name, model, io)
        for version, src in model.version_sources.items():
            files[f"{version}/{ONNX_FILENAME}"] = spec.resolve(src)
            if flavor == "embedded":
                files[f"{version}/model.py"] = RUNNER_SOURCE
        # Behind a router the router watches (it sees each client request); else the runner itself.
        if monitored_here(spec, name, flavor) and model.lifecycle is None:
            monitoring_parameters(config, spec, name, io)
    folders = [ModelFolder(name, config, {**files, **io.files})]
    if "torchscript" in model.formats:
        ts_name = torchscript_model_name(name, model)
        ts_files: dict[str, Path | bytes] = dict(io.files)
        for version, src in model.torchscript_sources.items():
            ts_files[f"{version}/{TORCHSCRIPT_FILENAME}"] = spec.resolve(src)
            if flavor == "embedded":
                ts_files[f"{version}/model.py"] = TORCH_RUNNER_SOURCE
        ts_config = (
            torchscript_config_ngc(ts_name, model, io)
            if flavor == "ngc"
            else torchscript_config_embedded(ts_name, model, io)
        )
        if monitored_here(spec, name, flavor):
            # Served directly (never behind the router): it watches its own predictions, as itself.
            monitoring_parameters(ts_config, spec, name, io)
            ts_config.parameters[MONITOR_PARAM_MODEL].string_value = ts_name
        folders.append(ModelFolder(ts_name, ts_config, ts_files))
    if flavor == "ngc" and "tensorrt_plan" in model.formats:
        # The plan itself is a later build step's output; the folder holds its config, labels and warmup.
        trt_name = trt_model_name(name, model)
        folders.append(ModelFolder(trt_name, tensorrt_config(trt_name, model, io), dict(io.files)))
    return folders


def route_step(config: mc.ModelConfig, spec: DeploySpec, ensemble: str, index: int, model: str, version: int) -> None:
    """Point step `index` of an ensemble's config at `model` (the step's router, or its target while the
    router is bypassed) and wire the router's own input (monitoring.models.<target>.original_size_input)
    to match: mapped while the router runs the step; dropped, with the producing step's output, while the
    target does (it has no such input). Used by the build and by control.rollout's switches."""
    steps = config.ensemble_scheduling.step
    step = steps[index]
    step.model_name, step.model_version = model, version
    ens = spec.ensembles[ensemble]
    planned = ens.steps[index]
    target = spec.routers().get(planned.model)
    side = router_original_size_input(spec, target) if target is not None else None
    if side is None or side not in planned.input_map:
        return
    tensor = planned.input_map[side]
    direct = model != planned.model
    if direct:
        if side in step.input_map:
            del step.input_map[side]
    else:
        step.input_map[side] = tensor
    others = [j for j, s in enumerate(ens.steps) if j != index and tensor in s.input_map.values()]
    for i, producer in enumerate(ens.steps):
        for out, mapped in producer.output_map.items():
            if mapped != tensor or i == index:
                continue
            if not direct:
                steps[i].output_map[out] = tensor
            elif not others and tensor not in ens.outputs and out in steps[i].output_map:
                del steps[i].output_map[out]  # Triton refuses an ensemble tensor nobody uses


def ensemble_folder(spec: DeploySpec, name: str, io: ModelIO, flavor: FlavorName) -> ModelFolder:
    ens = spec.ensembles[name]
    steps = [step_model_name(ens, flavor, s.model) for s in ens.steps]
    config = ensemble_config(name, ens, io, steps)
    routers = spec.routers()
    for index, step in enumerate(config.ensemble_scheduling.step):
        target = routers.get(step.model_name)
        version = None if target is None else direct_version(
            build_weights(spec.models[target]), router_bypass(spec, target))
        if target is not None and version is not None:
            # One version takes all the traffic: call it directly (control.rollout switches it back).
            route_step(config, spec, name, index, target, version)
    # Ensembles need an (empty) version folder to load.
    return ModelFolder(name, config, {"1/.keep": b"", **io.files})


def flavor_folders(spec: DeploySpec, flavor: FlavorName, ios: Interfaces) -> list[ModelFolder]:
    """Every model folder of one flavor, in memory, in spec order."""
    folders: list[ModelFolder] = []
    for name in spec.models:
        folders.extend(model_folders(spec, name, ios[name], flavor))
    for router, target in spec.routers().items():
        model = spec.models[target]
        config = router_config(router, target, model, ios[router], build_weights(model),
                               router_bypass(spec, target), router_original_size_input(spec, target))
        files = {"1/model.py": ROUTER_SOURCE, **ios[router].files}
        # The router is a Python-backend model in both flavors: it watches its target on ngc too.
        if watched(spec, target):
            monitoring_parameters(config, spec, target, ios[router])
            files.update(monitoring_vendor_files(spec, flavor, 1))
        folders.append(ModelFolder(router, config, files))
    for name in spec.ensembles:
        folders.append(ensemble_folder(spec, name, ios[name], flavor))
    return folders
