"""README.md matches the code: its spec block is deploy.yaml as committed, its layout section names every
module of the project's packages, and every module says its job in a docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("build_tools", "clients", "control", "loadtest", "mutation", "tools", "triton_api")


def _readme_part(start: str, end: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index(start):text.index(end)]


def _modules(package: str) -> list[Path]:
    return [p for p in sorted((ROOT / package).rglob("*.py")) if "__pycache__" not in p.parts]


def test_readme_spec_block_equals_deploy_yaml_when_read() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("```yaml\n", text.index("The complete project spec, as committed:")) + len("```yaml\n")
    block = text[start:text.index("```\n", start)]
    assert block == (ROOT / "deploy.yaml").read_text()


@pytest.mark.parametrize("package", PACKAGES)
def test_readme_layout_names_every_module_when_the_package_is_scanned(package: str) -> None:
    layout = _readme_part("## Layout", "## The spec")
    assert f"{package}/" in layout
    missing = [p.relative_to(ROOT).as_posix() for p in _modules(package)
               if p.name != "__init__.py" and p.name not in layout]
    assert not missing, f"README.md's layout section does not name: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_module_docstring_says_its_job_when_the_package_is_scanned(package: str) -> None:
    bare = [p.relative_to(ROOT).as_posix() for p in _modules(package)
            if p.stat().st_size and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not bare, f"modules without a docstring: {bare}"
