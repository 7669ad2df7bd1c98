"""The deployment spec (deploy.yaml): typed, validated as it is read.

Single-field rules (types, allowed values, unknown keys, ranges) live here; rules that need the model
file or several fields at once (dims against the ONNX graph, preferred sizes against max_batch_size,
ensemble wiring) live in `build_tools.lint`, which `build-repo` runs before it writes anything.
"""

from __future__ import annotations

import logging
import re
import typing
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from build_tools.errors import SpecError

logger = logging.getLogger(__name__)

FLAVORS: tuple[str, ...] = ("ngc", "embedded")
FlavorName = Literal["ngc", "embedded"]
InstanceKind = Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL"]
TensorFormat = Literal["FORMAT_NONE", "FORMAT_NCHW", "FORMAT_NHWC"]
ModelFormat = Literal["onnx", "tensorrt_plan", "torchscript"]
# Triton's data type names (model_config.proto DataType), without the TYPE_ prefix.
DataTypeName = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "STRING", "BF16",
]
Precision = Literal["fp32", "fp16", "int8"]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in deploy.yaml must never be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DynamicBatchingSpec(_Strict):
    preferred_batch_size: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    max_queue_delay_microseconds: Annotated[int, Field(ge=0)] = 0
    max_queue_size: Annotated[int, Field(ge=0)] | None = None
    default_timeout_microseconds: Annotated[int, Field(ge=0)] | None = None
    # Clients may set their own queue timeout per request (Triton's `timeout` request parameter).
    allow_timeout_override: bool = False
    preserve_ordering: bool = False


class InstanceGroupSpec(_Strict):
    kind: InstanceKind = "KIND_AUTO"
    count: Annotated[int, Field(ge=1, le=64)] = 1
    gpus: list[Annotated[int, Field(ge=0)]] | None = None


class VersionPolicySpec(_Strict):
    latest: Annotated[int, Field(ge=1)] | None = None
    all: bool | None = None
    specific: list[Annotated[int, Field(ge=1)]] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicySpec:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) not in (None, False)]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one of latest, all, specific (got {chosen or 'none'})")
        return self


class WarmupSpec(_Strict):
    name: Annotated[str, Field(min_length=1)]
    batch_size: Annotated[int, Field(ge=1)] = 1
    # zero/random fill every input; file takes one raw file per input (needed for BYTES inputs).
    data: Literal["zero", "random", "file"] = "zero"
    files: dict[str, str] = Field(default_factory=dict)
    count: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _files_iff_file(self) -> WarmupSpec:
        if self.data == "file" and not self.files:
            raise ValueError("data: file needs `files: {input_name: path}`")
        if self.data != "file" and self.files:
            raise ValueError(f"`files` is only allowed with data: file (got data: {self.data})")
        return self


class InputOverride(_Strict):
    """What the spec may add to an input read from the model file."""

    format: TensorFormat | None = None
    optional: bool | None = None
    # [low, high] every value must lie in (inclusive); the embedded runner refuses requests with values
    # outside it, and non-finite floats always, with INVALID_ARG naming the tensor and the bad count.
    range: tuple[float, float] | None = None

    @field_validator("range")
    @classmethod
    def _range_ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] <= value[1]:
            raise ValueError(f"expected [low, high] with low <= high, got {list(value)}")
        return value


class OutputOverride(_Strict):
    """What the spec may add to an output read from the model file."""

    labels: str | None = None  # path to a labels file, one label per line; becomes label_filename


class TensorSpec(_Strict):
    """A tensor declared in the spec (Python-backend models have no graph to read it from)."""

    name: Annotated[str, Field(min_length=1)]
    data_type: DataTypeName
    dims: list[int]
    format: TensorFormat | None = None
    labels: str | None = None
    optional: bool = False

    @field_validator("data_type", mode="before")
    @classmethod
    def _strip_prefix(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.removeprefix("TYPE_")
            return "STRING" if value == "BYTES" else value
        return value

    @field_validator("dims")
    @classmethod
    def _dims_valid(cls, dims: list[int]) -> list[int]:
        if any(d == 0 or d < -1 for d in dims):
            raise ValueError(f"dims must be positive or -1 (variable), got {dims}")
        return dims


class RuntimeSpec(_Strict):
    """ONNX Runtime session settings for the embedded flavor's Python-backend runner."""

    intra_op_threads: Annotated[int, Field(ge=0)] = 1
    inter_op_threads: Annotated[int, Field(ge=0)] = 1
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"


class OrtTensorRTSpec(_Strict):
    """ONNX Runtime's TensorRT execution provider on the ngc flavor."""

    enabled: bool = False
    precision_mode: Literal["FP32", "FP16"] = "FP16"
    max_workspace_size_bytes: Annotated[int, Field(gt=0)] = 1 << 30


class TorchScriptSpec(_Strict):
    """The torchscript variant of an ONNX model: the same interface, served from a TorchScript file.

    ngc: Triton's PyTorch backend (pytorch_libtorch). embedded: the project's Python-backend torch
    runner, which runs on the instance's device (KIND_GPU -> that CUDA device, KIND_CPU -> CPU).
    """

    source: str | None = None  # default: the model's source with the suffix .pt
    model_name: str | None = None  # default: <model>_torchscript
    # Per-flavor instance groups of the variant; default: the model's own.
    instance_groups: dict[FlavorName, list[InstanceGroupSpec]] = Field(default_factory=dict)


class TensorRTPlanSpec(_Strict):
    """How the tensorrt_plan variant of a model is built (ngc flavor only)."""

    model_name: str | None = None  # default: <model>_trt
    precision: Precision = "fp16"
    optional: bool = True  # the ngc repository stays complete without the plan
    calibration_data: str | None = None  # .npy with representative inputs (int8)
    evaluation_data: str | None = None  # .npy used by the accuracy gate; default: random inputs
    min_top1_agreement: Annotated[float, Field(ge=0.0, le=1.0)] = 0.999
    workspace_mib: Annotated[int, Field(gt=0)] = 1024
    opt_batch_size: Annotated[int, Field(ge=1)] | None = None
    # TensorRT needs a finite range for every dynamic axis other than the batch axis:
    # {input: {axis: [min, opt, max]}}, axis counted in the ONNX shape (0 is the batch axis).
    dynamic_dims: dict[str, dict[Annotated[int, Field(ge=0)], list[Annotated[int, Field(ge=1)]]]] = Field(
        default_factory=dict
    )
    # [low, high) of the seeded random inputs the accuracy gate uses when evaluation_data is not set
    # (default by data type: floats [0, 1), UINT8 [0, 256), other integers [0, 10)).
    random_input_range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> TensorRTPlanSpec:
        for tensor, axes in self.dynamic_dims.items():
            for axis, r in axes.items():
                if len(r) != 3 or not r[0] <= r[1] <= r[2]:
                    raise ValueError(
                        f"dynamic_dims.{tensor}.{axis}: expected [min, opt, max] with min <= opt <= max, got {r}"
                    )
        if self.random_input_range is not None and not self.random_input_range[0] < self.random_input_range[1]:
            raise ValueError(f"random_input_range: expected [low, high) with low < high, got {self.random_input_range}")
        return self


class GateSpec(_Strict):
    """The accuracy gate a new version passes before it is registered as staged (see control/gate.py)."""

    data: str  # .npz with one array per model input (named like the input)
    labels: str  # .npy with the true class of each sample
    output: str | None = None  # the output holding class scores (default: the only output)
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01  # against the champion
    min_agreement: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # top-1 agreement with the champion


class EvaluationSpec(_Strict):
    """The labelled set that evaluates this model: the parity gate (`triton-evaluate`, the demo) and the
    load tools' sample read it, so another model (or a renamed one) needs no code change."""

    data: str  # .npz with one array named like the model's input (or its only array): [N, ...] samples
    labels: str  # .npy with the true class of each sample
    description: str | None = None  # how reports name the set (default: the data file's name)


class AutoRollbackSpec(_Strict):
    """When the watcher sends a canary back to 0%: worse than the champion by a margin over a window."""

    window_s: Annotated[float, Field(gt=0)] = 30.0
    min_requests: Annotated[int, Field(ge=1)] = 50  # per side, inside the window
    max_error_ratio_increase: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    max_p99_ratio: Annotated[float, Field(ge=1.0)] = 1.5  # canary p99 / champion p99
    min_p99_increase_ms: Annotated[float, Field(ge=0.0)] = 5.0  # ignore p99 gaps below this


class FinetuneSpec(_Strict):
    """`triton-repo finetune`: a new version trained from labelled feedback plus a replay of the original
    training data, then gated against the champion and staged (control/finetune.py, docs/monitoring.md).

    The gate's defaults and why: a fine-tuned version exists to fix what the champion gets wrong on
    recent traffic, so it must be better there, on labelled requests it was not trained on (held back),
    by more than `min_feedback_gain` AND with McNemar's exact test on the paired answers at most
    `max_feedback_p_value` (a win of a few digits on a small held-back set is noise; 0.05 is the usual
    level, 1.0 turns the test off). It must not forget the original task: at most `max_holdout_drop`
    (1 point) below the champion on the model's held-out set (`lifecycle.gate.data`), the same
    allowance the lifecycle gate gives any new version.
    """

    # The model's own part (network from the champion's ONNX file, replay data, augmentation): a Python
    # file with the functions control/finetune.py names (the showcase keeps its adapter beside its model).
    adapter: str
    steps: Annotated[int, Field(ge=1, le=100_000)] = 300
    batch_size: Annotated[int, Field(ge=2, le=4096)] = 64
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    augment: bool = True  # the adapter's augmentation (if it has one) on every training batch
    # Share of each training batch drawn from the original training data: what keeps the old task.
    replay_share: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    # Share of the feedback held back from training; the gate compares candidate and champion on it.
    holdback: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    # The most recent labelled requests to use (older traffic may not look like today's).
    window: Annotated[int, Field(ge=1)] = 5000
    min_feedback: Annotated[int, Field(ge=2)] = 100
    min_feedback_gain: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    max_feedback_p_value: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    max_holdout_drop: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    # The exported ONNX file against PyTorch on the same inputs (probabilities).
    export_atol: Annotated[float, Field(gt=0.0)] = 1e-4
    # The staged version's first traffic share (0: leave it staged, no traffic).
    canary_percent: Annotated[float, Field(ge=0.0, lt=100.0)] = 10.0
    seed: int = 0


class LifecycleSpec(_Strict):
    """Versions of this model are staged, split and rolled back at runtime behind a generated router."""

    router: str | None = None  # the router model's name (default: <model>_router)
    pin_parameter: Annotated[str, Field(min_length=1)] = "version"
    router_instances: Annotated[int, Field(ge=1, le=16)] = 1
    # While one version takes all the traffic, ensembles call it directly instead of through the router
    # (one Python-backend hop less per request); a canary puts the router back in their path. The router
    # stays loaded either way (tensor path, version pins). Off: ensembles always go through the router.
    bypass_router: bool = True
    gate: GateSpec | None = None
    auto_rollback: AutoRollbackSpec = Field(default_factory=AutoRollbackSpec)
    finetune: FinetuneSpec | None = None

    @model_validator(mode="after")
    def _finetune_needs_gate(self) -> LifecycleSpec:
        if self.finetune is not None and self.gate is None:
            raise ValueError("finetune: needs `gate` (its held-out set is what a fine-tuned version must not forget)")
        return self


class ModelSpec(_Strict):
    """One served model: an ONNX file (onnx kind) or a Python-backend model.py (python kind)."""

    kind: Literal["onnx", "python"] = "onnx"
    source: str | None = None
    versions: dict[Annotated[int, Field(ge=1)], str] | None = None
    formats: list[ModelFormat] = Field(default_factory=lambda: ["onnx"])
    max_batch_size: Annotated[int, Field(ge=0)] = 0
    inputs: dict[str, InputOverride] | list[TensorSpec] = Field(default_factory=dict)
    outputs: dict[str, OutputOverride] | list[TensorSpec] = Field(default_factory=dict)
    dynamic_batching: DynamicBatchingSpec | None = None
    instance_groups: dict[FlavorName, list[InstanceGroupSpec]] = Field(default_factory=dict)
    warmup: list[WarmupSpec] = Field(default_factory=list)
    version_policy: VersionPolicySpec | None = None
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    response_cache: bool = False
    parameters: dict[str, str] = Field(default_factory=dict)
    ort_tensorrt: OrtTensorRTSpec = Field(default_factory=OrtTensorRTSpec)
    tensorrt: TensorRTPlanSpec = Field(default_factory=TensorRTPlanSpec)
    lifecycle: LifecycleSpec | None = None
    torchscript: TorchScriptSpec = Field(default_factory=TorchScriptSpec)
    evaluation: EvaluationSpec | None = None

    @model_validator(mode="after")
    def _source_or_versions(self) -> ModelSpec:
        if (self.source is None) == (self.versions is None):
            raise ValueError("set exactly one of `source` (version 1) or `versions: {N: path}`")
        if self.kind == "python":
            if not isinstance(self.inputs, list) or not isinstance(self.outputs, list):
                raise ValueError(
                    "python models declare `inputs` and `outputs` as lists of "
                    "{name, data_type, dims} (there is no graph to read them from)"
                )
            if self.formats != ["onnx"]:
                raise ValueError("`formats` applies to onnx models only")
        elif isinstance(self.inputs, list) or isinstance(self.outputs, list):
            raise ValueError(
                "onnx models read inputs/outputs from the graph; `inputs`/`outputs` are maps of "
                "overrides ({name: {format, optional}} / {name: {labels}})"
            )
        if self.lifecycle is not None and self.kind != "onnx":
            raise ValueError("`lifecycle` applies to onnx models only (their versions are files the router can split)")
        if not self.formats or len(set(self.formats)) != len(self.formats):
            raise ValueError(f"`formats` must list distinct formats, got {self.formats}")
        if self.torchscript.source is not None and self.versions is not None:
            raise ValueError(
                "torchscript.source: set it only with `source`; with `versions` each version's "
                "TorchScript file is its ONNX path with the suffix .pt"
            )
        return self

    @property
    def version_sources(self) -> dict[int, str]:
        return dict(self.versions) if self.versions is not None else {1: str(self.source)}

    def router_name(self, name: str) -> str | None:
        """The generated router model in front of model `name`, when the model has a lifecycle."""
        if self.lifecycle is None:
            return None
        return self.lifecycle.router or f"{name}_router"

    @property
    def torchscript_sources(self) -> dict[int, str]:
        """The TorchScript file of every version: torchscript.source for a single-version model, else
        each version's ONNX path with the suffix .pt."""
        if self.torchscript.source is not None and self.versions is None:
            return {1: self.torchscript.source}
        return {v: str(PurePosixPath(src).with_suffix(".pt")) for v, src in self.version_sources.items()}


class EnsembleStepSpec(_Strict):
    model: Annotated[str, Field(min_length=1)]
    model_version: int = -1
    # step model tensor name -> ensemble tensor name (Triton's input_map/output_map direction)
    input_map: dict[str, str]
    output_map: dict[str, str]


class EnsembleSpec(_Strict):
    max_batch_size: Annotated[int, Field(ge=0)] = 0
    steps: Annotated[list[EnsembleStepSpec], Field(min_length=1)]
    # Ensemble outputs; their types/dims come from the step that produces them.
    outputs: dict[str, OutputOverride]
    inputs: dict[str, InputOverride] = Field(default_factory=dict)
    # Which model each flavor uses for a step (e.g. the TensorRT variant on ngc).
    substitutions: dict[FlavorName, dict[str, str]] = Field(default_factory=dict)


class FlavorSpec(_Strict):
    output: str
    enabled: bool = True


class TritonSpec(_Strict):
    # The release the ngc repository targets; the embedded server is the same code (2.51.0 = 24.10).
    release: str = "24.10"
    server_version: str = "2.51.0"
    tensorrt_version: str = "10.5.0"


# Triton 2.51's restrictable API groups (--http-restricted-api / --grpc-restricted-api). Inference,
# health and metadata are what clients need; everything else is an operator's tool.
RestrictedApi = Literal["shared-memory", "model-config", "model-repository", "statistics", "trace", "logging"]
DEFAULT_RESTRICTED_APIS: tuple[RestrictedApi, ...] = (
    "shared-memory", "model-repository", "statistics", "trace", "logging",
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


class AdminApiSpec(_Strict):
    """Triton's operator APIs, answered only for requests carrying `<header>: <key>`.

    The key is never in the spec: the server harness reads it from $TRITON_ADMIN_KEY or draws a random
    one per start (then only the harness itself, e.g. the healer reloading a model, can use them).
    model-config is left open by default: it is read-only and Triton's standard clients (image_client,
    perf_analyzer, our clients) read it to shape their requests.
    """

    header: str = "triton-admin-key"
    restricted: list[RestrictedApi] = Field(default_factory=lambda: list(DEFAULT_RESTRICTED_APIS))

    @field_validator("header")
    @classmethod
    def _header_valid(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"header must be a plain header name (letters, digits, '-'), got {value!r}")
        return value.lower()


class HealerSpec(_Strict):
    """The stub watchdog (build_tools/healer.py): dead Python-backend stubs are detected and healed."""

    enabled: bool = True
    interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    # A model reloaded this many times within 10 minutes is left down (and shown unhealthy).
    max_heals_per_10min: Annotated[int, Field(ge=1)] = 10
    # A hung stub (alive, never answering) is found by a canary inference per model (its warmup sample)
    # every canary_interval_s (0 = no canaries); canary_misses in a row without an answer within
    # canary_timeout_s heal the model as a dead stub would.
    canary_interval_s: Annotated[float, Field(ge=0, le=3600)] = 5.0
    canary_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    canary_misses: Annotated[int, Field(ge=1, le=100)] = 2


class LogSpec(_Strict):
    """The server log rotates by size (Triton 2.51 has no rotation of its own)."""

    max_mib: Annotated[int, Field(ge=1)] = 64
    backups: Annotated[int, Field(ge=0, le=100)] = 3


class ProxySpec(_Strict):
    """The front proxy (nginx, build_tools/proxy.py) where Triton is exposed: Triton 2.51 has no flag
    that caps a request, so the proxy refuses bigger HTTP bodies and gRPC messages (the linter checks
    the spec's largest request fits), buffers and de-chunks HTTP bodies, and answers the restricted
    API groups with 403 (operators reach them on the server's own loopback address, with the key)."""

    max_request_mib: Annotated[int, Field(ge=1, le=2048)] = 16
    # How long the proxy waits for Triton's answer (a long queue, a big batch) before a 504.
    upstream_timeout_s: Annotated[int, Field(ge=1, le=3600)] = 300
    # Malformed inference JSON (or a request of the wrong KServe v2 shape) gets 400 from the proxy,
    # not Triton 2.51's 500 (needs nginx's njs module; without it the proxy runs and warns).
    check_json: bool = True


class ServerSpec(_Strict):
    """How the harness runs tritonserver (make serve, the compose stacks, the tests)."""

    admin_api: AdminApiSpec = Field(default_factory=AdminApiSpec)
    # Triton's own bound on waiting for in-flight requests at shutdown (--exit-timeout-secs).
    exit_timeout_s: Annotated[int, Field(ge=0, le=300)] = 30
    healer: HealerSpec = Field(default_factory=HealerSpec)
    log: LogSpec = Field(default_factory=LogSpec)
    proxy: ProxySpec = Field(default_factory=ProxySpec)


class MonitorRetentionSpec(_Strict):
    """How much of the prediction log is kept: the newest `max_rows` rows per model, none older than
    `max_days` (0 switches a limit off)."""

    max_rows: Annotated[int, Field(ge=0)] = 100_000
    max_days: Annotated[float, Field(ge=0)] = 7.0


class ReferenceDataSpec(_Strict):
    """Held-out data a monitored model's reference (reference.json, beside each version) is computed from."""

    data: str  # .npz (first array) or .npy: model-ready inputs
    labels: str | None = None  # .npy of true classes (for the reference accuracy)


class MonitoredModelSpec(_Strict):
    """One monitored classifier: which input the statistics are computed on, and its reference data."""

    input: str | None = None  # default: the model's first input
    output: str | None = None  # default: the first output with a labels file
    reference: ReferenceDataSpec | None = None
    # An optional FP32 [1] input the model's lifecycle router takes besides its target's inputs (never
    # forwarded to the target): sqrt(height * width) of each image as the client sent it, which only an
    # ensemble's preprocessing step knows. The router writes it into the prediction log's records
    # (`original_size`); a request without it (model-ready tensors) records the input's own size.
    original_size_input: Annotated[str, Field(min_length=1)] | None = None
    # The drift scenario (`make drift-demo`) sends data the reference never saw, then the same data with
    # this shift applied: a function named in the adapter's SHIFTS (lifecycle.finetune.adapter), which
    # also supplies the data and how a request is encoded.
    shift: Annotated[str, Field(min_length=1)] | None = None


class DriftSpec(_Strict):
    """The drift monitor's thresholds (`triton-monitor serve`, docs/monitoring.md "Drift and accuracy").

    Defaults and why:
    - window 500 / min_window 200: the input and prediction windows are the latest N sampled records of
      a version. A fixed N fixes the tests' power: a p-value over an ever-growing sample becomes tiny for
      any harmless difference (why a plain KS p-value alone alerts on everything at large samples; it is
      not used). Below min_window nothing is published (the chi-square needs >= 5 expected per class:
      200 x 10 % = 20).
    - psi_warn 0.1 / psi_alert 0.25: the usual PSI reading (< 0.1 stable, 0.1-0.25 moderate shift,
      > 0.25 significant shift); the alert uses psi_alert.
    - chi2_p_value 0.001 on the predicted-class counts against the reference's (a two-sample test: the
      reference is a few hundred held-out images), at the fixed window: about one false alarm in a
      thousand clean windows per version.
    - accuracy: Wilson interval at `confidence` over the latest `label_window` labelled requests of a
      version, published from min_labels on; an accuracy drop is the interval's upper bound below the
      reference accuracy minus max_accuracy_drop; a canary is worse when its upper bound is below the
      champion's lower bound (the intervals separate).
    - unknown_label_grace_s: a label whose request id has no prediction yet waits this long (the
      prediction log is written in batches, off the request path) before it counts as unknown.
    - late_label_s: a label arriving this long after its prediction is counted as late (still used).
    """

    window: Annotated[int, Field(ge=10)] = 500
    min_window: Annotated[int, Field(ge=10)] = 200
    psi_warn: Annotated[float, Field(gt=0)] = 0.1
    psi_alert: Annotated[float, Field(gt=0)] = 0.25
    chi2_p_value: Annotated[float, Field(gt=0, lt=1)] = 0.001
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    label_window: Annotated[int, Field(ge=10)] = 1000
    min_labels: Annotated[int, Field(ge=1)] = 100
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    unknown_label_grace_s: Annotated[float, Field(ge=0)] = 600.0
    late_label_s: Annotated[float, Field(ge=0)] = 3600.0
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0

    @model_validator(mode="after")
    def _ordered(self) -> DriftSpec:
        if self.min_window > self.window:
            raise ValueError(f"min_window ({self.min_window}) must not exceed window ({self.window})")
        if self.psi_warn > self.psi_alert:
            raise ValueError(f"psi_warn ({self.psi_warn}) must not exceed psi_alert ({self.psi_alert})")
        if self.min_labels > self.label_window:
            raise ValueError(f"min_labels ({self.min_labels}) must not exceed label_window ({self.label_window})")
        return self


class MonitoringSpec(_Strict):
    """Model monitoring inside Triton: metrics from the serving models and the sampled prediction log
    (docs/monitoring.md). `drift:` belongs to the drift monitor service (its thresholds)."""

    enabled: bool = False
    # A relative SQLite path resolves against the folder holding the model repository (the server's
    # runtime folder); $TDK_MONITORING_DATABASE_URL overrides it (tests, compose stacks: PostgreSQL).
    database: Annotated[str, Field(min_length=1)] = "sqlite:///monitoring/predictions.db"
    sample_rate: Annotated[float, Field(ge=0, le=1)] = 1.0  # share of requests written to the log
    keep_inputs_rate: Annotated[float, Field(ge=0, le=1)] = 0.1  # share of logged records keeping the input
    retention: MonitorRetentionSpec = Field(default_factory=MonitorRetentionSpec)
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000  # beyond it records are dropped (counted)
    flush_ms: Annotated[int, Field(ge=50, le=60_000)] = 500  # how often metrics and log are flushed
    models: dict[str, MonitoredModelSpec] = Field(default_factory=dict)
    drift: DriftSpec = Field(default_factory=DriftSpec)  # the drift monitor's thresholds (triton-monitor)

    @field_validator("database")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"database must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB, got {value!r}")
        return value


class DeploySpec(_Strict):
    triton: TritonSpec = Field(default_factory=TritonSpec)
    flavors: dict[FlavorName, FlavorSpec] = Field(
        default_factory=lambda: {
            "ngc": FlavorSpec(output="model_repository"),
            "embedded": FlavorSpec(output="build/embedded/model_repository"),
        }
    )
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    ensembles: dict[str, EnsembleSpec] = Field(default_factory=dict)
    server: ServerSpec = Field(default_factory=ServerSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    # Filled in by load_spec: relative paths in the spec resolve against the spec's folder.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _names(self) -> DeploySpec:
        clash = set(self.models) & set(self.ensembles)
        if clash:
            raise ValueError(f"names used by both a model and an ensemble: {sorted(clash)}")
        routers = {m.router_name(n): n for n, m in self.models.items() if m.lifecycle is not None}
        taken = set(self.models) | set(self.ensembles)
        for router, owner in routers.items():
            if router in taken:
                raise ValueError(
                    f"models.{owner}.lifecycle.router: {router!r} is already the name of a model or ensemble"
                )
        for name in [*self.models, *self.ensembles]:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"model name {name!r} must be a plain folder name")
        if not self.models and not self.ensembles:
            raise ValueError("the spec declares no models and no ensembles")
        for name in self.monitoring.models:
            if name not in self.models or self.models[name].kind != "onnx":
                onnx = sorted(n for n, m in self.models.items() if m.kind == "onnx")
                raise ValueError(f"monitoring.models.{name}: not an onnx model of this spec; onnx models: {onnx}")
        return self

    def routers(self) -> dict[str, str]:
        """Generated router name -> the model it routes to."""
        return {str(m.router_name(n)): n for n, m in self.models.items() if m.lifecycle is not None}

    def resolve(self, path: str | Path) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<spec>"


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    found: set[type[BaseModel]] = set()
    for arg in typing.get_args(annotation):
        found |= _models_in(arg)
    return found


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Field names allowed at the mapping that holds loc[-1] (for 'unknown key' messages)."""
    current: set[type[BaseModel]] = {DeploySpec}
    for part in loc[:-1]:
        owners = [c for c in current if isinstance(part, str) and part in c.model_fields]
        if owners:
            current = _models_in(owners[0].model_fields[part].annotation)
        # else: a list index or a free-form dict key (a model name): stay on the element type
    names = {n for c in current for n, f in c.model_fields.items() if not f.exclude}
    return sorted(names)


# pydantic reports union members and dict keys as extra path parts; users need neither.
_NOISE = re.compile(r"^(function-|list\[|dict\[|Annotated\[|str$|int$)")


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and _NOISE.match(p)))
    msg = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if loc and loc[-1] == "[key]":
        # The key itself is wrong (e.g. an unknown flavor name).
        loc = loc[:-1]
        return _location(loc), f"key {value!r} is not allowed: {msg}"
    field = _location(loc)
    if error["type"] == "extra_forbidden":
        return field, f"unknown key; allowed keys here: {', '.join(_allowed_keys(loc))}"
    if error["type"] != "missing" and not isinstance(value, dict):
        msg = f"{msg} (got {value!r})"
    return field, msg


# Errors that only say "the other member of a union did not match either" come last.
_UNION_MISMATCH = {"dict_type", "list_type", "model_type", "model_attributes_type"}


def parse_spec(data: Any, base_dir: Path | str = ".") -> DeploySpec:
    """Validate a mapping (already parsed YAML) into a DeploySpec."""
    if not isinstance(data, dict):
        raise SpecError("<spec>", f"expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = DeploySpec.model_validate(data)
    except ValidationError as e:
        errors = [err for err in e.errors() if err["type"] not in _UNION_MISMATCH] or e.errors()
        problems = [_describe(err) for err in errors]
        # Report the first problem with its field; mention how many more there are.
        field, msg = problems[0]
        extra = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SpecError(field, msg + extra) from e
    return spec.model_copy(update={"base_dir": Path(base_dir)})


def load_spec(path: str | Path) -> DeploySpec:
    """Read and validate deploy.yaml."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(str(path), f"cannot read the spec file: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(str(path), f"not valid YAML: {e}") from e
    spec = parse_spec(data, base_dir=path.resolve().parent)
    logger.debug("loaded spec %s: %d models, %d ensembles", path, len(spec.models), len(spec.ensembles))
    return spec
