"""The test-suite's own tooling: strict mode for missing tools, and the alert-rule mutator."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutation import alerts
from mutation.run import _module_of
from tests.support.tools import STRICT_ENV, tool_missing

ROOT = Path(__file__).resolve().parents[2]


def test_tool_missing_skips_with_reason_when_not_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="promtool is not installed"):
        tool_missing("promtool is not installed")


@pytest.mark.parametrize("value", ["1", "yes"])
def test_tool_missing_fails_when_ci_requires_tools(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(STRICT_ENV, value)
    with pytest.raises(pytest.fail.Exception, match=f"promtool is not installed .{STRICT_ENV} is set"):
        tool_missing("promtool is not installed")


def test_tool_missing_skips_when_strict_switch_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        tool_missing("x")


def test_alert_mutants_change_one_line_each_when_generated_from_the_rules() -> None:
    text = (ROOT / alerts.RULES).read_text()
    mutants = list(alerts.mutants(text))
    original = text.split("\n")
    for m in mutants:
        changed = [i for i, (a, b) in enumerate(zip(original, m.text.split("\n"))) if a != b]
        assert changed == [m.line - 1], m
    rules = {m.rule for m in mutants}
    assert rules == {"TritonDown", "TritonHighErrorRatio", "TritonP99LatencyAboveSLO", "TritonQueueTimeGrowing",
                     "TritonGPUMemoryHigh", "TritonStubHealed", "TritonModelUnhealthy", "TritonStubNotAnswering",
                     "ModelInputsRejectedHigh", "PredictionLogDropping",
                     "ModelInputDrift", "ModelPredictionDrift", "ModelAccuracyDrop", "ModelCanaryWorse",
                     "DriftMonitorDown"}
    described = {(m.rule, m.description) for m in mutants}
    for expected in [("TritonHighErrorRatio", "0.05 -> 0.055"), ("TritonP99LatencyAboveSLO", "100000 -> 90000"),
                     ("TritonQueueTimeGrowing", "2 -> 2.2"), ("TritonQueueTimeGrowing", "and -> or"),
                     ("TritonDown", "for 1m -> 2m"), ("TritonGPUMemoryHigh", "> -> >=")]:
        assert expected in described


def test_alert_mutants_leave_label_values_and_ranges_alone_when_numbers_are_mutated() -> None:
    text = 'groups:\n  - rules:\n      - alert: A\n        expr: x{quantile="0.99"}[5m] > 3\n        for: 4m\n'
    descriptions = [m.description for m in alerts.mutants(text)]
    assert descriptions == ["3 -> 2.7", "3 -> 3.3", "> -> <", "> -> >=", "for 4m -> 2m", "for 4m -> 8m"]


def test_mutant_names_map_to_their_source_file_when_reported() -> None:
    assert _module_of("clients.gate.x_compare__mutmut_3") == "clients/gate.py"
    assert _module_of("build_tools.python_models.onnx_runner.model.xǁTritonPythonModelǁcheck__mutmut_12") == (
        "build_tools/python_models/onnx_runner/model.py"
    )


def test_draw_sample_covers_every_module_and_repeats_when_the_seed_is_the_same() -> None:
    from mutation.run import draw_sample

    names = [f"clients.gate.x_compare__mutmut_{i}" for i in range(1, 91)]
    names += [f"build_tools.batching.x_prefetch_blockers__mutmut_{i}" for i in range(1, 11)]
    first = draw_sample(names, 20, "20261126")
    assert first == draw_sample(names, 20, "20261126") and first != draw_sample(names, 20, "20261127")
    modules = [_module_of(n) for n in first]
    assert modules.count("clients/gate.py") == 18 and modules.count("build_tools/batching.py") == 2
    assert len(set(first)) == 20 and set(first) <= set(names)


def test_default_seed_is_the_ci_run_when_ci_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from mutation.run import default_seed

    monkeypatch.setenv("GITHUB_RUN_ID", "4711")
    assert default_seed() == "4711"
    monkeypatch.delenv("GITHUB_RUN_ID")
    for key in ("CI_PIPELINE_ID", "BUILD_ID"):
        monkeypatch.delenv(key, raising=False)
    assert len(default_seed()) == 8 and default_seed().isdigit()  # the date, YYYYMMDD


def test_every_planted_bug_finds_its_code_when_checked_against_this_checkout() -> None:
    """The audit plants each bug by exact text; code that moved would leave a bug 'not planted' (and
    the audit silently weaker). Every bug must find at least one of its edits, exactly once per file."""
    from mutation.planted import planted_bugs

    bugs = planted_bugs(ROOT)
    assert len(bugs) == 14
    for bug in bugs:
        found = []
        for edit in bug.edits:
            for f in edit.files:
                text = (ROOT / f).read_text() if (ROOT / f).is_file() else ""
                if edit.old in text:
                    assert text.count(edit.old) == 1, (bug.name, f)
                    found.append(f)
        assert found, f"{bug.name}: none of its edits matches the code"
        assert all((ROOT / t).exists() for t in bug.tests), bug.name
