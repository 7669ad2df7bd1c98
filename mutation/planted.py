"""Re-run the mutation audit: plant each known bug in a scratch copy, run the tests that should catch it.

Each planted bug is a set of exact text replacements (several alternatives where the code has moved);
the copy is made from the files git tracks (plus untracked, not ignored ones), so nothing is planted in
the working tree. A bug is caught when the selected tests fail. The table goes to stdout and to
``build/mutation/planted.md``.

    python -m mutation.planted [--only NAME ...] [--root DIR]    (DIR: another checkout to judge)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from build_tools.errors import ToolkitError
from build_tools.served import classifier_names
from build_tools.spec import load_spec

logger = logging.getLogger(__name__)

# The layout's placement, as written before and after pixels.py was optimised (either may be checked out).
TOPS = ("top = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - new_h))",
        "top = min(max(round(SIDE / 2 - cy), 0), SIDE - new_h)")
LEFTS = ("left = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - new_w))",
         "left = min(max(round(SIDE / 2 - cx), 0), SIDE - new_w)")
FLIP = "if r.parity_disagreements:"
DRIFT = "if r.parity_max_abs_diff > "
PREPROCESS_TESTS = ["tests/unit/test_preprocess_geometry.py", "tests/integration/test_mnist.py"]
EVALUATE_TESTS = ["tests/unit/test_gate.py", "tests/integration/test_evaluate_gates.py",
                  "tests/integration/test_mnist.py"]
LOCUST_TESTS = ["tests/loadtest/test_locust_users.py"]


@dataclass(frozen=True)
class Edit:
    files: tuple[str, ...]  # the first file that holds ``old`` gets the edit (the code may have moved)
    old: str
    new: str
    every_file: bool = False  # apply to every file that holds ``old`` (a source and its committed copy)


@dataclass(frozen=True)
class Planted:
    name: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


def preprocess_files(root: Path) -> tuple[str, str]:
    """The pixel pipeline (pixels.py; model.py is the Triton glue) of the preprocessing step of the spec's
    classification ensemble, and its committed copy in the ngc repository, relative to `root`."""
    spec = load_spec(root / "deploy.yaml")
    step = spec.ensembles[classifier_names(spec).ensemble].steps[0].model
    sources = spec.models[step].version_sources
    folder = spec.resolve(sources[max(sources)]).resolve().relative_to(root.resolve())
    copy = Path(spec.flavors["ngc"].output) / step / "1" / "pixels.py"
    return (folder / "pixels.py").as_posix(), copy.as_posix()


def planted_bugs(root: Path) -> tuple[Planted, ...]:
    """The known bugs, with the showcase's file paths read from `root`'s spec."""
    pixels, pixels_copy = preprocess_files(root)
    return (
        Planted("preprocessing places the digit 1 px low (source only)",
                tuple(Edit((pixels,), top, top.replace("cy), 0", "cy) + 1, 0")) for top in TOPS),
                tuple(PREPROCESS_TESTS)),
        Planted("preprocessing places the digit 1 px low, committed copy updated too",
                tuple(Edit((pixels, pixels_copy), top, top.replace("cy), 0", "cy) + 1, 0"), every_file=True)
                      for top in TOPS),
                tuple(PREPROCESS_TESTS)),
        Planted("preprocessing 1 px right and 3 px low, committed copy updated too",
                tuple(Edit((pixels, pixels_copy), top, top.replace("cy), 0", "cy) + 3, 0"), every_file=True)
                      for top in TOPS)
                + tuple(Edit((pixels, pixels_copy), left, left.replace("cx), 0", "cx) + 1, 0"), every_file=True)
                        for left in LEFTS),
                tuple(PREPROCESS_TESTS)),
        Planted("ONNX runner returns answers in reversed order within a batch",
                (Edit(("build_tools/python_models/onnx_runner/model.py",), "for i, _, batch in members:",
                      "for i, _, batch in reversed(members):"),
                 # Since the grouping moved to batch_groups.py: the runner hands each group's rows back reversed.
                 Edit(("build_tools/python_models/onnx_runner/model.py",),
                      "for i, rows in batch_groups.split(members, results):",
                      "for i, rows in batch_groups.split(members[::-1], results):")),
                ("tests/unit/test_onnx_runner.py", "tests/integration/test_inference.py")),
        Planted("config.py never writes dynamic_batching",
                (Edit(("build_tools/config.py",), "    db = model.dynamic_batching\n    if db is None:\n        return",
                      "    db = model.dynamic_batching\n    if db is None or True:\n        return"),),
                ("tests/unit/test_config.py",)),
        Planted("linter stops flagging preferred > max batch size",
                (Edit(("build_tools/lint.py",), "if model.max_batch_size and size > model.max_batch_size:",
                      "if model.max_batch_size and size > model.max_batch_size and False:"),),
                ("tests/unit/test_lint.py",)),
        Planted("evaluate.py tolerates one top-1 flip",
                (Edit(("clients/gate.py", "clients/evaluate.py"), FLIP, "if r.parity_disagreements > 1:"),),
                tuple(EVALUATE_TESTS)),
        Planted("evaluate.py probability-drift tolerance x10^4",
                (Edit(("clients/gate.py",), "if r.parity_max_abs_diff > parity_atol:",
                      "if r.parity_max_abs_diff > parity_atol * 1e4:"),
                 Edit(("clients/evaluate.py",), "if r.parity_max_abs_diff > settings.parity_atol:",
                      "if r.parity_max_abs_diff > settings.parity_atol * 1e4:")),
                tuple(EVALUATE_TESTS)),
        Planted("evaluate.py accuracy gate 0.97 -> 0.92",
                (Edit(("clients/gate.py",), "MIN_ACCURACY = 0.97", "MIN_ACCURACY = 0.92"),
                 Edit(("clients/evaluate.py",), "min_accuracy: float = 0.97", "min_accuracy: float = 0.92"),
                 Edit(("clients/evaluate.py",), '"--min-accuracy", type=float, default=0.97',
                      '"--min-accuracy", type=float, default=0.92')),
                tuple(EVALUATE_TESTS)),
        Planted("harness skips wait_ready",
                (Edit(("build_tools/server.py",), "            self.wait_ready(self.options.startup_timeout_s)",
                      "            pass"),),
                ("tests/integration/test_harness.py",)),
        Planted("Locust user always reports success",
                (Edit(("loadtest/users.py",), "            exception=exception,\n", "            exception=None,\n"),),
                tuple(LOCUST_TESTS)),
        Planted("Locust user stops checking probabilities",
                (Edit(("loadtest/users.py",),
                      "            check_probabilities(probabilities, self.batch, labels if self.check_labels "
                      "else None)\n",
                      ""),),
                tuple(LOCUST_TESTS)),
        Planted("alert error ratio 5% -> 9%",
                (Edit(("compose/prometheus/alerts.yml",), ") > 0.05\n", ") > 0.09\n"),),
                ("tests/compose/test_promtool.py",)),
        Planted("alert p99 SLO 100 -> 140 ms",
                (Edit(("compose/prometheus/alerts.yml",), '{quantile="0.99"}) > 100000',
                      '{quantile="0.99"}) > 140000'),),
                ("tests/compose/test_promtool.py",)),
    )


def _copy_tree(root: Path, dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = root / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def plant(copy: Path, bug: Planted) -> None:
    for edit in bug.edits:
        holders = [f for f in edit.files if (copy / f).is_file() and edit.old in (copy / f).read_text()]
        if not holders:
            continue  # this alternative is not in this version of the code
        for f in holders if edit.every_file else holders[:1]:
            text = (copy / f).read_text()
            if text.count(edit.old) != 1:
                raise ToolkitError(f"{bug.name}: {edit.old!r} occurs {text.count(edit.old)} times in {f}")
            (copy / f).write_text(text.replace(edit.old, edit.new))
    if not any(
        any((copy / f).is_file() and edit.new in (copy / f).read_text() for f in edit.files) for edit in bug.edits
    ):
        raise ToolkitError(f"{bug.name}: nothing to plant in this checkout")


def run_one(root: Path, bug: Planted, python: str) -> tuple[bool, str, float]:
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        copy = Path(tmp)
        _copy_tree(root, copy)
        plant(copy, bug)
        tests = [t for t in bug.tests if (copy / t).exists()]
        started = time.monotonic()
        proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests], cwd=copy,
                              capture_output=True, text=True, timeout=1800)
        lines = proc.stdout.strip().splitlines()
        failed = next((ln.split(" - ")[0].removeprefix("FAILED ") for ln in lines if ln.startswith("FAILED ")), "")
        summary = f"{failed} ({lines[-1] if lines else ''})" if failed else (lines[-1] if lines else "")
        return proc.returncode != 0, summary, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mutation.planted", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="checkout to judge")
    p.add_argument("--only", action="append", help="substring of a planted bug's name (repeatable)")
    p.add_argument("--out", default="build/mutation/planted.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    rows = ["| planted bug | caught? | first failing test (pytest summary) |", "|---|---|---|"]
    missed = 0
    for bug in planted_bugs(Path(args.root)):
        if args.only and not any(o in bug.name for o in args.only):
            continue
        try:
            caught, summary, seconds = run_one(Path(args.root), bug, sys.executable)
        except ToolkitError as e:
            # Code that moved away from the audit's text is a gap in the audit, not a pass.
            missed += 1
            rows.append(f"| {bug.name} | **not planted** | {e} |")
            continue
        missed += not caught
        logger.info("%s: %s (%.0f s) %s", bug.name, "caught" if caught else "NOT CAUGHT", seconds, summary)
        rows.append(f"| {bug.name} | {'yes' if caught else '**no**'} | {summary} |")
    table = "\n".join(rows) + "\n"
    sys.stdout.write(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
