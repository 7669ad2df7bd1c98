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
