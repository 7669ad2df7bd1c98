"""The ngc flavor's copy of the watching code (`tdk_monitoring/` in the router's and the preprocessing
step's version folders): complete, importable with numpy and the standard library only (what the
official 24.10 image has for its stubs), and able to write the prediction log through its own sink.

The py310 CI phase (.ci/py310-repo-builder.sh) runs this file on Python 3.10, the image's Python.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from build_tools.config import MONITORING_VENDOR_DIR, MONITORING_VENDOR_MODULES, read_config
from build_tools.runner_params import MONITOR_PARAM_ENABLED

ROOT = Path(__file__).resolve().parents[2]
NGC = ROOT / "model_repository"
WATCHING = ("mnist_classifier_router", "mnist_preprocess")
# Imported inside a function, only for what the image cannot do anyway (a PostgreSQL log).
LAZY_OPTIONAL = {"psycopg"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(top-level imports, imports inside functions) of a module, as dotted names."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    nested: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if not names:
            continue
        where = top if node in tree.body or any(node in getattr(b, "body", []) for b in tree.body
                                                if isinstance(b, (ast.If, ast.Try))) else nested
        where.update(names)
    return top, nested


def test_vendored_modules_import_only_each_other_numpy_and_stdlib_when_parsed() -> None:
    vendored = {m.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for m in MONITORING_VENDOR_MODULES}
    for module in MONITORING_VENDOR_MODULES:
        top, nested = _imports(ROOT / module)
        for name in top | nested:
            root = name.split(".")[0]
            if root in ("build_tools", "control"):
                assert name in vendored, f"{module} imports {name}, which is not copied (MONITORING_VENDOR_MODULES)"
            elif name in nested and root in LAZY_OPTIONAL:
                continue
            else:
                assert root == "numpy" or root in sys.stdlib_module_names or root == "__future__", (
                    f"{module} imports {name}: the official image has numpy and the standard library only")


@pytest.mark.parametrize("model", WATCHING)
def test_ngc_model_carries_the_watching_code_when_monitoring_is_on(model: str) -> None:
    config = read_config(NGC / model / "config.pbtxt")
    assert config.parameters[MONITOR_PARAM_ENABLED].string_value == "true"
    for module in MONITORING_VENDOR_MODULES:
        copy = NGC / model / "1" / MONITORING_VENDOR_DIR / module
        assert copy.is_file() and copy.read_bytes() == (ROOT / module).read_bytes(), f"{copy} stale: make build-repo"


@pytest.mark.parametrize("source", ["build_tools/python_models/router/model.py", "models/mnist/preprocess/model.py"])
def test_model_source_looks_for_the_vendored_folder_when_loaded(source: str) -> None:
    # The models cannot import the constant (it lives in the package they may not have).
    assert f'"{MONITORING_VENDOR_DIR}"' in (ROOT / source).read_text()


def test_vendored_copy_writes_the_log_when_only_numpy_and_stdlib_are_importable(tmp_path: Path) -> None:
    import numpy

    only_numpy = tmp_path / "site"
    only_numpy.mkdir()
    numpy_dir = Path(numpy.__file__).parent
    for entry in numpy_dir.parent.iterdir():
        if entry.name == "numpy" or entry.name.startswith("numpy.libs") or entry.name.startswith("numpy-"):
            (only_numpy / entry.name).symlink_to(entry)
    vendored = NGC / "mnist_classifier_router" / "1" / MONITORING_VENDOR_DIR
    db = tmp_path / "log.db"
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(vendored)!r}, {str(only_numpy)!r}]
        for banned in ("pydantic", "yaml", "tritonclient", "psycopg", "triton_api"):
            try:
                __import__(banned)
            except ImportError:
                pass
            else:
                raise SystemExit("not isolated: " + banned + " is importable")
        import numpy as np
        import control.monitor.serving
        from control.monitor.log_writer import LogBatch, PredictionLogWriter
        assert control.monitor.serving.__file__.startswith({str(vendored)!r}), control.monitor.serving.__file__
        writer = PredictionLogWriter("sqlite:///{db}", "m", tick_s=0.05)
        batch = LogBatch("m", "1", ["a", "b"], np.array([1.0, 2.0]), np.array([3, 4]), np.array([0.9, 0.8]),
                         ("mean_intensity",), np.array([[0.1], [0.2]]), {{1: b"xy"}})
        assert writer.offer_batch(batch) == 2
        assert writer.flush(30)
        writer.close()
        print(writer.written, writer.failed)
    """)
    # -I -S: no site-packages, no PYTHONPATH, no current folder: only the copy, numpy and the stdlib. The
    # sink process it starts is a plain `python -m` (as in the stub): it gets numpy through PYTHONPATH. Before
    # 3.11, -S also leaves sys.prefix at the base interpreter, so the sink may run outside any virtualenv.
    env = {**os.environ, "PYTHONPATH": str(only_numpy)}
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "0"]
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT request_id, predicted, top_prob, stats, input FROM predictions ORDER BY id").fetchall()
    assert rows == [("a", 3, 0.9, '{"mean_intensity": 0.1}', None), ("b", 4, 0.8, '{"mean_intensity": 0.2}', b"xy")]
