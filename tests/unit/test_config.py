"""Config generation through Triton's schema: every written config.pbtxt parses back and says what the
spec and the graph say, for both flavors."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import yaml
from tritonclient.grpc import model_config_pb2 as mc

from build_tools.build import build_repositories
from build_tools.config import parse_pbtxt, read_config, to_pbtxt
from build_tools.errors import SpecError
from build_tools.lint import lint_spec
from build_tools.repository import MARKER, check_drift
from build_tools.spec import DeploySpec, load_spec, parse_spec
from tests.support.onnx_models import models_spec

ROOT = Path(__file__).resolve().parents[2]


# Built for each test (a third of a second): a mutation tool credits the config builders a shared build
# calls to the first test that used it, and would then judge a mutant by that test alone.
@pytest.fixture()
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeploySpec, Path, Path]:
    root = tmp_path_factory.mktemp("cfg")
    data = models_spec(root / "models", root / "embedded")
    data["flavors"]["ngc"] = {"output": str(root / "ngc")}
    data["models"]["t_multi_input"]["dynamic_batching"].update(
        max_queue_size=100, default_timeout_microseconds=5000, allow_timeout_override=True)
    data["models"]["t_classifier"]["response_cache"] = True
    spec = parse_spec(data, root)
    build_repositories(spec)
    return spec, root / "ngc", root / "embedded"


def _cfg(repo: Path, model: str) -> mc.ModelConfig:
    return read_config(repo / model / "config.pbtxt")


def test_every_written_config_parses_when_repositories_built(built: tuple[DeploySpec, Path, Path]) -> None:
    _, ngc, embedded = built
    configs = list(ngc.glob("*/config.pbtxt")) + list(embedded.glob("*/config.pbtxt"))
    assert len(configs) == 10
    for path in configs:
        cfg = read_config(path)
        assert cfg.name == path.parent.name


def test_dims_exclude_batch_when_model_batches(built: tuple[DeploySpec, Path, Path]) -> None:
    _, _, embedded = built
    cfg = _cfg(embedded, "t_multi_input")
    assert cfg.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("a", mc.TYPE_FP32, [4]), ("b", mc.TYPE_FP32, [4])]
    assert [o.name for o in cfg.output] == ["sum:0", "diff"]
    dyn = _cfg(embedded, "t_dynamic_dim")
    assert list(dyn.input[0].dims) == [-1]
    assert [list(o.dims) for o in dyn.output] == [[1], [-1]]
    ints = _cfg(embedded, "t_int64")
    assert ints.input[0].data_type == mc.TYPE_INT64 and ints.output[0].data_type == mc.TYPE_INT64


def test_full_shape_kept_when_model_does_not_batch(built: tuple[DeploySpec, Path, Path]) -> None:
    _, ngc, embedded = built
    for repo in (ngc, embedded):
        cfg = _cfg(repo, "t_fixed_batch")
        assert cfg.max_batch_size == 0
        assert list(cfg.input[0].dims) == [1, 3]
        assert not cfg.HasField("dynamic_batching")


def test_flavors_differ_only_in_runtime_when_built_from_one_spec(built: tuple[DeploySpec, Path, Path]) -> None:
    _, ngc, embedded = built
    n, e = _cfg(ngc, "t_classifier"), _cfg(embedded, "t_classifier")
    assert n.platform == "onnxruntime_onnx" and not n.backend
    assert e.backend == "python" and not e.platform
    assert [g.kind for g in n.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert [g.kind for g in e.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert e.parameters["onnx_file"].string_value == "model.onnx"
    assert list(n.input) == list(e.input) and list(n.output) == list(e.output)
    assert (ngc / "t_classifier" / "1" / "model.onnx").is_file()
    assert not (ngc / "t_classifier" / "1" / "model.py").exists()
    assert (embedded / "t_classifier" / "1" / "model.py").is_file()
    assert (embedded / "t_classifier" / "2" / "model.onnx").is_file()


def test_spec_overrides_applied_when_given(built: tuple[DeploySpec, Path, Path]) -> None:
    _, _, embedded = built
    cfg = _cfg(embedded, "t_classifier")
    assert cfg.input[0].format == mc.ModelInput.FORMAT_NCHW
    assert cfg.output[0].label_filename == "classes.txt"
    assert (embedded / "t_classifier" / "classes.txt").read_text().split() == ["cat", "dog", "bird", "fish"]
    assert cfg.version_policy.HasField("all")
    assert cfg.response_cache.enable
    db = _cfg(embedded, "t_multi_input").dynamic_batching
    assert list(db.preferred_batch_size) == [8, 16]
    assert db.max_queue_delay_microseconds == 20000
    assert db.default_queue_policy.max_queue_size == 100
    assert db.default_queue_policy.default_timeout_microseconds == 5000
    assert db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert db.default_queue_policy.allow_timeout_override
    warm = _cfg(embedded, "t_int64").model_warmup[0]
    assert warm.batch_size == 2 and warm.inputs["ids"].zero_data and list(warm.inputs["ids"].dims) == [3]


def test_bytes_warmup_serialized_when_file_given() -> None:
    """Triton reads BYTES warmup files as length-prefixed elements; a raw PNG would fail to load."""
    spec = load_spec(ROOT / "deploy.yaml")
    from build_tools.repository import lint_or_raise, plan_flavor

    plan = plan_flavor(spec, "embedded", lint_or_raise(spec))
    folder = next(f for f in plan.models if f.name == "mnist_preprocess")
    (rel, data), = ((k, v) for k, v in folder.files.items() if k.startswith("warmup/"))
    png = (ROOT / "models/mnist/examples/digit_7.png").read_bytes()
    assert isinstance(data, bytes)
    assert data == struct.pack("<I", len(png)) + png
    assert folder.config.model_warmup[0].inputs["image_bytes"].input_data_file == rel.removeprefix("warmup/")


def test_ensemble_wired_from_steps_when_built() -> None:
    spec = load_spec(ROOT / "deploy.yaml")
    from build_tools.repository import lint_or_raise, plan_flavor

    plan = plan_flavor(spec, "ngc", lint_or_raise(spec))
    ens = next(f.config for f in plan.models if f.name == "mnist")
    assert ens.platform == "ensemble"
    assert [(i.name, i.data_type, list(i.dims)) for i in ens.input] == [("image_bytes", mc.TYPE_STRING, [1])]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in ens.output] == [
        ("probabilities", mc.TYPE_FP32, [10], "labels.txt")]
    steps = ens.ensemble_scheduling.step
    # The classifier is watched, and its router is where that happens (ngc too): the router step stays.
    assert [(s.model_name, s.model_version) for s in steps] == [("mnist_preprocess", -1),
                                                                 ("mnist_classifier_router", -1)]
    # original_size: the router's own input (monitoring), from the preprocessing step.
    assert dict(steps[1].input_map) == {"image": "preprocessed_image", "size": "size"}
    assert dict(steps[0].output_map) == {"image": "preprocessed_image", "size": "size"}


def test_ensemble_runs_the_router_when_the_spec_turns_the_bypass_off() -> None:
    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    data["models"]["mnist_classifier"]["lifecycle"]["bypass_router"] = False
    spec = parse_spec(data, ROOT)
    from build_tools.repository import lint_or_raise, plan_flavor

    for flavor in ("ngc", "embedded"):
        folders = {f.name: f.config for f in plan_flavor(spec, flavor, lint_or_raise(spec)).models}
        steps = folders["mnist"].ensemble_scheduling.step
        assert [(s.model_name, s.model_version) for s in steps] == [("mnist_preprocess", -1),
                                                                     ("mnist_classifier_router", -1)]
        assert folders["mnist_classifier_router"].parameters["bypass_when_single_version"].string_value == "false"
        assert "monitoring.enabled" not in folders["mnist_classifier"].parameters


def test_ensemble_bypasses_the_router_only_where_its_predictions_are_not_watched_when_built() -> None:
    from build_tools.config import direct_version, router_bypass
    from build_tools.repository import lint_or_raise, plan_flavor

    spec = load_spec(ROOT / "deploy.yaml")
    unwatched = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"enabled": False})})
    # The router is where predictions are watched, in both flavors: with monitoring on it stays in the
    # ensemble's path; with monitoring off it may go.
    for s, flavor, bypass in ((spec, "ngc", False), (spec, "embedded", False), (unwatched, "ngc", True),
                              (unwatched, "embedded", True)):
        assert router_bypass(s, "mnist_classifier") is bypass
        folders = {f.name: f.config for f in plan_flavor(s, flavor, lint_or_raise(s)).models}
        step = folders["mnist"].ensemble_scheduling.step[1]
        want = ("mnist_classifier", 1) if bypass else ("mnist_classifier_router", -1)
        assert (step.model_name, step.model_version) == want, flavor
        # The router's own input goes with it: the classifier has none, so its tensor is not produced either.
        first = folders["mnist"].ensemble_scheduling.step[0]
        assert ("size" in step.input_map, "size" in first.output_map) == (not bypass,) * 2
        params = folders["mnist_classifier_router"].parameters
        assert params["bypass_when_single_version"].string_value == ("true" if bypass else "false")
        assert "monitoring.enabled" not in folders["mnist_classifier"].parameters
    # A split needs the router; one version at 100 % does not, unless the bypass is off.
    assert direct_version({1: 100.0}, True) == 1 and direct_version({3: 100.0, 1: 0.0}, True) == 3
    assert direct_version({1: 90.0, 3: 10.0}, True) is None and direct_version({1: 100.0}, False) is None


def test_drift_detected_when_committed_config_edited(tmp_path: Path) -> None:
    root = tmp_path
    data = models_spec(root / "models", root / "embedded")
    data["flavors"] = {"ngc": {"output": str(root / "ngc")}}
    spec = parse_spec(data, root)
    build_repositories(spec)
    assert check_drift(spec) == []
    cfg = root / "ngc" / "t_int64" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    (root / "ngc" / "stray").mkdir()
    (root / "ngc" / "stray" / "config.pbtxt").write_text("")
    assert sorted(check_drift(spec)) == [
        "differs: t_int64/config.pbtxt",
        "not generated by the spec: stray/config.pbtxt",
    ]


def test_build_refuses_to_replace_folder_when_not_written_by_build_repo(tmp_path: Path) -> None:
    data = models_spec(tmp_path / "models", tmp_path / "embedded")
    (tmp_path / "embedded").mkdir()
    (tmp_path / "embedded" / "precious.txt").write_text("keep me")
    from build_tools.errors import RepositoryError

    with pytest.raises(RepositoryError, match="refusing to replace it"):
        build_repositories(parse_spec(data, tmp_path))
    assert (tmp_path / "embedded" / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "embedded" / MARKER).exists()


def test_committed_ngc_repository_matches_spec_when_checked_out() -> None:
    """The same check CI runs: model_repository/ is exactly what deploy.yaml generates."""
    assert check_drift(load_spec(ROOT / "deploy.yaml")) == []


def test_build_steps_receive_the_resolved_interfaces_when_passed_explicitly(
    built: tuple[DeploySpec, Path, Path], tmp_path: Path
) -> None:
    """Steps are arguments, not registrations: they see the interfaces, and a failing one writes nothing."""
    from build_tools import repository
    from build_tools.repository import BuildContext

    spec, _, _ = built
    spec = spec.model_copy(update={"flavors": {"embedded": spec.flavors["embedded"].model_copy(
        update={"output": str(tmp_path / "out")})}})
    seen: list[BuildContext] = []

    def record(ctx: BuildContext) -> list[str]:
        seen.append(ctx)
        assert (ctx.staging / "t_classifier" / "config.pbtxt").is_file()  # configs are written first
        return [f"saw {len(ctx.interfaces)} interfaces"]

    plans = repository.build_repositories(spec, [record], ["embedded"])
    assert plans["embedded"].notes == [f"saw {len(spec.models) + len(spec.ensembles)} interfaces"]
    io = seen[0].interfaces["t_classifier"]
    assert sorted(io.graphs) == [1, 2]  # every version's graph, read once, for later steps
    assert [t.name for t in io.inputs] == [t.name for t in io.graphs[2].inputs]
    assert set(io.files) == {"classes.txt"}  # labels travel with the interface; config only adds sources

    def fail(ctx: BuildContext) -> list[str]:
        raise RuntimeError("step failed")

    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    with pytest.raises(RuntimeError, match="step failed"):
        repository.build_repositories(spec, [fail], ["embedded"])
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before


def test_router_config_mirrors_its_target_and_holds_weights_when_a_model_has_a_lifecycle() -> None:
    spec = load_spec(ROOT / "deploy.yaml")
    from build_tools.repository import lint_or_raise, plan_flavor

    for flavor in ("ngc", "embedded"):
        plan = plan_flavor(spec, flavor, lint_or_raise(spec))
        folders = {f.name: f for f in plan.models}
        router = folders["mnist_classifier_router"]
        target = folders["mnist_classifier"].config
        # Parsed back from text, as Triton would read it.
        cfg = parse_pbtxt(to_pbtxt(router.config))
        assert cfg.backend == "python" and cfg.max_batch_size == target.max_batch_size
        # The target's inputs, plus the router's own optional one (monitoring's original sizes).
        assert list(cfg.input)[:-1] == list(target.input) and list(cfg.output) == list(target.output)
        side = cfg.input[-1]
        assert (side.name, side.data_type, list(side.dims), side.optional) == ("size", mc.TYPE_FP32, [1], True)
        assert cfg.parameters["original_size_input"].string_value == "size"
        assert cfg.parameters["target_model"].string_value == "mnist_classifier"
        assert cfg.parameters["weights"].string_value == '{"1":100.0}'
        assert cfg.parameters["pin_parameter"].string_value == "version"
        # ngc watches nothing, so its ensemble may bypass the router; embedded watches through it.
        # Watched in both flavors (its router watches it), so never bypassed with the project's spec.
        assert cfg.parameters["bypass_when_single_version"].string_value == "false"
        assert router.files["1/model.py"].name == "model.py" and "labels.txt" in router.files


def test_spec_refuses_a_router_name_when_it_clashes_with_a_model() -> None:
    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    data["models"]["mnist_classifier"]["lifecycle"]["router"] = "mnist_preprocess"
    with pytest.raises(SpecError, match=r"lifecycle\.router: .mnist_preprocess. is already the name"):
        parse_spec(data, ROOT)


def test_spec_refuses_a_lifecycle_when_the_model_is_python() -> None:
    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    data["models"]["mnist_preprocess"]["lifecycle"] = {}
    with pytest.raises(SpecError, match="`lifecycle` applies to onnx models only"):
        parse_spec(data, ROOT)


@pytest.mark.parametrize("preserve", [True, False])
def test_dynamic_batching_carries_every_spec_setting_when_written(tmp_path: Path, preserve: bool) -> None:
    data = models_spec(tmp_path / "models", tmp_path / "embedded")
    data["flavors"]["ngc"] = {"output": str(tmp_path / "ngc")}
    data["models"] = {"t_int64": data["models"]["t_int64"]}
    data["models"]["t_int64"]["dynamic_batching"] = {
        "preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 250, "preserve_ordering": preserve,
        "max_queue_size": 7, "default_timeout_microseconds": 900,
    }
    build_repositories(parse_spec(data, tmp_path))
    for repo in (tmp_path / "ngc", tmp_path / "embedded"):
        db = _cfg(repo, "t_int64").dynamic_batching
        assert list(db.preferred_batch_size) == [2, 4]
        assert db.max_queue_delay_microseconds == 250
        assert db.preserve_ordering is preserve
        assert db.default_queue_policy.max_queue_size == 7
        assert db.default_queue_policy.default_timeout_microseconds == 900
        assert db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT


def test_read_config_names_the_file_when_it_is_not_a_model_config(tmp_path: Path) -> None:
    from build_tools.errors import RepositoryError

    bad = tmp_path / "m" / "config.pbtxt"
    bad.parent.mkdir()
    bad.write_text('name: "m"\nmax_batch_size: "eight"\n')
    with pytest.raises(RepositoryError, match=rf"^{bad}: not a valid ModelConfig: "):
        read_config(bad)


def test_ngc_configs_equal_the_committed_ones_when_planned_from_the_project_spec() -> None:
    """Every config the project's spec plans for the ngc flavor (ONNX, TensorRT plan, TorchScript, Python,
    ensemble, router), compared field by field with the committed repository's, in memory. Unlike the
    drift check, the copied model files are left out, so this also holds in a mutation tool's copy."""
    from build_tools.repository import lint_or_raise, plan_flavor

    spec = load_spec(ROOT / "deploy.yaml")
    plan = plan_flavor(spec, "ngc", lint_or_raise(spec))
    names = sorted(folder.name for folder in plan.models)
    assert names == sorted(p.parent.name for p in (ROOT / "model_repository").glob("*/config.pbtxt"))
    assert {"mnist_classifier_trt", "mnist_classifier_torchscript", "mnist_preprocess", "mnist"} <= set(names)
    for folder in plan.models:
        committed = read_config(ROOT / "model_repository" / folder.name / "config.pbtxt")
        assert to_pbtxt(folder.config) == to_pbtxt(committed), folder.name


def test_embedded_torchscript_config_runs_the_torch_runner_when_planned_from_the_project_spec() -> None:
    """The embedded flavor's TorchScript variant: the Python backend (the torch runner), the ngc
    variant's inputs and outputs, its own instance groups, and the runner's parameters from the spec."""
    from build_tools.repository import lint_or_raise, plan_flavor

    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    data["models"]["mnist_classifier"]["runtime"]["intra_op_threads"] = 3
    spec = parse_spec(data, ROOT)
    ios = lint_or_raise(spec)
    embedded = {f.name: f.config for f in plan_flavor(spec, "embedded", ios).models}
    ngc = {f.name: f.config for f in plan_flavor(spec, "ngc", ios).models}
    ts = embedded["mnist_classifier_torchscript"]
    assert (ts.name, ts.backend, ts.platform) == ("mnist_classifier_torchscript", "python", "")
    assert list(ts.input) == list(ngc["mnist_classifier_torchscript"].input)
    assert list(ts.output) == list(ngc["mnist_classifier_torchscript"].output)
    assert [(g.kind, g.count) for g in ts.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    params = {k: v.string_value for k, v in ts.parameters.items()}
    # The runner's own parameters; the twin of a monitored model also carries the monitoring ones
    # (docs/monitoring.md, "Which model watches").
    assert {k: v for k, v in params.items() if not k.startswith("monitoring.")} == {"torchscript_file": "model.pt",
                                                                                   "torch_threads": "3"}
    assert params.get("monitoring.enabled") == ("true" if spec.monitoring.enabled else None)
    assert ngc["mnist_classifier_torchscript"].parameters["INTRA_OP_THREAD_COUNT"].string_value == "3"


def test_tensorrt_config_keeps_group_counts_on_gpu_and_drops_onnx_threads_when_the_model_sets_them() -> None:
    """The plan variant (ngc) from a model that asks for CPU instances and passes the onnxruntime thread
    parameters through: the plan runs on the GPU with the same counts, without those parameters; the
    ensemble's folder still holds its empty version folder, and the ONNX model asking for ONNX Runtime's
    TensorRT accelerator gets it by name."""
    from build_tools.repository import lint_or_raise, plan_flavor

    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    clf = data["models"]["mnist_classifier"]
    clf["instance_groups"] = {**clf.get("instance_groups", {}), "ngc": [{"kind": "KIND_CPU", "count": 2}]}
    clf["parameters"] = {"intra_op_thread_count": "4", "inter_op_thread_count": "2", "note": "kept"}
    clf["ort_tensorrt"] = {"enabled": True}
    spec = parse_spec(data, ROOT)
    folders = {f.name: f for f in plan_flavor(spec, "ngc", lint_or_raise(spec)).models}
    trt = folders["mnist_classifier_trt"].config
    assert [(g.kind, g.count) for g in trt.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert {k: v.string_value for k, v in trt.parameters.items()} == {"note": "kept"}
    assert (trt.platform, trt.default_model_filename) == ("tensorrt_plan", "model.plan")
    onnx = folders["mnist_classifier"].config
    (acc,) = onnx.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and set(acc.parameters) == {"precision_mode", "max_workspace_size_bytes"}
    assert "labels.txt" in folders["mnist_classifier_trt"].files  # the plan's folder has the labels too
    assert folders["mnist"].files["1/.keep"] == b""


def test_router_config_batches_only_when_its_target_batches() -> None:
    from build_tools.config import router_config
    from build_tools.repository import lint_or_raise

    spec = load_spec(ROOT / "deploy.yaml")
    ios = lint_or_raise(spec)
    model = spec.models["mnist_classifier"]
    batching = router_config("r", "mnist_classifier", model, ios["mnist_classifier_router"], {1: 100.0})
    assert batching.HasField("dynamic_batching") and batching.dynamic_batching.max_queue_delay_microseconds == 0
    single = model.model_copy(update={"max_batch_size": 0})
    plain = router_config("r", "mnist_classifier", single, ios["mnist_classifier_router"], {1: 100.0})
    assert plain.max_batch_size == 0 and not plain.HasField("dynamic_batching")


def test_lint_names_the_field_when_original_size_input_clashes_with_a_target_input() -> None:
    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    data["monitoring"]["models"]["mnist_classifier"]["original_size_input"] = "image"
    findings, _ = lint_spec(parse_spec(data, ROOT))
    assert any(f.startswith("monitoring.models.mnist_classifier.original_size_input: 'image' is already an input")
               for f in findings), findings


def test_embedded_configs_take_the_embedded_groups_when_called_directly_for_onnx_and_torchscript() -> None:
    """onnx_config_embedded and torchscript_config_embedded called on their own (not through the
    module's shared build, which a mutation run only attributes to the first test that uses it): the
    Python backend, and the embedded flavor's instance groups, not the defaults nor the ngc ones."""
    from build_tools.config import onnx_config_embedded, onnx_config_ngc, torchscript_config_embedded
    from build_tools.repository import lint_or_raise

    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    clf = data["models"]["mnist_classifier"]
    clf["instance_groups"] = {"ngc": [{"kind": "KIND_GPU", "count": 4}], "embedded": [{"kind": "KIND_CPU", "count": 3}]}
    clf["torchscript"] = {}  # the TorchScript twin falls back to the model's own groups
    clf["ort_tensorrt"] = {"enabled": True, "max_workspace_size_bytes": 4096}
    spec = parse_spec(data, ROOT)
    ios = lint_or_raise(spec)
    model, io = spec.models["mnist_classifier"], ios["mnist_classifier"]
    cpu, gpu = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU
    for cfg in (onnx_config_embedded("m", model, io), torchscript_config_embedded("m", model, io)):
        assert (cfg.name, cfg.backend, cfg.platform) == ("m", "python", "")
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(cpu, 3)]
    ngc = onnx_config_ngc("m", model, io)
    assert [(g.kind, g.count) for g in ngc.instance_group] == [(gpu, 4)]
    (acc,) = ngc.optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(acc.parameters) == {"precision_mode": "FP16", "max_workspace_size_bytes": "4096"}


def test_embedded_monitoring_parameters_say_what_the_spec_says_when_the_watched_model_has_no_router() -> None:
    """Without a lifecycle the embedded runner watches its own predictions (and its TorchScript twin its
    own): every monitoring parameter carries the spec's value, and each variant runs its own runner."""
    from build_tools.config import RUNNER_SOURCE, TORCH_RUNNER_SOURCE
    from build_tools.repository import lint_or_raise, plan_flavor

    data = yaml.safe_load((ROOT / "deploy.yaml").read_text())
    clf = data["models"]["mnist_classifier"]
    del clf["lifecycle"]
    clf["inputs"]["image"]["range"] = [0, 1]
    clf["warmup"] = [{"name": "noise", "batch_size": 2, "data": "random"}]
    data["monitoring"].update(queue_size=1234, sample_rate=0.5, keep_inputs_rate=0.25)
    data["ensembles"]["mnist"].pop("substitutions", None)
    data["ensembles"]["mnist"]["steps"][1]["model"] = "mnist_classifier"
    # No router, so no router input for the images' original sizes (monitoring.models.*.original_size_input).
    del data["monitoring"]["models"]["mnist_classifier"]["original_size_input"]
    for step in data["ensembles"]["mnist"]["steps"]:
        step["input_map"].pop("size", None)
        step["output_map"].pop("size", None)
    spec = parse_spec(data, ROOT)
    folders = {f.name: f for f in plan_flavor(spec, "embedded", lint_or_raise(spec)).models}
    assert "mnist_classifier_router" not in folders
    expected = {
        "monitoring.enabled": "true", "monitoring.input": "image", "monitoring.output": "probabilities",
        "monitoring.input_scale": "1.0", "monitoring.queue_size": "1234", "monitoring.sample_rate": "0.5",
        "monitoring.keep_inputs_rate": "0.25", "monitoring.retention_max_rows": "200000",
        "monitoring.retention_max_days": repr(spec.monitoring.retention.max_days),
        "monitoring.database": spec.monitoring.database,
    }
    for name, runner in (("mnist_classifier", RUNNER_SOURCE), ("mnist_classifier_torchscript", TORCH_RUNNER_SOURCE)):
        folder = folders[name]
        params = {k: v.string_value for k, v in folder.config.parameters.items()}
        assert {k: params.get(k) for k in expected} == expected, name
        assert params["monitoring.model"] == name
        assert folder.files["1/model.py"] == runner, name
    (warm,) = folders["mnist_classifier"].config.model_warmup
    assert warm.batch_size == 2 and warm.inputs["image"].random_data and not warm.inputs["image"].zero_data
