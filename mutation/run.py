"""`make mutation`: mutation testing of the modules where a wrong answer is silent, with a report.

Python modules (preprocessing, the evaluation gate, config generation, the linter; listed under
``[tool.mutmut]`` in pyproject.toml) go through mutmut 3, which runs the no-server tests against each
mutant. The alert rules go through :mod:`mutation.alerts` and promtool. The report
(``build/mutation/report.md`` and ``report.json``) gives the kill rate per module and lists every
surviving mutant with its diff and, from ``mutation/accepted.yaml``, why it is acceptable. The run fails
when a module's kill rate is below the floor, or when a survivor has no reason on file.

``--sample N`` runs N mutants drawn at random (seeded: ``--seed``, else the CI run's id or today's date)
from every mutated module: the quick check CI runs (``make mutation-sample``). Its score leaves out the
survivors on file as equivalent; the full run's kill rate counts them as survivors.

mutmut runs at low priority (``nice``) with one worker by default: the machines it runs on are shared.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import random
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
NICE = 10
# A pattern matching a few cheap mutants: the first step of a sampled run, which makes mutmut generate
# every mutant and collect its test statistics, so that the sample can be drawn from the real names.
PRIMING_PATTERN = "build_tools.batching.*__mutmut_1"
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

    @property
    def accepted(self) -> int:
        return sum(1 for v in self.survivors if v.reason)

    @property
    def score(self) -> float:
        """Killed among the mutants that are not on file as equivalent (what a sampled run checks)."""
        real = self.reached - self.accepted
        return self.killed / real if real else 1.0


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


def _low_priority() -> None:
    os.nice(NICE)


def _mutmut(*args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=ROOT, capture_output=capture, text=True,
                          preexec_fn=_low_priority)


def _require_mutmut() -> None:
    if shutil.which("mutmut", path=str(Path(sys.executable).parent)) is None:
        raise ToolkitError("mutmut is not installed here; run `make mutation` (pip install -e '.[mutation]')")


def run_mutmut(patterns: list[str], children: int, fresh: bool) -> None:
    """mutmut over the mutants matching `patterns` (all when empty), at low priority."""
    _require_mutmut()
    # mutmut keeps its instrumented copy and verdicts in mutants/ and retests what changed; --fresh
    # starts over (slower: generating the mutants takes minutes on a small machine).
    if fresh:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    args = ["run", "--max-children", str(children), *patterns]
    logger.info("mutmut %s", " ".join(args if len(args) < 12 else [*args[:12], f"... ({len(patterns)} names)"]))
    proc = _mutmut(*args, capture=False)
    if proc.returncode != 0:
        raise ToolkitError(f"mutmut run failed with exit code {proc.returncode}")


def _statuses() -> dict[str, str]:
    out = _mutmut("results", "--all", "true")
    if out.returncode != 0:
        raise ToolkitError(f"mutmut results failed: {out.stderr[-2000:]}")
    statuses = {}
    for line in out.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            statuses[name] = status
    return statuses


def default_seed() -> str:
    """The CI run's id where CI names one, else today's date: a new sample every run or every day."""
    for key in ("GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILD_ID"):
        if os.environ.get(key):
            return os.environ[key]
    return time.strftime("%Y%m%d")


def draw_sample(names: list[str], size: int, seed: str) -> list[str]:
    """`size` mutants drawn at random with `seed`, shared out over the modules in proportion to their
    mutant counts (each module at least one), so every mutated module is checked in every run."""
    by_module: dict[str, list[str]] = {}
    for name in sorted(names):
        by_module.setdefault(_module_of(name), []).append(name)
    rng = random.Random(seed)
    chosen: list[str] = []
    for _, members in sorted(by_module.items()):
        share = max(1, round(size * len(members) / max(len(names), 1)))
        chosen += rng.sample(members, min(share, len(members)))
    return sorted(chosen)


def run_sample(size: int, seed: str, children: int, fresh: bool) -> list[str]:
    """Generate every mutant (and mutmut's test statistics) with a cheap priming run, then run a seeded
    sample of the mutants that some no-server test reaches. Returns the sampled names."""
    run_mutmut([PRIMING_PATTERN], children, fresh)
    reached = [name for name, status in _statuses().items() if status != "no tests"]
    sample = draw_sample(reached, size, seed)
    logger.info("sample of %d mutants (seed %s) out of %d reached by the tests", len(sample), seed, len(reached))
    run_mutmut(sample, children, fresh=False)
    return sample


def mutmut_scores(accepted: dict[str, str], only: list[str] | None = None) -> list[ModuleScore]:
    """Per module, mutmut's stored verdicts (of the mutants in `only`, when given)."""
    statuses = _statuses()
    if only is not None:
        statuses = {name: statuses[name] for name in only if name in statuses}
    by_module: dict[str, list[tuple[str, str]]] = {}
    for name, status in statuses.items():
        if status == "not checked":
            continue  # not run (outside the sample, or an interrupted run)
        by_module.setdefault(_module_of(name), []).append((name, status))
    scores = []
    for module, results in sorted(by_module.items()):
        counts = Counter(status for _, status in results)
        score = ModuleScore(module, len(results), sum(counts[s] for s in DETECTED), dict(counts))
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


def render(scores: list[ModuleScore], seconds: float, sample: str | None) -> str:
    head = (f"Sampled run ({sample})" if sample else "Run") + f", {seconds:.0f} s"
    lines = [
        "# Mutation testing report",
        "",
        f"{head}; mutants mutmut has not run (outside a sample or an interrupted run) are left out. "
        f"Kill rate = killed / mutants the no-server tests reach; floor {FLOOR:.0%}. Score = killed / reached "
        "mutants that are not on file as equivalent (mutation/accepted.yaml). Mutants in functions "
        "that only run inside the Triton server (they need the stub's pb_utils objects) are counted apart: "
        "the server tests cover those functions, and mutmut cannot run them.",
        "",
        "| module | mutants | server-only | reached | killed | survived | accepted | kill rate | score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        unreached = sum(s.unreached.values())
        lines.append(f"| {s.module} | {s.total} | {unreached} | {s.reached} | {s.killed} | {s.reached - s.killed} "
                     f"| {s.accepted} | {s.kill_rate:.1%} | {s.score:.1%} |")
    total = overall(scores)
    lines += [f"| **all** | {total.total} | {sum(total.unreached.values())} | {total.reached} | {total.killed} "
              f"| {total.reached - total.killed} | {total.accepted} | {total.kill_rate:.1%} | {total.score:.1%} |", ""]
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


def overall(scores: list[ModuleScore]) -> ModuleScore:
    total = ModuleScore("all", sum(s.total for s in scores), sum(s.killed for s in scores), {})
    total.survivors = [v for s in scores for v in s.survivors]
    total.unreached = {f"{s.module}:{k}": n for s in scores for k, n in s.unreached.items()}
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make mutation", description=__doc__.splitlines()[0])
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="run N mutants drawn at random from every module (0: all)")
    p.add_argument("--seed", default=None, help="the sample's seed (default: the CI run id, else today's date)")
    p.add_argument("--children", type=int, default=1, help="mutants tested in parallel")
    p.add_argument("--skip-python", action="store_true", help="only the alert rules (no mutmut run)")
    p.add_argument("--skip-alerts", action="store_true", help="only the Python modules (no promtool)")
    p.add_argument("--fresh", action="store_true", help="forget mutmut's earlier results (mutants/)")
    p.add_argument("--report-only", action="store_true", help="report mutmut's stored verdicts without a run")
    p.add_argument("--only", action="append", default=[],
                   help="mutant name pattern to run, e.g. 'clients.gate.*' (repeatable; reports every module)")
    p.add_argument("--report-dir", default="build/mutation")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    seed = args.seed or default_seed()
    sample = f"{args.sample} mutants, seed {seed}" if args.sample else None
    try:
        accepted = yaml.safe_load(ACCEPTED.read_text()) or {} if ACCEPTED.is_file() else {}
        started = time.monotonic()
        scores = []
        if not args.skip_python:
            chosen = None
            if args.report_only:
                pass
            elif args.sample:
                chosen = run_sample(args.sample, seed, args.children, args.fresh)
            else:
                run_mutmut(args.only, args.children, args.fresh)
            scores += mutmut_scores(accepted, chosen)
        if not args.skip_alerts:
            scores.append(alert_scores(accepted))
        seconds = time.monotonic() - started
    except ToolkitError as e:
        sys.stderr.write(f"make mutation: error: {str(e).splitlines()[0]}\n")
        return 1
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "sample" if args.sample else "report"
    (out / f"{name}.md").write_text(render(scores, seconds, sample))
    (out / f"{name}.json").write_text(json.dumps(
        {"sample": sample, "seconds": seconds, "floor": FLOOR,
         "modules": [{**asdict(s), "reached": s.reached, "kill_rate": s.kill_rate, "score": s.score}
                     for s in scores]}, indent=2))
    for s in [*scores, overall(scores)]:
        sys.stdout.write(f"{s.module:<48} {s.killed:>4}/{s.reached:<4} killed  {s.kill_rate:6.1%}  "
                         f"score {s.score:6.1%} ({s.accepted} equivalent on file)\n")
    sys.stdout.write(f"report: {out / f'{name}.md'} ({seconds:.0f} s)\n")
    unreviewed = [v.name for s in scores for v in s.survivors if not v.reason]
    if args.sample:
        # A few dozen mutants: one module's rate is too noisy to judge; the sample as a whole is not.
        low = [] if overall(scores).score >= FLOOR else ["the sample as a whole"]
    else:
        low = [s.module for s in scores if s.kill_rate < FLOOR]
    if low:
        sys.stderr.write(f"make mutation: {'score' if args.sample else 'kill rate'} below {FLOOR:.0%}: "
                         f"{', '.join(low)}\n")
    if unreviewed:
        sys.stderr.write(f"make mutation: {len(unreviewed)} surviving mutant(s) without a reason in "
                         f"mutation/accepted.yaml, first: {unreviewed[0]}\n")
    return 1 if low or (unreviewed and not args.sample) else 0


if __name__ == "__main__":
    sys.exit(main())
