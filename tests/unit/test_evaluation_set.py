"""The labelled set that evaluates a model comes from the spec (`models.<name>.evaluation`): linted early,
read by triton-evaluate, the demo and the load tools, and the project's set is the one used before."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from build_tools.errors import SpecError
from build_tools.lint import lint_spec
from build_tools.served import classifier_names, load_classifier_names
from build_tools.spec import parse_spec
from clients.datasets import DatasetError, mnist_holdout, spec_evaluation_set
from clients.evaluate import build_parser, load_dataset

ROOT = Path(__file__).resolve().parents[2]


def _project_data() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy.yaml").read_text())


def _classifier(data: dict[str, Any]) -> str:
    return classifier_names(parse_spec(copy.deepcopy(data), ROOT)).classifier


def test_spec_evaluation_set_is_the_set_evaluated_before_when_reading_the_project_spec() -> None:
    data, description = spec_evaluation_set(load_classifier_names(ROOT / "deploy.yaml"))
    before = mnist_holdout()  # what triton-evaluate and the load tools used when it was a literal
    assert np.array_equal(data.images, before.images) and np.array_equal(data.labels, before.labels)
    assert description == _project_data()["models"][_classifier(_project_data())]["evaluation"]["description"]


def test_load_dataset_reads_the_specs_set_when_a_renamed_model_points_at_other_files(tmp_path: Path) -> None:
    data = _project_data()
    name = _classifier(data)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8), np.arange(6, dtype=np.int64) % 3
    np.savez(tmp_path / "set.npz", image=images)
    np.save(tmp_path / "labels.npy", labels)
    text = yaml.safe_dump(data)
    for old, new in ((f"{name}_router", "digits_v2_router"), (name, "digits_v2")):
        text = re.sub(rf"\b{old}\b", new, text)
    renamed = yaml.safe_load(text)
    renamed["models"]["digits_v2"]["evaluation"] = {"data": str(tmp_path / "set.npz"),
                                                    "labels": str(tmp_path / "labels.npy")}
    names = classifier_names(parse_spec(renamed, ROOT))
    got, description = load_dataset(None, None, None, None, names)
    assert np.array_equal(got.images, images[:, 0]) and np.array_equal(got.labels, labels)
    assert description == f"labelled set {tmp_path / 'set.npz'}"


def test_load_dataset_names_the_field_when_the_spec_gives_the_classifier_no_set() -> None:
    data = _project_data()
    name = _classifier(data)
    del data["models"][name]["evaluation"]
    names = classifier_names(parse_spec(data, ROOT))
    with pytest.raises(DatasetError, match=rf"^models\.{name}\.evaluation: not set; set \{{data: FILE\.npz"):
        load_dataset(None, None, None, None, names)


def test_spec_rejects_an_unknown_evaluation_key_naming_it_when_parsed() -> None:
    data = _project_data()
    name = _classifier(data)
    data["models"][name]["evaluation"]["dataset"] = "other"
    with pytest.raises(SpecError, match=rf"models\.{name}\.evaluation\.dataset: unknown key"):
        parse_spec(data, ROOT)


def test_lint_names_the_evaluation_field_when_its_files_are_missing_or_disagree(tmp_path: Path) -> None:
    data = _project_data()
    name = _classifier(data)
    where = f"models.{name}.evaluation"
    data["models"][name]["evaluation"] = {"data": "no/such.npz", "labels": data["models"][name]["evaluation"]["labels"]}
    findings, _ = lint_spec(parse_spec(copy.deepcopy(data), ROOT))
    assert f"{where}.data: file 'no/such.npz' not found (resolved to {ROOT / 'no/such.npz'})" in findings
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 1, 28, 28)), b=np.zeros((3, 1, 28, 28)))
    data["models"][name]["evaluation"]["data"] = str(tmp_path / "two.npz")
    findings, _ = lint_spec(parse_spec(copy.deepcopy(data), ROOT))
    assert any(f.startswith(f"{where}.data: {str(tmp_path / 'two.npz')!r} holds ['a', 'b']") for f in findings)
    np.savez(tmp_path / "three.npz", image=np.zeros((3, 1, 28, 28)))
    data["models"][name]["evaluation"]["data"] = str(tmp_path / "three.npz")
    findings, _ = lint_spec(parse_spec(copy.deepcopy(data), ROOT))
    assert any(f.startswith(f"{where}.labels:") and "expected [3]" in f for f in findings), findings


def test_load_dataset_reads_a_named_set_when_asked_by_name() -> None:
    (choice, *_) = build_parser()._option_string_actions["--dataset"].choices
    data, description = load_dataset(choice, None, None, 5, load_classifier_names(ROOT / "deploy.yaml"))
    assert len(data) == 5 and description


def test_load_tools_sample_the_specs_set_when_the_spec_points_at_other_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from build_tools.served import SPEC_ENV
    from loadtest import common

    data = _project_data()
    images, labels = np.full((4, 1, 12, 12), 200, dtype=np.uint8), np.array([0, 1, 2, 1], dtype=np.int64)
    np.savez(tmp_path / "set.npz", image=images)
    np.save(tmp_path / "labels.npy", labels)
    data["models"][_classifier(data)]["evaluation"] = {"data": str(tmp_path / "set.npz"),
                                                       "labels": str(tmp_path / "labels.npy")}
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv(SPEC_ENV, str(tmp_path / "deploy.yaml"))
    for cached in (common.served_names, common.spec_sample):
        cached.cache_clear()
    try:
        sample = common.spec_sample()
        assert sample.image_shape == (1, 12, 12) and np.array_equal(sample.labels, labels)
        assert np.array_equal(sample.images, images.astype(np.float32)) and len(sample.pngs) == 4
    finally:
        for cached in (common.served_names, common.spec_sample):
            cached.cache_clear()
