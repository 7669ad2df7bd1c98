"""The real embedded server loads every model the build tools wrote, with the config they wrote."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from build_tools.config import read_config
from build_tools.server import TritonServer
from triton_api import TritonClient

pytestmark = pytest.mark.server


def _model_dirs(*repos: Path) -> list[Path]:
    return sorted(p for repo in repos for p in repo.iterdir() if (p / "config.pbtxt").is_file())


def test_models_ready_when_server_started(
    embedded_server: TritonServer, project_repository: Path, test_repository: Path
) -> None:
    index = {m["name"]: m for m in embedded_server.model_index()}
    expected = {p.name for p in _model_dirs(project_repository, test_repository)}
    assert expected <= set(index), f"not served: {expected - set(index)}"
    not_ready = {n: index[n] for n in expected if index[n].get("state") != "READY"}
    assert not not_ready
    assert {"mnist", "mnist_classifier", "mnist_preprocess"} <= expected


def test_server_config_matches_generated_when_models_loaded(
    embedded_server: TritonServer, project_repository: Path, test_repository: Path
) -> None:
    with TritonClient(embedded_server.http_url) as client:
        for model_dir in _model_dirs(project_repository, test_repository):
            ours = read_config(model_dir / "config.pbtxt")
            served = client.model_config(model_dir.name)
            where = model_dir.name
            assert served.get("max_batch_size", 0) == ours.max_batch_size, where
            assert served.get("backend", "") == ours.backend or ours.platform == "ensemble", where
            for key, tensors in (("input", ours.input), ("output", ours.output)):
                got = {t["name"]: t for t in served[key]}
                for t in tensors:
                    assert t.name in got, (where, t.name)
                    assert [int(d) for d in got[t.name]["dims"]] == list(t.dims), (where, t.name)
                    assert got[t.name]["data_type"] == mc.DataType.Name(t.data_type), (where, t.name)
                    if key == "output" and t.label_filename:
                        assert got[t.name]["label_filename"] == t.label_filename, (where, t.name)
            if ours.platform == "ensemble":
                steps = [s["model_name"] for s in served["ensemble_scheduling"]["step"]]
                assert steps == [s.model_name for s in ours.ensemble_scheduling.step], where
                continue
            served_groups = [(g["kind"], g["count"]) for g in served["instance_group"]]
            ours_groups = [(_kind_name(g.kind), g.count) for g in ours.instance_group]
            assert served_groups == ours_groups, where
            if ours.HasField("dynamic_batching"):
                db = served["dynamic_batching"]
                if ours.dynamic_batching.preferred_batch_size:  # Triton fills in its own when unset
                    assert list(db["preferred_batch_size"]) == list(ours.dynamic_batching.preferred_batch_size)
                assert int(db.get("max_queue_delay_microseconds", 0)) == (
                    ours.dynamic_batching.max_queue_delay_microseconds
                )
            for key, value in ours.parameters.items():
                assert served["parameters"][key]["string_value"] == value.string_value, (where, key)
            assert len(served.get("model_warmup", [])) == len(ours.model_warmup), where


def _kind_name(value: int) -> str:
    return mc.ModelInstanceGroup.Kind.Name(value)


def test_instance_count_matches_spec_when_server_runs(
    embedded_server: TritonServer, test_models_spec, project_spec
) -> None:
    """Counts the instances the Python backend actually initialised, from the server's own log."""
    log = Path(embedded_server.log_path).read_text()
    for spec in (test_models_spec, project_spec):
        for name, model in spec.models.items():
            expected = sum(g.count for g in model.instance_groups["embedded"])
            started = set(re.findall(rf"ModelInstanceInitialize: ({re.escape(name)}_\d+_\d+) ", log))
            assert len(started) == expected, (name, sorted(started))


# -- the served config against deploy.yaml itself (not against the files our build tools wrote) -----
_YAML_TYPES = {"BYTES": "TYPE_STRING"}


def _graph_io(onnx_file: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Inputs and outputs of the ONNX graph, as onnxruntime reads them (dims without the batch dim)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def dims(shape: list[object]) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in shape[1:]]

    return ({i.name: dims(i.shape) for i in session.get_inputs()},
            {o.name: dims(o.shape) for o in session.get_outputs()})


def test_served_config_matches_deploy_yaml_when_project_models_loaded(
    embedded_server: TritonServer, project_root: Path
) -> None:
    import yaml

    spec = yaml.safe_load((project_root / "deploy.yaml").read_text())
    with TritonClient(embedded_server.http_url) as client:
        for name, model in spec["models"].items():
            served = client.model_config(name)
            assert served["max_batch_size"] == model["max_batch_size"], name
            db = model.get("dynamic_batching")
            if db is not None:
                got = served["dynamic_batching"]
                assert int(got.get("max_queue_delay_microseconds", 0)) == db["max_queue_delay_microseconds"], name
                if "max_queue_size" in db:
                    assert int(got["default_queue_policy"]["max_queue_size"]) == db["max_queue_size"], name
                if "preferred_batch_size" in db:
                    assert [int(b) for b in got["preferred_batch_size"]] == db["preferred_batch_size"], name
                assert got.get("preserve_ordering", False) == db.get("preserve_ordering", False), name
            else:
                assert "dynamic_batching" not in served, name
            groups = [(g["kind"], int(g["count"])) for g in served["instance_group"]]
            assert groups == [(g["kind"], g["count"]) for g in model["instance_groups"]["embedded"]], name
            params = {k: v["string_value"] for k, v in served.get("parameters", {}).items()}
            for key, value in model.get("parameters", {}).items():
                assert params[key] == str(value), (name, key)
            if "runtime" in model:
                assert params["intra_op_threads"] == str(model["runtime"]["intra_op_threads"]), name
                assert params["inter_op_threads"] == str(model["runtime"]["inter_op_threads"]), name
            warmups = [(w["name"], int(w["batch_size"])) for w in served.get("model_warmup", [])]
            assert warmups == [(w["name"], w["batch_size"]) for w in model.get("warmup", [])], name
            if "version_policy" in model:
                assert int(served["version_policy"]["latest"]["num_versions"]) == model["version_policy"]["latest"]
            inputs = {t["name"]: t for t in served["input"]}
            outputs = {t["name"]: t for t in served["output"]}
            if model.get("kind") == "python":
                for key, tensors in (("input", inputs), ("output", outputs)):
                    for t in model[f"{key}s"]:
                        got = tensors[t["name"]]
                        assert got["data_type"] == _YAML_TYPES.get(t["data_type"], f"TYPE_{t['data_type']}"), name
                        assert [int(d) for d in got["dims"]] == t["dims"], (name, t["name"])
                        if "format" in t and key == "input":
                            assert got["format"] == t["format"], (name, t["name"])
                assert set(inputs) == {t["name"] for t in model["inputs"]}, name
                assert set(outputs) == {t["name"] for t in model["outputs"]}, name
            else:
                graph_inputs, graph_outputs = _graph_io(project_root / model["source"])
                assert {n: [int(d) for d in t["dims"]] for n, t in inputs.items()} == graph_inputs, name
                assert {n: [int(d) for d in t["dims"]] for n, t in outputs.items()} == graph_outputs, name
                for tname, override in model.get("inputs", {}).items():
                    if "format" in override:
                        assert inputs[tname]["format"] == override["format"], (name, tname)
                for tname, override in model.get("outputs", {}).items():
                    if "labels" in override:
                        assert outputs[tname]["label_filename"] == Path(override["labels"]).name, (name, tname)
        for name, ensemble in spec.get("ensembles", {}).items():
            served = client.model_config(name)
            assert served["platform"] == "ensemble", name
            assert served["max_batch_size"] == ensemble["max_batch_size"], name
            steps = served["ensemble_scheduling"]["step"]
            assert [s["model_name"] for s in steps] == [s["model"] for s in ensemble["steps"]], name
            for got, want in zip(steps, ensemble["steps"], strict=True):
                assert got["input_map"] == want["input_map"], (name, want["model"])
                assert got["output_map"] == want["output_map"], (name, want["model"])
            labelled = {t["name"]: t.get("label_filename", "") for t in served["output"]}
            for tname, override in ensemble.get("outputs", {}).items():
                assert labelled[tname] == Path(override["labels"]).name, (name, tname)
