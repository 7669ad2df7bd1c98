"""Served names come from the spec: the classification pipeline is found, renames follow, gaps are named."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from build_tools.errors import SpecError
from build_tools.interfaces import torchscript_model_name, trt_model_name
from build_tools.served import classifier_names, load_classifier_names
from build_tools.spec import load_spec, parse_spec
from clients.datasets import DATASETS

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


# Generic packages must not name the showcase's models, tensors, files, data sets or image shape: they read
# them from the spec. What counts as the showcase's is read from deploy.yaml itself, so a new model or tensor
# there is covered without touching this test.
GENERIC_PACKAGES = ("build_tools", "clients", "control", "loadtest", "mutation", "tools", "triton_api")
# Files of those packages that may name the showcase, and why.
SHOWCASE_ALLOWED = {
    "clients/datasets.py": "the data loader: it knows the labelled sets by name",
    "clients/captures.py": "the photo-like capture set, made from MNIST-layout digits (data, like the loader)",
    "mutation/accepted.yaml": "mutmut names each reviewed mutant by its module's import path (data, not code)",
}
# Generated from the spec (a test checks they match what loadtest/perf_inputs.py writes).
SHOWCASE_GENERATED = ("loadtest/perf_inputs/",)


def _showcase_pattern() -> re.Pattern[str]:
    spec = load_spec(ROOT / "deploy.yaml")
    names: set[str] = set(spec.models) | set(spec.ensembles) | set(spec.routers())
    names |= {trt_model_name(n, m) for n, m in spec.models.items() if "tensorrt_plan" in m.formats}
    names |= {torchscript_model_name(n, m) for n, m in spec.models.items() if "torchscript" in m.formats}
    tensors = {t for ens in spec.ensembles.values() for step in ens.steps
               for t in (*step.input_map, *step.input_map.values(), *step.output_map, *step.output_map.values())}
    tensors |= {t.name for m in spec.models.values() for side in (m.inputs, m.outputs) if isinstance(side, list)
                for t in side}
    # One-word tensor names (image, probabilities) are ordinary words in generic code (container images,
    # JSON keys); the rename test above covers them.
    names |= {t for t in tensors if "_" in t}
    # The showcase's files: their folder under models/ and their stems (mnist_cnn.onnx).
    sources = [Path(src) for m in spec.models.values() for src in m.version_sources.values()]
    names |= {s.parts[1] for s in sources if s.parts[0] == "models"} | {s.stem for s in sources if s.suffix}
    names |= set(DATASETS)  # the data loader's named sets
    words = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    # Any identifier built on a showcase name (mnist_holdout, mnist_sample, ..._v2) counts as one.
    prefixes = "|".join(sorted(map(re.escape, set(spec.models) | set(spec.ensembles)), key=len, reverse=True))
    # The showcase's image shape: H x W of the classifier's input, and its pixel count.
    h, w = next(t.dims[-2:] for m in spec.models.values() if isinstance(m.outputs, list) for t in m.outputs)
    shape = rf"\b{h}\s*[x*,]\s*{w}\b|\b{h * w}\b"
    return re.compile(rf"(?<!\w)(?:{words})(?!\w)|(?<!\w)(?:{prefixes})_\w+|{shape}")


def _scanned_files(package: str) -> list[Path]:
    return [
        path for path in sorted((ROOT / package).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        and path.relative_to(ROOT).as_posix() not in SHOWCASE_ALLOWED
        and not path.relative_to(ROOT).as_posix().startswith(SHOWCASE_GENERATED)
    ]


def test_showcase_pattern_finds_each_fixed_breach_when_scanning_their_old_text() -> None:
    pattern = _showcase_pattern()
    breaches = [
        'p.add_argument("--target", default="triton-http/mnist",',
        'f"export it with models/mnist/train.py or drop torchscript from formats"',
        'elif name in (None, "mnist-holdout"):',
        "from loadtest.common import mnist_sample, served_names",
        "IMAGE_SHAPE = (1, 28, 28)",
        'CLASSIFIER = "mnist_classifier"',
        'PREPROCESS_COPY = "model_repository/mnist_preprocess/1/pixels.py"',
        'candidate = perturbed_copy(source, args.workdir / "mnist_v2.onnx", scale=0.02, seed=7)',
        "# The model-ready input as uint8 bytes (28x28 -> 784 bytes)",
        '{"b64": ...} for the ensemble input image_bytes',
    ]
    assert [b for b in breaches if not pattern.search(b)] == []
    clean = ["triton-http/{names.ensemble}", "to_mnist(pixels)", "LABEL_SMOOTHING = 0.05", '"image": opts.image',
             "tests/integration/test_mnist.py"]
    assert [c for c in clean if pattern.search(c)] == []


@pytest.mark.parametrize("package", GENERIC_PACKAGES)
def test_package_names_no_showcase_model_when_scanned(package: str) -> None:
    pattern = _showcase_pattern()
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _scanned_files(package)
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)
