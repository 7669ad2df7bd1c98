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
