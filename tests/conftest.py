"""Fixtures shared by every test: one real embedded Triton server per session, serving

* the project's embedded repository, built from deploy.yaml into a temporary folder, and
* a repository of small test models (tests/support/onnx_models.py) covering what MNIST does not.

The server starts on first use only, so unit tests never pay for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from build_tools.build import build_repositories
from build_tools.server import ServerOptions, TritonServer
from build_tools.spec import DeploySpec, FlavorSpec, load_spec, parse_spec
from tests.support.onnx_models import models_spec

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def project_spec() -> DeploySpec:
    return load_spec(ROOT / "deploy.yaml")


@pytest.fixture(scope="session")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="session")
def project_repository(project_spec: DeploySpec, served_root: Path) -> Path:
    """The project's embedded repository, built from deploy.yaml (without touching build/)."""
    out = served_root / "project_repository"
    spec = project_spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(out))}})
    build_repositories(spec, ["embedded"])
    return out


@pytest.fixture(scope="session")
def test_models_spec(served_root: Path) -> DeploySpec:
    data = models_spec(
        served_root / "test_models", served_root / "test_repository", ROOT / "models/mnist/mnist_cnn.onnx"
    )
    return parse_spec(data, served_root)


@pytest.fixture(scope="session")
def test_repository(test_models_spec: DeploySpec) -> Path:
    build_repositories(test_models_spec, ["embedded"])
    return test_models_spec.resolve(test_models_spec.flavors["embedded"].output)


@pytest.fixture(scope="session")
def embedded_server(
    project_repository: Path, test_repository: Path, served_root: Path
) -> Iterator[TritonServer]:
    """One real tritonserver for the whole session; stopped (and its stubs with it) at the end."""
    server = TritonServer(
        ServerOptions(
            model_repositories=[project_repository, test_repository],
            log_file=served_root / "tritonserver.log",
            workdir=served_root / "server",
        )
    )
    server.start()
    logger.info("embedded server up in %.1f s (log %s)", server.startup_seconds, server.log_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL (the Debian package) for the session, on its own folder and port."""
    from tests.support.postgres import find_bindir, running_postgres

    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package `postgresql`; .ci/run installs it)")
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on both backends: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    import uuid

    import psycopg

    base = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"project: {ROOT}"]
