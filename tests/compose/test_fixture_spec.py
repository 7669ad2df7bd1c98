"""The stand-in spec that the compose check can bake instead of deploy.yaml stays valid.

`COMPOSE_SPEC=tests/compose/fixtures/deploy.yaml .ci/compose-check.sh` serves it; it must expose the
same ensemble interface as the showcase (`mnist`: `image_bytes` BYTES [1] -> `probabilities` FP32 [10]).
"""

from __future__ import annotations

from pathlib import Path

from build_tools.lint import lint_spec
from build_tools.spec import load_spec

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "deploy.yaml"


def test_fixture_spec_lints_clean_when_loaded() -> None:
    findings, ios = lint_spec(load_spec(FIXTURE))
    assert findings == []
    mnist = ios["mnist"]
    assert [(t.name, list(t.dims)) for t in mnist.inputs] == [("image_bytes", [1])]
    assert [(t.name, list(t.dims)) for t in mnist.outputs] == [("probabilities", [10])]
