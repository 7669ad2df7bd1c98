"""Model lifecycle against the real embedded Triton in explicit model-control mode: the safety rules.

One server for the module, serving a fresh copy of the project's embedded repository (the steps change
it on disk); one SQLite registry. Tests run in file order, and each leaves the original champion
serving. The restart test comes last.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from build_tools.cli import main as triton_repo
from build_tools.errors import RolloutError
from build_tools.server import TritonServer
from build_tools.spec import DeploySpec
from clients.closed_loop import ClosedLoop
from control.db import connect
from control.registry import Registry
from control.rollout import ready_versions
from control.watcher import Watcher
from tests.support.explicit_server import MODEL, NAMES, ROUTER, explicit_env
from tests.support.explicit_server import ExplicitEnv as Env
from tests.support.onnx_models import perturbed_copy, slow_copy, unloadable_copy
from triton_api import TritonClient

pytestmark = pytest.mark.server
logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(project_spec: DeploySpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # Monitoring off (this module checks Triton's and the router's own counters): nothing is watched, so
    # the ensemble bypasses the router while one version takes all the traffic and the steps switch it.
    unwatched = project_spec.model_copy(
        update={"monitoring": project_spec.monitoring.model_copy(update={"enabled": False})})
    # No canary inferences: the tests count each version's inferences exactly.
    with explicit_env(unwatched, tmp_path_factory.mktemp("lifecycle"), canary_interval_s=0) as e:
        assert "model-repository" in e.server.options.restricted_apis
        yield e


@pytest.fixture(scope="module")
def holdout() -> np.ndarray:
    return np.load(ROOT / "models/mnist/holdout_digits.npz")["image"].astype(np.float32)


def _source() -> Path:
    return ROOT / "models/mnist/mnist_cnn.onnx"


def _metric(server: TritonServer, name: str, **labels: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _router_weights(client: TritonClient) -> dict[str, float]:
    return json.loads(client.model_config(ROUTER)["parameters"]["weights"]["string_value"])


def _ensemble_step(client: TritonClient) -> tuple[str, int]:
    """What the served ensemble's classifier step runs: (model, version)."""
    step = client.model_config(NAMES.ensemble)["ensemble_scheduling"]["step"][-1]
    return step["model_name"], int(step.get("model_version", -1))


def test_router_pins_a_version_when_the_request_parameter_names_it(env: Env, holdout: np.ndarray) -> None:
    r = env.rollout()
    r.ensure_registered()
    expected = ort.InferenceSession(str(_source())).run(None, {"image": holdout[:8]})[0]
    served = r.client.infer(ROUTER, {"image": holdout[:8]}, ["probabilities"], parameters={"version": "1"})
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-6)
    with pytest.raises(Exception, match="version 9"):
        r.client.infer(ROUTER, {"image": holdout[:1]}, ["probabilities"], parameters={"version": "9"})
    with pytest.raises(Exception, match="must be a version number, got 'x'"):
        r.client.infer(ROUTER, {"image": holdout[:1]}, ["probabilities"], parameters={"version": "x"})
    # The server keeps serving after both bad requests.
    assert r.client.infer(ROUTER, {"image": holdout[:1]}, ["probabilities"])["probabilities"].shape == (1, 10)
    r.client.close()


def test_stage_rejects_a_version_and_the_champion_keeps_serving_when_the_gate_fails(
    env: Env, holdout: np.ndarray
) -> None:
    r = env.rollout()
    bad = perturbed_copy(_source(), env.files / "bad.onnx", seed=3, scale=1.0)
    before = ready_versions(r.client, MODEL)
    with pytest.raises(RolloutError, match=r"rejected: gate: accuracy 0\.\d+ is below min_accuracy"):
        r.stage(bad, "a badly retrained model")
    rejected = r.registry.versions(MODEL)[-1]
    assert rejected.state == "rejected" and rejected.traffic_percent == 0
    assert rejected.gate["passed"] is False and rejected.gate["accuracy"] < 0.5
    assert ready_versions(r.client, MODEL) == before
    assert not (env.repository / MODEL / str(rejected.version)).exists()
    assert _router_weights(r.client) == {"1": 100.0}
    assert r.client.infer(ROUTER, {"image": holdout[:4]}, ["probabilities"])["probabilities"].shape == (4, 10)
    r.client.close()


def test_stage_rejects_a_version_and_the_champion_keeps_serving_when_triton_cannot_load_it(
    env: Env, holdout: np.ndarray
) -> None:
    # Without a gate (it would catch this file offline), the failure happens in Triton's load.
    lifecycle = env.spec.models[MODEL].lifecycle
    assert lifecycle is not None
    no_gate = env.spec.model_copy(update={"models": {
        **env.spec.models,
        MODEL: env.spec.models[MODEL].model_copy(update={"lifecycle": lifecycle.model_copy(update={"gate": None})}),
    }})
    r = env.rollout(no_gate)
    broken = unloadable_copy(_source(), env.files / "unloadable.onnx")
    with pytest.raises(RolloutError, match="rejected: load failed"):
        r.stage(broken, "a model Triton cannot load")
    rejected = r.registry.versions(MODEL)[-1]
    assert rejected.state == "rejected"
    assert ready_versions(r.client, MODEL) == {1}
    assert list(r.disk_target_config().version_policy.specific.versions) in ([1], [])
    assert not (env.repository / MODEL / str(rejected.version)).exists()
    assert r.client.infer(ROUTER, {"image": holdout[:4]}, ["probabilities"])["probabilities"].shape == (4, 10)
    direct = r.client.infer(MODEL, {"image": holdout[:4]}, ["probabilities"], version="1")
    assert direct["probabilities"].shape == (4, 10)
    r.client.close()


def test_canary_split_lands_within_3_sigma_and_ids_stick_when_weights_are_90_10(
    env: Env, holdout: np.ndarray
) -> None:
    r = env.rollout()
    candidate = perturbed_copy(_source(), env.files / "split.onnx", seed=11, scale=0.02)
    record, _ = r.stage(candidate, "split test")
    r.canary(record.version, 10, "split test")
    assert _router_weights(r.client) == {"1": 90.0, str(record.version): 10.0}
    references = {
        1: ort.InferenceSession(str(_source())).run(None, {"image": holdout})[0],
        record.version: ort.InferenceSession(str(candidate)).run(None, {"image": holdout})[0],
    }

    def served_by(i: int, request_id: str) -> int:
        x = holdout[i % len(holdout)][None]
        out = client_for().infer(ROUTER, {"image": x}, ["probabilities"], request_id=request_id)["probabilities"][0]
        # The version that answered is the one whose offline output this is.
        return min(references, key=lambda v: float(np.abs(references[v][i % len(holdout)] - out).max()))

    import threading

    local = threading.local()
    opened: list[TritonClient] = []

    def client_for() -> TritonClient:
        if not hasattr(local, "client"):
            local.client = TritonClient(env.server.http_url)
            opened.append(local.client)
        return local.client

    n = 2000
    before = _metric(env.server, "nv_inference_count", model=MODEL, version=str(record.version))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assigned = list(pool.map(lambda i: served_by(i, f"user-{i}"), range(n)))
        canary_share = sum(1 for v in assigned if v == record.version)
        # The same id lands on the same version every time.
        again = list(pool.map(lambda i: served_by(i, f"user-{i}"), list(range(200)) * 3))
    after = _metric(env.server, "nv_inference_count", model=MODEL, version=str(record.version))
    for c in opened:  # an open HTTP connection would hold up the server's shutdown
        c.close()
    sigma = math.sqrt(n * 0.1 * 0.9)
    print(f"90/10 split over {n} requests: canary got {canary_share} ({canary_share / n:.2%}), "
          f"expected {n * 0.1:.0f} +- {3 * sigma:.1f} (3 sigma)")
    assert abs(canary_share - n * 0.1) <= 3 * sigma
    assert again == assigned[:200] * 3
    # Triton's own per-version counter saw the same images (the router merges requests into one BLS
    # request per batch, so count inferences, not requests).
    assert after - before == canary_share + sum(1 for v in again if v == record.version)
    r.rollback("split test done")
    assert _router_weights(r.client) == {"1": 100.0}
    assert r.registry.get(MODEL, record.version).state == "rejected"
    r.client.close()


def test_lifecycle_steps_lose_no_request_when_a_closed_loop_load_runs(env: Env, holdout: np.ndarray) -> None:
    r = env.rollout()
    candidate = perturbed_copy(_source(), env.files / "load.onnx", seed=21, scale=0.02)
    png = (ROOT / "models/mnist/examples/digit_7.png").read_bytes()
    timings: dict[str, float] = {}
    steps: dict[str, tuple[str, int]] = {"built": _ensemble_step(r.client)}
    with ClosedLoop(env.server.http_url, env.server.grpc_url, NAMES, ROUTER, holdout[0], png, threads=4) as load:
        t = time.monotonic()
        record, _ = r.stage(candidate, "under load")
        timings["stage"] = time.monotonic() - t
        steps["stage"] = _ensemble_step(r.client)
        load.wait_for(50)
        timings["canary"] = r.canary(record.version, 25, "under load").seconds
        steps["canary"] = _ensemble_step(r.client)
        load.wait_for(50)
        timings["promote"] = r.promote(record.version, "under load").seconds
        steps["promote"] = _ensemble_step(r.client)
        load.wait_for(50)
        timings["rollback"] = r.rollback("under load: back to version 1").seconds
        steps["rollback"] = _ensemble_step(r.client)
        load.wait_for(50)
    counts = load.counts
    # Issue 12: the ensemble bypasses the router while one version takes all the traffic, and runs it
    # during the split; every switch (an ensemble reload) under the same load, with nothing lost.
    assert steps == {"built": (MODEL, 1), "stage": (MODEL, 1), "canary": (ROUTER, -1),
                     "promote": (MODEL, record.version), "rollback": (MODEL, 1)}
    print(f"closed-loop load (4 threads, HTTP+gRPC, router+ensemble): {counts.ok} answered, {counts.failed} failed; "
          + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    assert counts.failed == 0, counts.errors[:5]
    assert counts.ok > 200
    assert r.registry.champion(MODEL).version == 1  # type: ignore[union-attr]
    assert _router_weights(r.client) == {"1": 100.0}
    assert r.disagreements() == []
    r.client.close()


def test_watcher_rolls_back_the_canary_when_its_p99_is_worse_than_the_champions(
    env: Env, holdout: np.ndarray
) -> None:
    lifecycle = env.spec.models[MODEL].lifecycle
    assert lifecycle is not None
    fast_rule = lifecycle.auto_rollback.model_copy(update={"window_s": 4.0, "min_requests": 20})
    spec = env.spec.model_copy(update={"models": {
        **env.spec.models,
        MODEL: env.spec.models[MODEL].model_copy(
            update={"lifecycle": lifecycle.model_copy(update={"auto_rollback": fast_rule})}),
    }})
    r = env.rollout(spec)
    record, _ = r.stage(slow_copy(_source(), env.files / "slow.onnx"), "same answers, slower")
    r.canary(record.version, 50, "latency test")
    watcher = Watcher(r, env.server.metrics_url, interval_s=1.0)
    png = (ROOT / "models/mnist/examples/digit_7.png").read_bytes()
    with ClosedLoop(env.server.http_url, env.server.grpc_url, NAMES, ROUTER, holdout[0], png, threads=4) as load:
        verdict = watcher.run(max_seconds=90)
        load.wait_for(20)
    print(f"watcher: {verdict}; load {load.counts.ok} answered, {load.counts.failed} failed")
    assert verdict is not None and "p99" in verdict
    assert load.counts.failed == 0, load.counts.errors[:5]
    assert r.registry.get(MODEL, record.version).state == "rejected"
    assert _router_weights(r.client) == {"1": 100.0}
    last = r.registry.history(MODEL)[-2]  # the canary's own rollback entry, then the champion's
    assert last.actor == "watcher" and last.action == "rollback" and "p99" in last.reason
    r.client.close()


def test_watcher_rolls_back_the_canary_when_the_drift_monitor_finds_it_less_accurate_from_labels(
    env: Env, holdout: np.ndarray
) -> None:
    """The monitor's accuracy signal feeds the automatic rollback: a canary that passed a (deliberately
    lax) gate answers real requests worse than the champion; labels arrive; the watcher, reading the
    monitor's /metrics, sends it back. Predictions are recorded by this test client through the
    prediction-log contract (the server in this module runs without the log writer)."""
    from build_tools.spec import DriftSpec
    from control.db import Database
    from control.monitor import feedback
    from control.monitor.contract import PredictionRecord, write_predictions
    from control.monitor.drift import References
    from control.monitor.service import Monitor, MonitorServer

    lifecycle = env.spec.models[MODEL].lifecycle
    assert lifecycle is not None and lifecycle.gate is not None
    lax = lifecycle.gate.model_copy(update={"min_accuracy": 0.0, "max_accuracy_drop": 1.0, "min_agreement": 0.0})
    spec = env.spec.model_copy(update={"models": {
        **env.spec.models,
        MODEL: env.spec.models[MODEL].model_copy(update={"lifecycle": lifecycle.model_copy(update={"gate": lax})}),
    }})
    r = env.rollout(spec)
    record, _ = r.stage(perturbed_copy(_source(), env.files / "worse.onnx", seed=3, scale=1.0), "worse on traffic")
    r.canary(record.version, 10, "accuracy test")
    labels = np.load(ROOT / "models/mnist/holdout_labels.npy")
    db = Database(env.db_url)
    feedback.migrate(db)
    now = time.time()
    for version in (1, record.version):
        # Real answers of each version through the router (pinned), 300 held-out digits each.
        probs = np.concatenate([
            r.client.infer(ROUTER, {"image": holdout[i:i + 100]}, ["probabilities"],
                           parameters={"version": str(version)})["probabilities"] for i in range(0, 300, 100)])
        write_predictions(db, [
            PredictionRecord(f"acc-v{version}-{i}", now + i * 1e-3, MODEL, str(version), int(p.argmax()),
                             float(p.max())) for i, p in enumerate(probs)])
        feedback.ingest(db, [feedback.Label(f"acc-v{version}-{i}", int(labels[i])) for i in range(300)], "test")
    monitor = Monitor(db, References([env.repository]), DriftSpec(min_labels=100, interval_s=0.5))
    with MonitorServer(monitor) as ms:
        monitor.update()
        watcher = Watcher(r, env.server.metrics_url, interval_s=0.5, monitor_url=ms.url + "/metrics")
        verdict = watcher.step()
    db.close()
    print(f"watcher: {verdict}")
    assert verdict is not None and "the intervals separate" in verdict and "drift monitor" in verdict
    assert r.registry.get(MODEL, record.version).state == "rejected"
    assert _router_weights(r.client) == {"1": 100.0}
    last = r.registry.history(MODEL)[-2]
    assert last.actor == "watcher" and last.action == "rollback" and "accuracy from labels" in last.reason
    r.client.close()


def test_cli_verbs_print_what_they_did_and_exit_nonzero_when_refused(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env.rollout().ensure_registered()
    common = ["--url", env.server.http_url, "--repository", str(env.repository), "--db", env.db_url,
              "--spec", str(ROOT / "deploy.yaml"), "--drain", "0.5"]
    # Without the admin key the repository API refuses, over both protocols, and the verb says what to set.
    monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
    assert triton_repo(["versions", MODEL, *common]) == 1
    err = capsys.readouterr().err
    assert "is restricted" in err and "set $TRITON_ADMIN_KEY" in err, err
    monkeypatch.setenv("TRITON_ADMIN_KEY", "not-the-key")
    grpc_common = [a if a != env.server.http_url else env.server.grpc_url for a in common]
    assert triton_repo(["versions", MODEL, "--protocol", "grpc", *grpc_common]) == 1
    assert "set $TRITON_ADMIN_KEY" in capsys.readouterr().err
    # The harness drew the key at random; it hands it to its callers.
    monkeypatch.setenv("TRITON_ADMIN_KEY", env.server.admin_key)
    assert triton_repo(["versions", MODEL, *common]) == 0
    table = capsys.readouterr().out
    assert "champion" in table
    assert triton_repo(["versions", MODEL, "--json", *common]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {v["version"]: v["state"] for v in listed}[1] == "champion"
    assert next(v for v in listed if v["version"] == 1)["loaded"] is True
    assert triton_repo(["canary", MODEL, "1", "--percent", "10", *common]) == 1
    assert "version 1 is champion; only a staged or canary version can take canary traffic" in capsys.readouterr().err
    assert triton_repo(["promote", MODEL, "999", *common]) == 1
    assert "version 999 is not in the registry" in capsys.readouterr().err
    assert triton_repo(["rollback", MODEL, *common]) == 1
    assert "no canary and no previous champion" in capsys.readouterr().err
    candidate = perturbed_copy(_source(), env.files / "cli.onnx", seed=31, scale=0.02)
    assert triton_repo(["stage", MODEL, str(candidate), "--reason", "from the CLI", *common]) == 0
    out = capsys.readouterr().out
    assert "gate: accuracy" in out and "as staged" in out
    staged = max(v.version for v in Registry(connect(env.db_url)).versions(MODEL))
    assert triton_repo(["canary", MODEL, str(staged), "--percent", "20", "--protocol", "grpc", *grpc_common]) == 0
    assert "20%" in capsys.readouterr().out
    # The watcher verb: a canary with no traffic in the window is left alone.
    assert triton_repo(["watch", MODEL, "--metrics-url", env.server.metrics_url, "--interval", "0.5",
                        "--max-seconds", "2", *common]) == 0
    assert "watch: no rollback needed" in capsys.readouterr().out


def test_registry_and_served_versions_agree_when_the_server_restarts(env: Env, holdout: np.ndarray) -> None:
    r = env.rollout()
    r.ensure_registered()
    state_before = {v.version: (v.state, v.traffic_percent) for v in r.registry.versions(MODEL)}
    weights_before = _router_weights(r.client)
    ready_before = ready_versions(r.client, MODEL)
    r.client.close()
    env.restart()
    r = env.rollout()
    assert r.disagreements() == []
    assert {v.version: (v.state, v.traffic_percent) for v in r.registry.versions(MODEL)} == state_before
    assert _router_weights(r.client) == weights_before
    assert ready_versions(r.client, MODEL) == ready_before
    assert r.client.infer(ROUTER, {"image": holdout[:2]}, ["probabilities"])["probabilities"].shape == (2, 10)
    r.client.close()
