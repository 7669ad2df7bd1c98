"""Served names come from the spec: the classification pipeline is found, renames follow, gaps are named."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from build_tools.errors import SpecError
from build_tools.served import classifier_names, load_classifier_names
from build_tools.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]


def _project_data() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy.yaml").read_text())


def test_classifier_names_match_the_spec_when_reading_the_project_spec() -> None:
    names = load_classifier_names(ROOT / "deploy.yaml")
    data = _project_data()
    (ens_name, ens), = data["ensembles"].items()
    last = ens["steps"][-1]
    # The last step may be a lifecycle router: the classifier is the model it routes to.
    routers = {(m["lifecycle"] or {}).get("router") or f"{n}_router": n
               for n, m in data["models"].items() if "lifecycle" in m}
    classifier = routers.get(last["model"], last["model"])
    assert names.ensemble == ens_name
    assert names.classifier == classifier
    assert names.classifier_input == next(iter(last["input_map"]))
    assert names.ensemble_input == next(iter(ens["steps"][0]["input_map"].values()))
    assert names.onnx == (ROOT / data["models"][classifier]["source"]).resolve()
    assert names.labels is not None and names.labels.is_file()


def test_classifier_names_follow_a_rename_when_the_spec_renames_models_and_tensors() -> None:
    text = (ROOT / "deploy.yaml").read_text()
    (ens_name,) = _project_data()["ensembles"]
    names = load_classifier_names(ROOT / "deploy.yaml")
    # Rename the classifier, the ensemble and the ensemble's input everywhere in the spec's text.
    for old, new in ((f"{names.classifier}_router", "digits_v2_router"), (names.classifier, "digits_v2"),
                     (ens_name, "digits_pipeline"), (names.ensemble_input, "encoded")):
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    renamed = classifier_names(parse_spec(yaml.safe_load(text), ROOT))
    assert (renamed.classifier, renamed.ensemble, renamed.ensemble_input) == ("digits_v2", "digits_pipeline", "encoded")
    assert renamed.classifier_input == names.classifier_input


def test_classifier_names_raise_spec_error_naming_the_field_when_no_ensemble_has_labels() -> None:
    data = copy.deepcopy(_project_data())
    for ens in data["ensembles"].values():
        for out in ens["outputs"].values():
            out.pop("labels", None)
    with pytest.raises(SpecError, match=r"^ensembles: no ensemble has an output with labels"):
        classifier_names(parse_spec(data, ROOT))


# Generic packages must not name the showcase's models or tensors: they read them from the spec.
_SHOWCASE_NAMES = re.compile(r"\bmnist_classifier\b|\bmnist_preprocess\b|[\"']mnist[\"']|\bimage_bytes\b|"
                             r"\bpreprocessed_image\b|mnist_cnn\.onnx")


@pytest.mark.parametrize("package", ["build_tools", "clients", "loadtest", "triton_api"])
def test_package_names_no_showcase_model_when_scanned(package: str) -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _SHOWCASE_NAMES.search(line)
    ]
    assert not hits, "\n".join(hits)
