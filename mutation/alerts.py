"""Mutation testing of the Prometheus alert rules, through promtool's rule unit tests.

mutmut mutates Python only, so the rules get their own small mutator. Each mutant changes one thing an
operator would never notice by reading a dashboard: a threshold or factor 10 % off, a comparison turned
around or made inclusive, a boolean operator swapped, a `for:` duration halved or doubled, a severity
changed. A mutant is killed when `promtool test rules alerts.test.yml` fails against it.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from build_tools.errors import ToolkitError

logger = logging.getLogger(__name__)

RULES = Path("compose/prometheus/alerts.yml")
TESTS = Path("compose/prometheus/alerts.test.yml")

# A number in an expression, not part of a name, a label value, a range ([5m]) or a duration.
_NUMBER = re.compile(r"(?<![\w.\[\"'])(\d+(?:\.\d+)?)(?![\w.\]\"'])")
_COMPARISONS = ((" > ", (" < ", " >= ")), (" == ", (" != ",)))
_BOOLEANS = ((" and", " or"), (" or ", " and "))
_DURATION = re.compile(r"^(\s*for:\s*)(\d+)([smh])\s*$")
_SEVERITIES = {"warning": "critical", "critical": "warning"}


@dataclass(frozen=True)
class Mutant:
    rule: str
    line: int  # 1-based, in alerts.yml
    description: str
    text: str  # the whole mutated file


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    killed: bool
    output: str


def _scaled(value: str) -> list[str]:
    number = float(value)
    if number == 0:
        return ["1"]
    out = []
    for factor in (0.9, 1.1):
        scaled = number * factor
        out.append(str(int(scaled)) if value.isdigit() and scaled == int(scaled) else f"{scaled:g}")
    return out


def mutants(text: str) -> Iterator[Mutant]:
    """Every single-change mutant of the rules file (expressions, `for:`, severity)."""
    lines = text.split("\n")
    rule = ""
    in_expr = False
    expr_indent = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("- alert:"):
            rule, in_expr = stripped.split(":", 1)[1].strip(), False
            continue
        if not rule or stripped.startswith("#"):
            continue
        if stripped.startswith("expr:"):
            in_expr, expr_indent = True, indent
        elif in_expr and stripped and indent <= expr_indent:
            in_expr = False

        def variant(new_line: str, what: str, i: int = i, rule: str = rule) -> Mutant:
            changed = [*lines[:i], new_line, *lines[i + 1:]]
            return Mutant(rule, i + 1, what, "\n".join(changed))

        if in_expr:
            code = line.split("#", 1)[0]
            for m in _NUMBER.finditer(code):
                for new in _scaled(m.group(1)):
                    yield variant(line[:m.start()] + new + line[m.end():], f"{m.group(1)} -> {new}")
            for old, news in _COMPARISONS:
                at = code.find(old)
                if at >= 0:
                    for new in news:
                        yield variant(line[:at] + new + line[at + len(old):], f"{old.strip()} -> {new.strip()}")
            for old, new in _BOOLEANS:
                at = code.find(old)
                if at >= 0 and (old != " and" or code[at:].strip() == "and"):
                    yield variant(line[:at] + new + line[at + len(old):], f"{old.strip()} -> {new.strip()}")
            continue
        duration = _DURATION.match(line)
        if duration:
            head, value, unit = duration.groups()
            for new in (max(1, int(value) // 2), int(value) * 2):
                if new != int(value):
                    yield variant(f"{head}{new}{unit}", f"for {value}{unit} -> {new}{unit}")
        if stripped.startswith("severity:"):
            old = stripped.split(":", 1)[1].strip()
            if old in _SEVERITIES:
                yield variant(line.replace(old, _SEVERITIES[old]), f"severity {old} -> {_SEVERITIES[old]}")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise ToolkitError("promtool is not installed (Debian package `prometheus`); the alert rules need it")
    return path


def run_mutant(mutant: Mutant, rules: Path, tests: Path, tool: str) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="alert-mutant-") as tmp:
        work = Path(tmp)
        (work / rules.name).write_text(mutant.text)
        shutil.copy2(tests, work / tests.name)
        proc = subprocess.run([tool, "test", "rules", tests.name], cwd=work, capture_output=True, text=True,
                              timeout=120)
    return Outcome(mutant, proc.returncode != 0, (proc.stdout + proc.stderr)[-2000:])


def run(root: Path, tests: Path | None = None) -> list[Outcome]:
    """Every mutant of alerts.yml against the unit tests (``tests``: another alerts.test.yml to judge)."""
    rules, tests = root / RULES, tests or root / TESTS
    tool = promtool()
    text = rules.read_text()
    baseline = run_mutant(Mutant("", 0, "unmutated", text), rules, tests, tool)
    if baseline.killed:
        raise ToolkitError(f"promtool test rules fails on the unmutated rules:\n{baseline.output}")
    outcomes = [run_mutant(m, rules, tests, tool) for m in mutants(text)]
    logger.info("alert rules: %d of %d mutants killed", sum(o.killed for o in outcomes), len(outcomes))
    return outcomes
