"""Repository linter: every finding names the model and the field, and nothing is written on findings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from build_tools.build import build_repositories
from build_tools.errors import LintError
from build_tools.lint import lint_spec
from build_tools.spec import parse_spec
from tests.support import onnx_models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    files = onnx_models.build_all(root)
    (root / "labels4.txt").write_text("a\nb\nc\nd\n")
    (root / "labels3.txt").write_text("a\nb\nc\n")
    (root / "pre.py").write_text("class TritonPythonModel:\n    pass\n")
    return {**files, "labels4": root / "labels4.txt", "labels3": root / "labels3.txt", "pre": root / "pre.py"}


def _good(models: dict[str, Path], out: Path) -> dict[str, Any]:
    return {
        "flavors": {"ngc": {"output": str(out / "ngc")}, "embedded": {"output": str(out / "embedded")}},
        "models": {
            "clf": {
                "source": str(models["classifier"]),
                "max_batch_size": 8,
                "inputs": {"pixels": {"format": "FORMAT_NCHW"}},
                "outputs": {"scores": {"labels": str(models["labels4"])}},
                "dynamic_batching": {"preferred_batch_size": [4, 8]},
            },
            "pre": {
                "kind": "python",
                "source": str(models["pre"]),
                "max_batch_size": 8,
                "inputs": [{"name": "raw", "data_type": "BYTES", "dims": [1]}],
                "outputs": [{"name": "pixels", "data_type": "FP32", "dims": [1, 8, 8]}],
            },
        },
        "ensembles": {
            "pipeline": {
                "max_batch_size": 8,
                "steps": [
                    {"model": "pre", "input_map": {"raw": "raw"}, "output_map": {"pixels": "px"}},
                    {"model": "clf", "input_map": {"pixels": "px"}, "output_map": {"scores": "scores"}},
                ],
                "outputs": {"scores": {}},
            }
        },
    }


def _findings(data: dict[str, Any]) -> list[str]:
    findings, _ = lint_spec(parse_spec(data))
    return findings


def test_lint_finds_nothing_when_spec_is_consistent(models: dict[str, Path], tmp_path: Path) -> None:
    assert _findings(_good(models, tmp_path)) == []


def _mutate(models: dict[str, Path], tmp_path: Path, path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_good(models, tmp_path))
    *parents, last = path.split("/")
    node: Any = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()

CASES = [
    # (path to change, new value, finding field, words)
    ("models/clf/dynamic_batching/preferred_batch_size", [4, 16], "models.clf.dynamic_batching.preferred_batch_size",
     ["16 is above max_batch_size 8"]),
    ("models/clf/dynamic_batching/preferred_batch_size", [8, 4], "models.clf.dynamic_batching.preferred_batch_size",
     ["ascending"]),
    ("models/clf/max_batch_size", 0, "models.clf.dynamic_batching", ["needs max_batch_size > 0"]),
    ("models/clf/instance_groups", {"embedded": [{"kind": "KIND_GPU"}]}, "models.clf.instance_groups.embedded[0].kind",
     ["KIND_GPU cannot load in the embedded flavor", "allowed: KIND_CPU"]),
    ("models/clf/inputs", {"image": {"format": "FORMAT_NCHW"}}, "models.clf.inputs.image",
     ["no input named 'image'", "pixels"]),
    ("models/clf/outputs", {"scores": {"labels": "labels3"}}, "models.clf.outputs.scores.labels", ["not found"]),
    ("models/clf/source", "missing.onnx", "models.clf.source", ["not found"]),
    ("models/clf/warmup", [{"name": "w", "batch_size": 9}], "models.clf.warmup[0].batch_size",
     ["above max_batch_size"]),
    ("models/pre/warmup", [{"name": "w", "data": "zero"}], "models.pre.warmup[0].data", ["BYTES", "data: file"]),
    ("ensembles/pipeline/steps/1/input_map", {}, "ensembles.pipeline.steps[1].input_map",
     ["input 'pixels' of 'clf' is not mapped"]),
    ("ensembles/pipeline/steps/1/model", "nope", "ensembles.pipeline.steps[1].model", ["'nope' is not a model"]),
    ("ensembles/pipeline/steps/0/output_map", {"pixel": "px"}, "ensembles.pipeline.steps[0].output_map.pixel",
     ["has no output 'pixel'"]),
    ("ensembles/pipeline/outputs", {"probs": {}}, "ensembles.pipeline.outputs.probs",
     ["no step's output_map produces"]),
    ("ensembles/pipeline/max_batch_size", 16, "ensembles.pipeline.steps[0].model",
     ["below the ensemble's max_batch_size"]),
    ("models/pre/outputs", [{"name": "pixels", "data_type": "FP16", "dims": [1, 8, 8]}],
     "ensembles.pipeline.steps[1].input_map.pixels", ["data type FP32 does not match FP16"]),
    ("models/pre/outputs", [{"name": "pixels", "data_type": "FP32", "dims": [1, 8, 9]}],
     "ensembles.pipeline.steps[1].input_map.pixels", ["dims [1, 8, 8] do not match [1, 8, 9]"]),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), CASES, ids=[f"{c[0]}={c[1]}" for c in CASES])
def test_lint_names_model_and_field_when_spec_inconsistent(
    models: dict[str, Path], tmp_path: Path, path: str, value: Any, field: str, words: list[str]
) -> None:
    if value == "labels3":
        value = str(models["labels3"])
        words = ["has 3 labels but the output has 4 classes"]
    if value == "missing.onnx":
        value = str(tmp_path / "missing.onnx")
    findings = _findings(_mutate(models, tmp_path, path, value))
    matching = [f for f in findings if f.startswith(field)]
    assert matching, f"no finding for {field}; got {findings}"
    for word in words:
        assert any(word in f for f in matching), f"{word!r} not in {matching}"


def test_lint_rejects_fixed_batch_with_export_hint_when_batching_requested(models: dict[str, Path]) -> None:
    findings = _findings({"models": {"fixed": {"source": str(models["fixed_batch"]), "max_batch_size": 4}}})
    assert len(findings) == 2  # input and output both fix the batch
    assert findings[0].startswith("models.fixed.inputs.x:")
    assert "fixes the batch dimension to 1" in findings[0]
    assert "dynamic_axes" in findings[0] and "max_batch_size: 0" in findings[0]


def test_lint_accepts_fixed_batch_when_served_without_batching(models: dict[str, Path]) -> None:
    assert _findings({"models": {"fixed": {"source": str(models["fixed_batch"]), "max_batch_size": 0}}}) == []


def test_lint_rejects_versions_when_interfaces_differ(models: dict[str, Path]) -> None:
    data = {"models": {"m": {"versions": {1: str(models["multi_input"]), 2: str(models["classifier"])},
                             "max_batch_size": 4}}}
    findings = _findings(data)
    assert any(f.startswith("models.m.versions.1: interface differs from version 2") for f in findings)


def test_build_writes_nothing_when_lint_fails(models: dict[str, Path], tmp_path: Path) -> None:
    data = _mutate(models, tmp_path, "models/clf/dynamic_batching/preferred_batch_size", [64])
    with pytest.raises(LintError) as err:
        build_repositories(parse_spec(data))
    assert "models.clf.dynamic_batching.preferred_batch_size" in str(err.value)
    assert not (tmp_path / "ngc").exists() and not (tmp_path / "embedded").exists()


def test_stall_warnings_name_field_when_embedded_model_sets_queue_policy_or_preferred_sizes(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from build_tools.batching import stall_warnings

    data = _good(models, tmp_path)
    data["models"]["clf"]["dynamic_batching"] = {"max_queue_size": 8, "preferred_batch_size": [4, 8]}
    warnings = stall_warnings(parse_spec(data, tmp_path))
    assert any(w.startswith("models.clf.dynamic_batching: max_queue_size: 8 turns Triton's payload prefetching off")
               and "docs/stall.md" in w for w in warnings), warnings
    assert any(w.startswith("models.clf.dynamic_batching.preferred_batch_size: [4, 8]") for w in warnings), warnings
    # Without the embedded flavor, or without the risky settings, nothing to warn about.
    data["models"]["clf"]["dynamic_batching"] = {"max_queue_delay_microseconds": 0}
    assert stall_warnings(parse_spec(data, tmp_path)) == []
    data["models"]["clf"]["dynamic_batching"] = {"default_timeout_microseconds": 1000}
    del data["flavors"]["embedded"]
    assert stall_warnings(parse_spec(data, tmp_path)) == []


def test_project_spec_has_no_stall_warning_when_linted_as_committed() -> None:
    from build_tools.batching import stall_warnings
    from build_tools.spec import load_spec

    assert stall_warnings(load_spec(Path(__file__).resolve().parents[2] / "deploy.yaml")) == []


def test_prefetch_blockers_name_every_queue_policy_field_when_all_are_set() -> None:
    from build_tools.batching import prefetch_blockers
    from build_tools.spec import DynamicBatchingSpec

    db = DynamicBatchingSpec(max_queue_size=8, default_timeout_microseconds=500, allow_timeout_override=True)
    assert prefetch_blockers(db) == [
        "max_queue_size: 8", "default_timeout_microseconds: 500", "allow_timeout_override: true"
    ]
    assert prefetch_blockers(DynamicBatchingSpec(max_queue_delay_microseconds=100, preferred_batch_size=[4])) == []


def test_stall_warnings_cover_every_model_when_an_earlier_one_does_not_batch(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from build_tools.batching import stall_warnings

    data = _good(models, tmp_path)
    # `pre` (no dynamic batching) comes after `clf` in the spec; put a non-batching model first too.
    data["models"] = {"pre": data["models"].pop("pre"), **data["models"]}
    data["models"]["clf"]["dynamic_batching"] = {"max_queue_size": 8, "allow_timeout_override": True}
    assert stall_warnings(parse_spec(data, tmp_path)) == [
        "models.clf.dynamic_batching: max_queue_size: 8, allow_timeout_override: true turns Triton's payload "
        "prefetching off; on the embedded flavor the batcher can then miss a wake-up and hold requests for "
        "500 ms (see docs/stall.md); remove the queue policy unless this model must shed load"
    ]


def test_lint_names_the_gate_field_and_file_when_a_lifecycle_gate_is_broken() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((root / "deploy.yaml").read_text())
    gate = data["models"]["mnist_classifier"]["lifecycle"]["gate"]
    gate.update(data="no/such.npz", output="scores")
    findings, _ = lint_spec(parse_spec(data, root))
    where = "models.mnist_classifier.lifecycle.gate"
    assert f"{where}.data: file 'no/such.npz' not found (resolved to {root / 'no/such.npz'})" in findings
    assert f"{where}.output: 'scores' is not an output of mnist_classifier; outputs: ['probabilities']" in findings
    assert not any(f.startswith(f"{where}.labels") for f in findings)
    gate.update(data="models/mnist/holdout_digits.npz", output="probabilities")
    assert lint_spec(parse_spec(data, root))[0] == []


def test_lint_names_the_source_when_an_onnx_model_points_at_another_kind_of_file(
    models: dict[str, Path], tmp_path: Path
) -> None:
    data = _good(models, tmp_path)
    data["models"]["clf"]["source"] = str(models["pre"])  # an existing file, but Python, not ONNX
    findings, _ = lint_spec(parse_spec(data, tmp_path))
    assert f"models.clf.source: {str(models['pre'])!r} is not an .onnx file" in findings


def test_lint_names_the_models_own_source_when_its_torchscript_twin_is_missing() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((root / "deploy.yaml").read_text())
    name, model = next((n, m) for n, m in data["models"].items() if "torchscript" in m.get("formats", []))
    model.setdefault("torchscript", {})["source"] = "no/such.pt"
    findings, _ = lint_spec(parse_spec(data, root))
    (finding,) = [f for f in findings if f.startswith(f"models.{name}.torchscript.source:")]
    # The hint points at this model's ONNX source, not at one project's training script.
    assert f"export the TorchScript twin of {model['source']!r} with the script that trained that model" in finding
    assert "train.py" not in finding


# --- Exact findings, one branch of the linter at a time. Each test compares the whole list of findings
# (message text included) on a spec that sits at the edge of the rule: a check that fires one step too
# early or too late, names the wrong field or loses a word of its message fails here.


def _single(models: dict[str, Path], tmp_path: Path, flavors: tuple[str, ...] = ("ngc", "embedded"),
            **clf: Any) -> dict[str, Any]:
    """The classifier alone (no ensemble), with `clf` merged into its model spec."""
    model = {"source": str(models["classifier"]), "max_batch_size": 8, **clf}
    return {"flavors": {f: {"output": str(tmp_path / f)} for f in flavors}, "models": {"clf": model}}


def _python(models: dict[str, Path], tmp_path: Path, **pre: Any) -> dict[str, Any]:
    """A python model with a required and an optional BYTES input and a required FP32 input."""
    model = {
        "kind": "python",
        "source": str(models["pre"]),
        "max_batch_size": 4,
        "inputs": [
            {"name": "raw", "data_type": "BYTES", "dims": [1]},
            {"name": "hint", "data_type": "BYTES", "dims": [1], "optional": True},
            {"name": "scale", "data_type": "FP32", "dims": [1]},
        ],
        "outputs": [{"name": "pixels", "data_type": "FP32", "dims": [1, 8, 8]}],
        **pre,
    }
    return {"flavors": {"embedded": {"output": str(tmp_path / "embedded")}}, "models": {"pre": model}}


def test_lint_batching_is_quiet_when_sizes_equal_the_limits(models: dict[str, Path], tmp_path: Path) -> None:
    data = _single(models, tmp_path, dynamic_batching={"preferred_batch_size": [1, 8]},
                   warmup=[{"name": "a", "batch_size": 8}])
    assert _findings(data) == []
    data = _single(models, tmp_path, max_batch_size=1, dynamic_batching={"preferred_batch_size": [1]},
                   warmup=[{"name": "a", "batch_size": 1}])
    assert _findings(data) == []
    # A non-batching model warms up with one request of batch 1.
    assert _findings(_single(models, tmp_path, max_batch_size=0, warmup=[{"name": "a"}])) == []


def test_lint_batching_findings_are_exact_when_sizes_pass_the_limits(models: dict[str, Path], tmp_path: Path) -> None:
    data = _single(models, tmp_path, dynamic_batching={"preferred_batch_size": [2, 9, 12]},
                   warmup=[{"name": "a", "batch_size": 8}, {"name": "b", "batch_size": 9}])
    assert _findings(data) == [
        "models.clf.dynamic_batching.preferred_batch_size: 9 is above max_batch_size 8",
        "models.clf.dynamic_batching.preferred_batch_size: 12 is above max_batch_size 8",
        "models.clf.warmup[1].batch_size: 9 is above max_batch_size 8",
    ]


def test_lint_batching_findings_are_exact_when_model_does_not_batch(models: dict[str, Path], tmp_path: Path) -> None:
    data = _single(models, tmp_path, max_batch_size=0, dynamic_batching={"preferred_batch_size": [4, 4]},
                   warmup=[{"name": "a", "batch_size": 1}, {"name": "b", "batch_size": 2}])
    # Preferred sizes are not compared with a max_batch_size of 0 (the first finding says it all).
    assert _findings(data) == [
        "models.clf.dynamic_batching: needs max_batch_size > 0 (Triton rejects dynamic batching for a model "
        "that does not batch)",
        "models.clf.dynamic_batching.preferred_batch_size: [4, 4] must be distinct and ascending",
        "models.clf.warmup[1].batch_size: 2 is above max_batch_size 0 (a non-batching model warms up with "
        "batch_size 1)",
    ]


def test_lint_instances_checks_only_the_flavors_the_spec_builds(models: dict[str, Path], tmp_path: Path) -> None:
    groups = {"ngc": [{"kind": "KIND_GPU", "gpus": [0]}, {"kind": "KIND_AUTO", "gpus": [1]}, {"kind": "KIND_MODEL"}],
              "embedded": [{"kind": "KIND_CPU"}, {"kind": "KIND_GPU"}, {"kind": "KIND_CPU", "gpus": [0]}]}
    assert _findings(_single(models, tmp_path, ("ngc",), instance_groups=groups)) == [
        "models.clf.instance_groups.ngc[2].kind: KIND_MODEL cannot load in the ngc flavor for a onnx model; "
        "allowed: KIND_AUTO, KIND_CPU, KIND_GPU",
    ]
    assert _findings(_single(models, tmp_path, ("embedded",), instance_groups=groups)) == [
        "models.clf.instance_groups.embedded[1].kind: KIND_GPU cannot load in the embedded flavor for a onnx "
        "model; allowed: KIND_CPU",
        "models.clf.instance_groups.embedded[2].gpus: only valid with KIND_GPU",
    ]
    # Without instance groups: KIND_GPU on ngc, KIND_CPU on embedded, both loadable.
    assert _findings(_single(models, tmp_path)) == []


def test_lint_instances_use_the_python_kinds_when_model_is_python(models: dict[str, Path], tmp_path: Path) -> None:
    groups = {"embedded": [{"kind": "KIND_MODEL"}, {"kind": "KIND_GPU"}]}
    assert _findings(_python(models, tmp_path, instance_groups=groups)) == [
        "models.pre.instance_groups.embedded[1].kind: KIND_GPU cannot load in the embedded flavor for a python "
        "model; allowed: KIND_CPU, KIND_MODEL",
    ]


def test_lint_files_names_the_version_when_a_versioned_source_is_missing(models: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    missing = tmp_path / "v2.onnx"
    text = tmp_path / "v3.txt"
    text.write_text("not onnx")
    data = _single(models, tmp_path, versions={1: str(models["classifier"]), 2: str(missing), 3: str(text)})
    del data["models"]["clf"]["source"]
    findings = _findings(data)
    assert f"models.clf.versions.2: {str(missing)!r} not found (resolved to {missing})" in findings
    assert f"models.clf.versions.3: {str(text)!r} is not an .onnx file" in findings
    assert not any(f.startswith("models.clf.versions.1:") for f in findings)


def test_lint_files_checks_python_sources_when_file_or_folder(models: dict[str, Path], tmp_path: Path) -> None:
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    (good_dir / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    assert _findings(_python(models, tmp_path, source=str(good_dir))) == []
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "other.py").write_text("")
    assert _findings(_python(models, tmp_path, source=str(empty_dir))) == [
        f"models.pre.source: folder {str(empty_dir)!r} has no model.py"
    ]
    text = tmp_path / "model.txt"
    text.write_text("")
    assert _findings(_python(models, tmp_path, source=str(text))) == [
        f"models.pre.source: {str(text)!r} must be a model.py file or a folder holding one"
    ]


def test_lint_warmup_names_required_string_inputs_when_data_is_generated(models: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    data = _python(models, tmp_path, warmup=[{"name": "w", "data": "random"}, {"name": "z", "data": "zero"}])
    assert _findings(data) == [
        "models.pre.warmup[0].data: random data cannot fill BYTES input(s) ['raw']; use data: file with "
        "files: {input: path}",
        "models.pre.warmup[1].data: zero data cannot fill BYTES input(s) ['raw']; use data: file with "
        "files: {input: path}",
    ]
    # Generated data is fine when every string input is optional.
    data["models"]["pre"]["inputs"][0]["optional"] = True
    assert _findings(data) == []


def test_lint_warmup_files_are_exact_when_names_or_files_are_wrong(models: dict[str, Path], tmp_path: Path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"x")
    missing = str(tmp_path / "gone.bin")
    complete = {"raw": str(raw), "scale": str(raw)}
    data = _python(models, tmp_path, warmup=[
        {"name": "ok", "data": "file", "files": complete},
        {"name": "typo", "data": "file", "files": {**complete, "nope": str(raw)}},
        {"name": "gone", "data": "file", "files": {"raw": missing, "scale": str(raw)}},
        {"name": "short", "data": "file", "files": {"hint": str(raw)}},
    ])
    assert _findings(data) == [
        "models.pre.warmup[1].files.nope: the model has no input 'nope'; inputs: ['hint', 'raw', 'scale']",
        f"models.pre.warmup[2].files.raw: {missing!r} not found",
        "models.pre.warmup[3].files: no file for input(s) ['raw', 'scale']",
    ]


def test_lint_tensorrt_is_quiet_when_plan_settings_are_at_their_limits(models: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    calib = tmp_path / "calib.npy"
    calib.write_bytes(b"")
    trt = {"opt_batch_size": 8, "precision": "int8", "calibration_data": str(calib), "evaluation_data": str(calib)}
    assert _findings(_single(models, tmp_path, formats=["onnx", "tensorrt_plan"], tensorrt=trt)) == []
    assert _findings(_single(models, tmp_path, max_batch_size=0, formats=["onnx", "tensorrt_plan"],
                             tensorrt={"opt_batch_size": 1})) == []


def test_lint_tensorrt_findings_are_exact_when_plan_settings_are_wrong(models: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.npy")
    trt = {"opt_batch_size": 9, "precision": "int8", "evaluation_data": gone}
    assert _findings(_single(models, tmp_path, formats=["onnx", "tensorrt_plan"], tensorrt=trt)) == [
        "models.clf.tensorrt.opt_batch_size: 9 is above max_batch_size 8",
        f"models.clf.tensorrt.evaluation_data: {gone!r} not found",
        "models.clf.tensorrt.calibration_data: int8 precision needs calibration data",
    ]
    trt = {"opt_batch_size": 2, "precision": "int8", "calibration_data": gone}
    assert _findings(_single(models, tmp_path, max_batch_size=0, formats=["onnx", "tensorrt_plan"],
                             tensorrt=trt)) == [
        "models.clf.tensorrt.opt_batch_size: 2 is above max_batch_size 0",
        f"models.clf.tensorrt.calibration_data: {gone!r} not found",
    ]
    # Plan settings without tensorrt_plan in formats are not checked (nothing is built from them).
    assert _findings(_single(models, tmp_path, tensorrt=trt)) == []


def test_lint_tensorrt_names_the_clash_when_plan_name_is_taken(models: dict[str, Path], tmp_path: Path) -> None:
    for taken in ("pre", "pipeline"):
        data = _good(models, tmp_path)
        data["models"]["clf"].update(formats=["onnx", "tensorrt_plan"], tensorrt={"model_name": taken})
        assert _findings(data) == [f"models.clf.tensorrt.model_name: {taken!r} clashes with a model of the spec"]


def test_lint_torchscript_settings_are_named_when_format_is_not_built(models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    expected = ["models.clf.torchscript: set, but `formats` ['onnx'] lacks torchscript"]
    for ts in ({"source": "x.pt"}, {"model_name": "ts"}, {"instance_groups": {"ngc": [{"kind": "KIND_GPU"}]}}):
        assert _findings(_single(models, tmp_path, torchscript=ts)) == expected, ts
    assert _findings(_single(models, tmp_path, torchscript={})) == []
    python = _python(models, tmp_path, torchscript={"model_name": "ts"})
    assert _findings(python) == ["models.pre.torchscript: set, but `formats` ['onnx'] lacks torchscript"]


def test_lint_torchscript_findings_are_exact_when_variant_is_built(models: dict[str, Path], tmp_path: Path) -> None:
    pt = tmp_path / "clf.pt"
    pt.write_bytes(b"")
    groups = {"ngc": [{"kind": "KIND_MODEL"}], "embedded": [{"kind": "KIND_GPU"}, {"kind": "KIND_MODEL"}]}
    data = _single(models, tmp_path, formats=["onnx", "torchscript"],
                   torchscript={"source": str(pt), "instance_groups": groups})
    assert _findings(data) == [
        "models.clf.torchscript.instance_groups.embedded[1].kind: KIND_MODEL cannot load the TorchScript "
        "variant in the embedded flavor; allowed: KIND_CPU, KIND_GPU",
    ]
    # Only the flavors the spec builds are checked (each of them, whichever comes first).
    data = _single(models, tmp_path, ("ngc",), formats=["onnx", "torchscript"],
                   torchscript={"source": str(pt), "instance_groups": groups})
    assert _findings(data) == []
    data = _single(models, tmp_path, ("embedded",), formats=["onnx", "torchscript"],
                   torchscript={"source": str(pt), "instance_groups": groups})
    assert _findings(data) == [
        "models.clf.torchscript.instance_groups.embedded[1].kind: KIND_MODEL cannot load the TorchScript "
        "variant in the embedded flavor; allowed: KIND_CPU, KIND_GPU",
    ]
    gone = tmp_path / "gone.pt"
    data = _single(models, tmp_path, ("embedded",), formats=["onnx", "torchscript"], torchscript={"source": str(gone)})
    assert _findings(data) == [
        f"models.clf.torchscript.source: TorchScript file {str(gone)!r} not found (resolved to {gone}); "
        f"export the TorchScript twin of {str(models['classifier'])!r} with the script that trained that model, "
        "or drop torchscript from formats"
    ]


def test_lint_torchscript_names_the_version_when_a_versions_pt_file_is_missing(models: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    v1 = tmp_path / "v1.onnx"
    v2 = tmp_path / "v2.onnx"
    for v in (v1, v2):
        v.write_bytes(models["classifier"].read_bytes())
    v1.with_suffix(".pt").write_bytes(b"")
    data = _single(models, tmp_path, ("embedded",), formats=["onnx", "torchscript"],
                   versions={1: str(v1), 2: str(v2)})
    del data["models"]["clf"]["source"]
    pt2 = str(v2.with_suffix(".pt"))
    assert _findings(data) == [
        f"models.clf.versions.2 (as .pt): TorchScript file {pt2!r} not found (resolved to {pt2}); "
        f"export the TorchScript twin of {str(v2)!r} with the script that trained that model, "
        "or drop torchscript from formats"
    ]


def test_lint_torchscript_names_the_clash_when_variant_name_is_taken(models: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    pt = tmp_path / "clf.pt"
    pt.write_bytes(b"")
    for taken in ("pre", "pipeline", "clf_trt"):
        data = _good(models, tmp_path)
        data["models"]["clf"].update(formats=["onnx", "torchscript"],
                                     torchscript={"source": str(pt), "model_name": taken})
        assert _findings(data) == [f"models.clf.torchscript.model_name: {taken!r} clashes with another model"], taken
    data = _good(models, tmp_path)
    data["models"]["clf"].update(formats=["onnx", "torchscript"], torchscript={"source": str(pt)})
    assert _findings(data) == []


def test_lint_substitutions_name_unknown_replacements_when_variant_is_not_built(models: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    pt = tmp_path / "clf.pt"
    pt.write_bytes(b"")
    data = _good(models, tmp_path)
    data["models"]["clf"].update(formats=["onnx", "tensorrt_plan", "torchscript"], torchscript={"source": str(pt)})
    data["ensembles"]["pipeline"]["substitutions"] = {"ngc": {"clf": "clf_trt"}, "embedded": {"clf": "clf_torchscript"}}
    assert _findings(data) == []
    data["models"]["clf"]["formats"] = ["onnx"]
    data["models"]["clf"]["torchscript"] = {}
    assert _findings(data) == [
        "ensembles.pipeline.substitutions.ngc.clf: 'clf_trt' is not a model this spec builds; "
        "known: ['clf', 'pre']",
        "ensembles.pipeline.substitutions.embedded.clf: 'clf_torchscript' is not a model this spec builds; "
        "known: ['clf', 'pre']",
    ]


def test_lint_gate_findings_are_exact_when_files_or_output_are_wrong(models: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    npz = tmp_path / "gate.npz"
    npz.write_bytes(b"")
    gone = "no/labels.npy"
    data = _single(models, tmp_path, lifecycle={"gate": {"data": str(npz), "labels": str(npz)}})
    assert _findings(data) == []
    data["models"]["clf"]["lifecycle"]["gate"].update(labels=gone, output="scores")
    assert lint_spec(parse_spec(data, tmp_path))[0] == [
        f"models.clf.lifecycle.gate.labels: file {gone!r} not found (resolved to {tmp_path / gone})"
    ]
    # Two outputs: the gate must name the one with class scores; a router may be substituted for the model.
    data = {"flavors": {"embedded": {"output": str(tmp_path / "e")}},
            "models": {"m": {"source": str(models["multi_input"]), "max_batch_size": 4,
                             "lifecycle": {"gate": {"data": str(npz), "labels": str(npz)}}}},
            "ensembles": {"e": {"steps": [{"model": "m", "input_map": {"a": "a", "b": "b"},
                                           "output_map": {"diff": "diff"}}],
                                "max_batch_size": 4, "outputs": {"diff": {}},
                                "substitutions": {"embedded": {"m": "m_router"}}}}}
    assert _findings(data) == [
        "models.m.lifecycle.gate.output: m has 2 outputs ['sum:0', 'diff']; name the one with class scores"
    ]
    data["models"]["m"]["lifecycle"]["gate"]["output"] = "diff"
    assert _findings(data) == []


def test_lint_names_the_clash_when_a_variants_default_name_is_another_models_name(models: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    pt = tmp_path / "clf.pt"
    pt.write_bytes(b"")
    for fmt, default in (("tensorrt_plan", "clf_trt"), ("torchscript", "clf_torchscript")):
        torchscript = {"source": str(pt)} if fmt == "torchscript" else {}
        data = _single(models, tmp_path, formats=["onnx", fmt], torchscript=torchscript)
        data["models"][default] = {"source": str(models["classifier"]), "max_batch_size": 8}
        expected = (f"models.clf.tensorrt.model_name: {default!r} clashes with a model of the spec"
                    if fmt == "tensorrt_plan" else f"models.clf.torchscript.model_name: {default!r} clashes with "
                    "another model")
        assert _findings(data) == [expected]


def test_lint_logs_each_finding_at_debug_level_when_spec_has_findings(
    models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _single(models, tmp_path, max_batch_size=0, dynamic_batching={"preferred_batch_size": [4, 4]})
    with caplog.at_level("DEBUG", logger="build_tools.lint"):
        findings = _findings(data)
    logged = [r.getMessage() for r in caplog.records if r.name == "build_tools.lint"]
    assert logged == [f"lint: {f}" for f in findings] and len(findings) == 2
