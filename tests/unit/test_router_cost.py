"""The router-cost benchmark's repository (loadtest/router_cost.py): built from the spec, with the router's
side input wired only where the router runs."""

from __future__ import annotations

from pathlib import Path

from build_tools import config as cfg
from build_tools.interfaces import router_original_size_input
from build_tools.spec import load_spec
from loadtest import ab_cost, router_cost

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "deploy.yaml"


def test_router_cost_build_writes_direct_and_routed_ensembles_when_the_router_has_a_side_input(
    tmp_path: Path,
) -> None:
    spec = load_spec(SPEC)
    paths = router_cost.paths_of(spec)
    side = router_original_size_input(spec, paths.classifier)
    assert side is not None, "the spec's router has no side input: this test would prove nothing"
    # build() lints the repository: a direct step left with the router's input fails there.
    repo = router_cost.build(tmp_path / "repo", SPEC, paths)
    direct = cfg.read_config(repo / paths.direct_ensemble / "config.pbtxt").ensemble_scheduling.step
    routed = cfg.read_config(repo / paths.routed_ensemble / "config.pbtxt").ensemble_scheduling.step
    assert [s.model_name for s in direct][-1] == paths.classifier
    assert [s.model_name for s in routed][-1] == paths.router
    assert all(side not in s.input_map and side not in s.output_map for s in direct)
    assert side in routed[-1].input_map
    assert any(routed[-1].input_map[side] in s.output_map.values() for s in routed[:-1])


def test_interleaved_puts_every_side_in_every_position_when_run_for_as_many_rounds_as_sides() -> None:
    sides = ["direct", "deployed", "routed"]
    orders = [ab_cost.interleaved(sides, r) for r in range(1, 4)]
    assert all(sorted(o) == sorted(sides) for o in orders)
    for position in range(3):
        assert sorted(o[position] for o in orders) == sorted(sides), orders
    # Two sides: as given, then reversed, round after round.
    assert [ab_cost.interleaved(["a", "b"], r) for r in (1, 2, 3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
