"""Ready ``--input-data`` files for perf_analyzer, one per served model (``loadtest/perf_inputs/``).

perf_analyzer's JSON takes a BYTES element as ``{"b64": ...}`` of its *serialized* form: a 4-byte
little-endian length, then the bytes. A plain base64 PNG is read as a length prefix of garbage
("expecting string of length 1196314761": the PNG signature read as a length), so these files carry
the prefix. Numeric inputs are plain ``content`` lists with their ``shape`` (without the batch
dimension: perf_analyzer stacks consecutive steps into a batch), written as floats for FP32 inputs
(perf_analyzer refuses JSON integers there: "unable to find float data in json").

Each file holds one sample of every class of the spec's labelled evaluation set. The files are committed;
regenerate them with
``python -m loadtest.perf_inputs`` (a test fails when they differ from what this module writes).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from build_tools.served import default_spec_path
from build_tools.spec import load_spec
from loadtest.common import served_names, spec_sample

FOLDER = Path(__file__).resolve().parent / "perf_inputs"


def serialize_bytes_element(data: bytes) -> bytes:
    """Triton's wire form of one BYTES element: a 4-byte little-endian length, then the bytes."""
    return len(data).to_bytes(4, "little") + data


def _one_per_class() -> list[int]:
    labels = spec_sample().labels
    return [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels)]


def input_data() -> dict[str, dict[str, list[dict[str, dict[str, object]]]]]:
    """model name -> perf_analyzer input-data document: the spec's classifier (tensors), its
    classification ensemble (encoded PNGs), and each ensemble step that takes the raw bytes too."""
    names = served_names()
    sample = spec_sample()
    picks = _one_per_class()
    documents: dict[str, dict[str, list[dict[str, dict[str, object]]]]] = {}
    documents[names.classifier] = {"data": [
        {names.classifier_input: {"content": [float(v) for v in sample.images[i].reshape(-1)],
                                  "shape": list(sample.image_shape)}}
        for i in picks
    ]}
    pngs = [base64.b64encode(serialize_bytes_element(sample.pngs[i])).decode("ascii") for i in picks]
    documents[names.ensemble] = {"data": [{names.ensemble_input: {"b64": b64}} for b64 in pngs]}
    for step in load_spec(default_spec_path()).ensembles[names.ensemble].steps:
        for tensor, source in step.input_map.items():
            if source == names.ensemble_input:
                documents[step.model] = {"data": [{tensor: {"b64": b64}} for b64 in pngs]}
    return documents


def render(document: dict[str, object]) -> str:
    return json.dumps(document, separators=(",", ":")) + "\n"


def write(folder: Path = FOLDER) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for model, document in input_data().items():
        path = folder / f"{model}.json"
        path.write_text(render(document))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from build_tools.console import make_parser, run

    parser = make_parser("python -m loadtest.perf_inputs", __doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FOLDER, help="folder to write the files to")

    def command(args: argparse.Namespace) -> int:
        for path in write(args.out):
            sys.stdout.write(f"{path}\n")
        return 0

    return run(parser, command, argv)


if __name__ == "__main__":
    sys.exit(main())
