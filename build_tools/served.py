"""Which served models and tensors an image-classification client talks to, read from the spec.

Clients, the demo, the load tests and the benchmarks take their model and tensor names from here (or
from the server's model metadata), never from literals: renaming a model or a tensor in the spec is
enough. The rule: the first ensemble with a labelled output is the classification pipeline; the ONNX
model whose step produces that output is the classifier; the ensemble's one unproduced input is the
encoded-image input, and the classifier step's one mapped input is the raw-tensor input.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from build_tools.errors import SpecError
from build_tools.spec import DeploySpec, load_spec

logger = logging.getLogger(__name__)

# The project's spec, for installs run from elsewhere than the project folder.
PROJECT_SPEC = Path(__file__).resolve().parent.parent / "deploy.yaml"


@dataclass(frozen=True)
class ClassifierNames:
    """The classification pipeline as served: model names, tensor names, the ONNX file and the labels."""

    classifier: str
    classifier_input: str
    classifier_output: str
    ensemble: str
    ensemble_input: str
    ensemble_output: str
    onnx: Path  # the classifier's newest version, the reference for parity checks
    labels: Path | None
    evaluation: LabelledSet | None = None  # models.<classifier>.evaluation, resolved


@dataclass(frozen=True)
class LabelledSet:
    """The spec's labelled evaluation set of a model, its paths resolved (`where` names the field)."""

    data: Path
    labels: Path
    description: str
    where: str


def classifier_names(spec: DeploySpec) -> ClassifierNames:
    """The spec's classification pipeline; SpecError naming what is missing when it has none."""
    for ens_name, ens in spec.ensembles.items():
        labelled = [name for name, out in ens.outputs.items() if out.labels]
        if not labelled:
            continue
        out_name = labelled[0]
        where = f"ensembles.{ens_name}"
        producer = [
            (i, s, tensor) for i, s in enumerate(ens.steps) for tensor, mapped in s.output_map.items()
            if mapped == out_name
        ]
        # A lifecycle router in the step stands for its target: the classifier is the ONNX model behind it.
        routers = spec.routers()
        step_model = routers.get(producer[0][1].model, producer[0][1].model) if producer else ""
        if not producer or step_model not in spec.models or spec.models[step_model].kind != "onnx":
            raise SpecError(f"{where}.outputs.{out_name}", "expected it to be produced by an ONNX model's step")
        i, step, classifier_output = producer[0]
        # The router's own monitoring input (original sizes from preprocessing) is not a classifier input.
        watched = spec.monitoring.models.get(step_model)
        side = watched.original_size_input if watched is not None and step.model in routers else None
        tensor_inputs = [t for t in step.input_map if t != side]
        if len(tensor_inputs) != 1:
            raise SpecError(
                f"{where}.steps[{i}].input_map",
                f"the classifier step maps {sorted(tensor_inputs)}; expected exactly one input",
            )
        produced = {t for s in ens.steps for t in s.output_map.values()}
        unproduced = sorted({t for s in ens.steps for t in s.input_map.values()} - produced)
        if len(unproduced) != 1:
            raise SpecError(f"{where}.steps", f"the ensemble's inputs are {unproduced}; expected exactly one")
        model = spec.models[step_model]
        sources = model.version_sources
        override = model.outputs.get(classifier_output) if isinstance(model.outputs, dict) else None
        labels = ens.outputs[out_name].labels or (override.labels if override else None)
        ev = model.evaluation
        evaluation = None if ev is None else LabelledSet(
            data=spec.resolve(ev.data), labels=spec.resolve(ev.labels),
            description=ev.description or f"labelled set {ev.data}", where=f"models.{step_model}.evaluation",
        )
        return ClassifierNames(
            classifier=step_model,
            classifier_input=tensor_inputs[0],
            classifier_output=classifier_output,
            ensemble=ens_name,
            ensemble_input=unproduced[0],
            ensemble_output=out_name,
            onnx=spec.resolve(sources[max(sources)]),
            labels=spec.resolve(labels) if labels else None,
            evaluation=evaluation,
        )
    raise SpecError("ensembles", "no ensemble has an output with labels; expected a classification ensemble")


SPEC_ENV = "TRITON_DEPLOY_SPEC"


def default_spec_path() -> Path:
    """$TRITON_DEPLOY_SPEC, else deploy.yaml in the working folder, else the project's own."""
    if os.environ.get(SPEC_ENV):
        return Path(os.environ[SPEC_ENV])
    here = Path("deploy.yaml")
    return here if here.is_file() else PROJECT_SPEC


def load_classifier_names(spec_path: str | Path | None = None) -> ClassifierNames:
    """classifier_names of the spec at spec_path (default: default_spec_path())."""
    return classifier_names(load_spec(Path(spec_path) if spec_path else default_spec_path()))
