"""deploy.yaml parsing: valid specs load; each class of mistake names the field, value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from build_tools.errors import SpecError
from build_tools.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def _model(**overrides: Any) -> dict[str, Any]:
    return {"models": {"m": {"source": "m.onnx", **overrides}}}


def test_spec_loads_when_project_deploy_yaml() -> None:
    spec = load_spec(ROOT / "deploy.yaml")
    assert {"mnist_classifier", "mnist_preprocess"} <= set(spec.models)
    assert "mnist" in spec.ensembles
    assert spec.base_dir == ROOT
    assert spec.models["mnist_classifier"].dynamic_batching is not None


BAD = [
    # (spec, field in the message, words that must appear)
    (_model(max_batchsize=8), "models.m.max_batchsize", ["unknown key", "max_batch_size"]),
    ({"modles": {}}, "modles", ["unknown key", "models"]),
    (_model(max_batch_size=-1), "models.m.max_batch_size", ["greater than or equal to 0", "-1"]),
    (_model(instance_groups={"embedded": [{"kind": "KIND_TPU"}]}), "models.m.instance_groups.embedded[0].kind",
     ["KIND_TPU", "KIND_CPU", "KIND_GPU"]),
    (_model(instance_groups={"edge": [{"kind": "KIND_CPU"}]}), "models.m.instance_groups.edge",
     ["'edge'", "ngc", "embedded"]),
    (_model(inputs={"x": {"format": "NCHW"}}), "models.m.inputs.x.format", ["NCHW", "FORMAT_NCHW"]),
    (_model(dynamic_batching={"preferred_batch_size": [0]}), "models.m.dynamic_batching.preferred_batch_size[0]",
     ["greater than 0"]),
    (_model(dynamic_batching={"max_queue_delay_microseconds": "soon"}),
     "models.m.dynamic_batching.max_queue_delay_microseconds", ["integer", "soon"]),
    (_model(version_policy={"latest": 1, "all": True}), "models.m.version_policy", ["exactly one", "latest"]),
    (_model(warmup=[{"name": "w", "data": "file"}]), "models.m.warmup[0]", ["files"]),
    (_model(warmup=[{"name": "w", "data": "ones"}]), "models.m.warmup[0].data", ["'zero'", "'random'", "'file'"]),
    (_model(formats=["onnx", "savedmodel"]), "models.m.formats[1]", ["savedmodel", "tensorrt_plan"]),
    ({"models": {"m": {}}}, "models.m", ["source", "versions"]),
    ({"models": {"m": {"kind": "python", "source": "m.py",
                       "inputs": [{"name": "x", "data_type": "FP33", "dims": [1]}], "outputs": []}}},
     "models.m.inputs[0].data_type", ["FP33", "FP32"]),
    ({"models": {"m": {"kind": "python", "source": "m.py", "inputs": [{"name": "x", "data_type": "FP32",
                                                                         "dims": [0]}], "outputs": []}}},
     "models.m.inputs[0].dims", ["positive or -1"]),
    ({"models": {"m": {"kind": "python", "source": "m.py", "inputs": {"x": {}}, "outputs": []}}},
     "models.m", ["python models declare"]),
    ({"models": {}, "ensembles": {}}, "<spec>", ["no models"]),
    ({"models": {"m": {"source": "a.onnx"}}, "ensembles": {"m": {"steps": [{"model": "m", "input_map": {},
                                                                             "output_map": {}}], "outputs": {}}}},
     "<spec>", ["both a model and an ensemble", "m"]),
    ({"ensembles": {"e": {"steps": [], "outputs": {}}}}, "ensembles.e.steps", ["at least 1"]),
    (["not", "a", "mapping"], "<spec>", ["mapping"]),
]


@pytest.mark.parametrize(("data", "field", "words"), BAD, ids=[b[1] + ":" + b[2][0] for b in BAD])
def test_spec_error_names_field_when_value_is_wrong(data: Any, field: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert err.value.field == field
    message = str(err.value)
    assert message.startswith(field)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_spec_error_names_file_when_yaml_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("models:\n  m: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_spec_error_names_file_when_missing(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_spec_paths_resolve_against_spec_folder_when_relative(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "deploy.yaml"
    path.write_text("models:\n  m: {source: m.onnx}\n")
    spec = load_spec(path)
    assert spec.resolve("m.onnx") == tmp_path / "sub" / "m.onnx"
    assert spec.models["m"].version_sources == {1: "m.onnx"}
