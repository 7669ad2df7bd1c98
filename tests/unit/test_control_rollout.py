"""Rollout checks that need no server: refusals at construction, and one step at a time per repository."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from build_tools.build import build_repositories
from build_tools.errors import RolloutError
from build_tools.healer import repository_locked
from build_tools.spec import DeploySpec, FlavorSpec, load_spec
from control.db import Database
from control.registry import Registry
from control.rollout import Rollout
from triton_api import TritonClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec() -> DeploySpec:
    return load_spec(ROOT / "deploy.yaml")


def _rollout(spec: DeploySpec, repository: Path, model: str = "mnist_classifier") -> Rollout:
    # The client only connects when a step talks to the server; nothing here does.
    return Rollout(spec, model, Registry(Database(":memory:")), TritonClient("127.0.0.1:1"), repository)


def test_rollout_refuses_a_model_when_it_has_no_lifecycle(spec: DeploySpec, tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match=r"models\.mnist_preprocess\.lifecycle is not set.*\['mnist_classifier'\]"):
        _rollout(spec, tmp_path, "mnist_preprocess")


def test_rollout_refuses_a_folder_when_it_is_not_the_served_repository(spec: DeploySpec, tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match="--repository must be the repository the server serves"):
        _rollout(spec, tmp_path)


def test_lifecycle_steps_run_one_at_a_time_when_two_start_together(spec: DeploySpec, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repo))}}), ["embedded"])
    first, second = _rollout(spec, repo), _rollout(spec, repo)
    held = threading.Event()
    events: list[str] = []

    def hold() -> None:
        with first._repository_lock():
            events.append("first in")
            held.set()
            time.sleep(0.6)
            events.append("first out")

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    with second._repository_lock():
        events.append("second in")
    t.join()
    assert events == ["first in", "first out", "second in"]


def test_a_heal_waits_for_the_lifecycle_step_when_one_holds_the_repository(spec: DeploySpec, tmp_path: Path) -> None:
    # The stub watchdog's reload (explicit mode) puts the served config back: run inside a lifecycle
    # step it could undo the step's router weights, so it takes the step's lock on the repository.
    repo = tmp_path / "repo"
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repo))}}), ["embedded"])
    step = _rollout(spec, repo)
    events: list[str] = []
    held = threading.Event()

    def hold() -> None:
        with step._repository_lock():
            events.append("step in")
            held.set()
            time.sleep(0.6)
            events.append("step out")

    heal = repository_locked(lambda model: events.append(f"reload {model}") is None, [repo], wait_s=10)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    assert heal("mnist_classifier") is True
    t.join()
    assert events == ["step in", "step out", "reload mnist_classifier"]
    # Released after the heal: the next step gets the lock at once.
    with step._repository_lock():
        events.append("next step in")
    # A step that never ends delays the heal only by wait_s.
    with step._repository_lock():
        started = time.monotonic()
        assert repository_locked(lambda model: True, [repo], wait_s=0.3)("mnist_classifier") is True
        assert 0.3 <= time.monotonic() - started < 3


def test_rollout_points_the_ensemble_step_at_the_one_version_when_it_takes_all_the_traffic(
    spec: DeploySpec, tmp_path: Path
) -> None:
    # Monitoring off: nothing is watched, so the router may leave the ensemble's path (build_tools.config).
    spec = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"enabled": False})})
    repo = tmp_path / "repo"
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repo))}}), ["embedded"])
    r = _rollout(spec, repo)
    assert r.bypass and r.routed_steps() == [("mnist", 1)]
    assert r.ensemble_step_for({1: 100.0}) == ("mnist_classifier", 1)
    assert r.ensemble_step_for({3: 100.0}) == ("mnist_classifier", 3)
    assert r.ensemble_step_for({1: 90.0, 3: 10.0}) == ("mnist_classifier_router", -1)
    # With the bypass off in the spec, the router is always in the ensemble's path.
    lifecycle = spec.models["mnist_classifier"].lifecycle
    assert lifecycle is not None
    model = spec.models["mnist_classifier"].model_copy(
        update={"lifecycle": lifecycle.model_copy(update={"bypass_router": False})})
    off = spec.model_copy(update={"models": {**spec.models, "mnist_classifier": model}})
    repo_off = tmp_path / "repo_off"
    build_repositories(off.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repo_off))}}), ["embedded"])
    r_off = _rollout(off, repo_off)
    assert not r_off.bypass and r_off.routed_steps() == [("mnist", 1)]
    assert r_off.ensemble_step_for({1: 100.0}) == ("mnist_classifier_router", -1)
