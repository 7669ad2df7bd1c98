"""One embedded Triton in explicit model-control mode over a fresh copy of the project's embedded repository,
for the lifecycle tests (the steps change the repository on disk, so it cannot be the session's server).

The spec's `server:` settings apply: the repository API is restricted and the harness draws a random admin
key per start (no $TRITON_ADMIN_KEY, as `make serve` does), which the clients here send along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from build_tools.build import build_repositories
from build_tools.cli import main as triton_repo
from build_tools.served import load_classifier_names
from build_tools.server import ServerOptions, TritonServer
from build_tools.spec import DeploySpec, FlavorSpec, load_spec
from control.db import connect
from control.registry import Registry
from control.rollout import Rollout
from triton_api import TritonClient

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "deploy.yaml"
NAMES = load_classifier_names(SPEC_PATH)
MODEL = NAMES.classifier
ROUTER = load_spec(SPEC_PATH).models[MODEL].router_name(MODEL) or f"{MODEL}_router"


@dataclass
class ExplicitEnv:
    """The server, its repository (a copy the tests may change), a SQLite registry and a scratch folder."""

    spec: DeploySpec
    repository: Path
    db_url: str
    server: TritonServer
    files: Path

    def client(self) -> TritonClient:
        """A client with the admin key (load, unload and the repository index are restricted)."""
        return TritonClient(self.server.http_url, timeout_s=300, headers=self.server.admin_headers)

    def rollout(self, spec: DeploySpec | None = None, actor: str = "test") -> Rollout:
        return Rollout(spec or self.spec, MODEL, Registry(connect(self.db_url)), self.client(), self.repository,
                       actor=actor, drain_s=1.0)

    def cli(self, *args: str, db: str | None = None) -> int:
        """`triton-repo ARGS` against this server, repository and database (default: the env's registry)."""
        return triton_repo([*args, "--db", db or self.db_url, "--url", self.server.http_url, "--spec",
                            str(SPEC_PATH), "--repository", str(self.repository), "--drain", "1"])

    def restart(self) -> None:
        options = self.server.options
        self.server.stop()
        self.server = TritonServer(options)
        self.server.start()


@contextmanager
def explicit_env(spec: DeploySpec, root: Path, **options: Any) -> Iterator[ExplicitEnv]:
    """Build the embedded repository into `root`, start the server (extra ServerOptions in `options`),
    stop it on exit."""
    repository = root / "repository"
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repository))}}),
                       ["embedded"])
    # No $TRITON_ADMIN_KEY while the env lives (restarts included): each start draws its own key.
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_ADMIN_KEY", raising=False)
        server = TritonServer(ServerOptions.from_spec(
            spec.server, model_repositories=[repository], model_control_explicit=True,
            log_file=root / "tritonserver.log", workdir=root / "server", **options,
        ))
        server.start()
        files = root / "files"
        files.mkdir()
        env = ExplicitEnv(spec, repository, f"sqlite:///{root / 'registry.db'}", server, files)
        try:
            yield env
        finally:
            env.server.stop()
