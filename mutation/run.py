"""`make mutation`: mutation testing of the modules where a wrong answer is silent, with a report.

Python modules (preprocessing, the evaluation gate, config generation, the linter; listed under
``[tool.mutmut]`` in pyproject.toml) go through mutmut 3, which runs the no-server tests against each
mutant. The alert rules go through :mod:`mutation.alerts` and promtool. The report
(``build/mutation/report.md`` and ``report.json``) gives the kill rate per module and lists every
surviving mutant with its diff and, from ``mutation/accepted.yaml``, why it is acceptable. The run fails
when a module's kill rate is below the floor, or when a survivor has no reason on file.

``--sample`` runs about one mutant in ten (those numbered ...7): a quick check, and for CI.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from build_tools.errors import ToolkitError
from mutation import alerts

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
ACCEPTED = ROOT / "mutation" / "accepted.yaml"
FLOOR = 0.85
SAMPLE_PATTERNS = ("*__mutmut_*7",)
ALERTS_MODULE = "compose/prometheus/alerts.yml"
# mutmut's verdicts that mean the tests noticed the mutant.
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass
class Survivor:
    name: str
    module: str
    status: str
    diff: str
    reason: str | None


@dataclass
class ModuleScore:
    module: str
    total: int
    killed: int
    statuses: dict[str, int]
    survivors: list[Survivor] = field(default_factory=list)
    unreached: dict[str, int] = field(default_factory=dict)  # function -> mutants no no-server test reaches

    @property
    def reached(self) -> int:
        return self.total - sum(self.unreached.values())

    @property
    def kill_rate(self) -> float:
        return self.killed / self.reached if self.reached else 1.0


def reason_for(name: str, accepted: dict[str, str]) -> str | None:
    """The reason on file for a mutant: its exact name, else the first pattern (fnmatch) that matches it."""
    if name in accepted:
        return accepted[name]
    return next((why for pattern, why in accepted.items() if fnmatch.fnmatchcase(name, pattern)), None)


def _function_of(mutant: str) -> str:
    return mutant.split("__mutmut_")[0]


def _module_of(mutant: str) -> str:
    """`clients.gate.x_compare__mutmut_3` -> `clients/gate.py` (the part before the mangled function)."""
    head = mutant.split("__mutmut_")[0]
    parts = head.split(".")
    for i in range(len(parts), 0, -1):
        candidate = Path(*parts[:i]).with_suffix(".py")
        if (ROOT / candidate).is_file():
            return str(candidate)
    return head


def _mutmut(*args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=ROOT, capture_output=capture, text=True)


def run_mutmut(sample: bool, children: int, fresh: bool, only: list[str]) -> None:
    if shutil.which("mutmut", path=str(Path(sys.executable).parent)) is None:
        raise ToolkitError("mutmut is not installed here; run `make mutation` (pip install -e '.[mutation]')")
    # mutmut keeps its instrumented copy and verdicts in mutants/ and retests what changed; --fresh
    # starts over (slower: generating the mutants takes minutes on a small machine).
    if fresh:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    prefixes = [o.rstrip("*") for o in only]
    if prefixes:
        patterns = [f"{o}{s}" for o in prefixes for s in SAMPLE_PATTERNS] if sample else [f"{o}*" for o in prefixes]
    else:
        patterns = list(SAMPLE_PATTERNS) if sample else []
    args = ["run", "--max-children", str(children), *patterns]
    logger.info("mutmut %s", " ".join(args))
    proc = _mutmut(*args, capture=False)
    if proc.returncode != 0:
        raise ToolkitError(f"mutmut run failed with exit code {proc.returncode}")


def mutmut_scores(accepted: dict[str, str]) -> list[ModuleScore]:
    out = _mutmut("results", "--all", "true")
    if out.returncode != 0:
        raise ToolkitError(f"mutmut results failed: {out.stderr[-2000:]}")
    by_module: dict[str, list[tuple[str, str]]] = {}
    for line in out.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        if status == "not checked":
            continue  # not run (outside the sample, or an interrupted run)
        by_module.setdefault(_module_of(name), []).append((name, status))
    scores = []
    for module, results in sorted(by_module.items()):
        statuses = Counter(status for _, status in results)
        score = ModuleScore(module, len(results), sum(statuses[s] for s in DETECTED), dict(statuses))
        for name, status in results:
            if status == "no tests":
                # Only the server reaches these functions (they need the stub's pb_utils objects).
                score.unreached[_function_of(name)] = score.unreached.get(_function_of(name), 0) + 1
            elif status not in DETECTED:
                diff = _mutmut("show", name).stdout.strip()
                score.survivors.append(Survivor(name, module, status, diff, reason_for(name, accepted)))
        scores.append(score)
    return scores


def alert_scores(accepted: dict[str, str]) -> ModuleScore:
    outcomes = alerts.run(ROOT)
    score = ModuleScore(ALERTS_MODULE, len(outcomes), sum(o.killed for o in outcomes),
                        dict(Counter("killed" if o.killed else "survived" for o in outcomes)))
    for o in outcomes:
        if not o.killed:
            key = f"alerts:{o.mutant.rule}:{o.mutant.description}"
            diff = f"{ALERTS_MODULE}:{o.mutant.line} ({o.mutant.rule}): {o.mutant.description}"
            score.survivors.append(Survivor(key, ALERTS_MODULE, "survived", diff, reason_for(key, accepted)))
    return score


def render(scores: list[ModuleScore], seconds: float, sample: bool) -> str:
    lines = [
        "# Mutation testing report",
        "",
        f"{'Sampled run (mutants numbered ...7)' if sample else 'Run'}, {seconds:.0f} s; mutants mutmut has "
        "not run (outside a sample or an interrupted run) are left out. "
        f"Kill rate = killed / mutants the no-server tests reach; floor {FLOOR:.0%}. Mutants in functions "
        "that only run inside the Triton server (they need the stub's pb_utils objects) are counted apart: "
        "the server tests cover those functions, and mutmut cannot run them.",
        "",
        "| module | mutants | server-only | reached | killed | survived | kill rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        unreached = sum(s.unreached.values())
        lines.append(f"| {s.module} | {s.total} | {unreached} | {s.reached} | {s.killed} | {s.reached - s.killed} "
                     f"| {s.kill_rate:.1%} |")
    reached = sum(s.reached for s in scores)
    killed = sum(s.killed for s in scores)
    lines += [f"| **all** | {sum(s.total for s in scores)} | {sum(sum(s.unreached.values()) for s in scores)} "
              f"| {reached} | {killed} | {reached - killed} | {killed / max(reached, 1):.1%} |", ""]
    lines += ["## Functions only the server runs (mutants not reached by the no-server tests)", ""]
    for s in scores:
        for function, count in sorted(s.unreached.items()):
            lines.append(f"- `{function}`: {count} mutants")
    lines += ["", "## Surviving mutants and why each is acceptable", ""]
    for s in scores:
        for v in s.survivors:
            lines += [f"### {v.name} ({v.status})", "", f"Why acceptable: {v.reason or '**NOT REVIEWED**'}", "",
                      "```diff", v.diff, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make mutation", description=__doc__.splitlines()[0])
    p.add_argument("--sample", action="store_true", help="about one mutant in ten")
    p.add_argument("--children", type=int, default=2, help="mutants tested in parallel")
    p.add_argument("--skip-python", action="store_true", help="only the alert rules (no mutmut run)")
    p.add_argument("--fresh", action="store_true", help="forget mutmut's earlier results (mutants/)")
    p.add_argument("--report-only", action="store_true", help="report mutmut's stored verdicts without a run")
    p.add_argument("--only", action="append", default=[],
                   help="mutant name prefix to run, e.g. clients.gate (repeatable; reports every module)")
    p.add_argument("--report-dir", default="build/mutation")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        accepted = yaml.safe_load(ACCEPTED.read_text()) or {} if ACCEPTED.is_file() else {}
        started = time.monotonic()
        scores = []
        if not args.skip_python:
            if not args.report_only:
                run_mutmut(args.sample, args.children, args.fresh, args.only)
            scores += mutmut_scores(accepted)
        scores.append(alert_scores(accepted))
        seconds = time.monotonic() - started
    except ToolkitError as e:
        sys.stderr.write(f"make mutation: error: {str(e).splitlines()[0]}\n")
        return 1
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(render(scores, seconds, args.sample))
    (out / "report.json").write_text(json.dumps(
        {"sample": args.sample, "seconds": seconds, "floor": FLOOR,
         "modules": [{**asdict(s), "reached": s.reached, "kill_rate": s.kill_rate} for s in scores]}, indent=2))
    for s in scores:
        sys.stdout.write(f"{s.module:<48} {s.killed:>4}/{s.reached:<4} killed  {s.kill_rate:6.1%}\n")
    sys.stdout.write(f"report: {out / 'report.md'}\n")
    low = [s.module for s in scores if s.kill_rate < FLOOR]
    unreviewed = [v.name for s in scores for v in s.survivors if not v.reason]
    if low:
        sys.stderr.write(f"make mutation: kill rate below {FLOOR:.0%}: {', '.join(low)}\n")
    if unreviewed:
        sys.stderr.write(f"make mutation: {len(unreviewed)} surviving mutant(s) without a reason in "
                         f"mutation/accepted.yaml, first: {unreviewed[0]}\n")
    return 1 if low or unreviewed else 0


if __name__ == "__main__":
    sys.exit(main())
