"""`triton-repo finetune` against the real embedded Triton (explicit model control) and a real database.

The shifted stream: training-split digits written with a thicker pen (grey-level dilation, radius 2),
which the champion reads much worse. They are sent through the router, the served answers and the
model-ready inputs go into the prediction log through the monitoring contract (the test client writes
them: the same rows the serving-side writer produces), and their true labels arrive in `labels`.
Fine-tuning must then produce a version that recovers the thicker-pen held-out digits (never trained
on), keeps the original held-out set within 1 point, passes both gates, is staged and takes a canary
share; the same job on shuffled labels must be rejected with its numbers.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

from build_tools.spec import DeploySpec
from clients.datasets import mnist_train
from control.db import connect
from control.monitor import contract
from control.registry import Registry
from control.rollout import Rollout, ready_versions
from tests.support.explicit_server import MODEL, ROUTER, explicit_env
from tests.support.explicit_server import ExplicitEnv as Env
from triton_api import TritonClient

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
FEEDBACK = 500  # labelled requests: 350 to train on, 150 held back for the gate
SHIFTED = "thicker-pen held-out"


def _mnist_adapter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mnist_finetune_adapter", ROOT / "models/mnist/finetune.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(project_spec: DeploySpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with explicit_env(project_spec, tmp_path_factory.mktemp("finetune")) as e:
        yield e


@pytest.fixture(scope="module")
def shifted() -> dict[str, np.ndarray]:
    """Thicker-pen digits: feedback from the training split, evaluation from the held-out split."""
    adapter = _mnist_adapter()
    train = mnist_train()
    pick = np.random.default_rng(13).choice(len(train), FEEDBACK, replace=False)
    holdout = np.load(ROOT / "models/mnist/holdout_digits.npz")["image"]
    return {
        "feedback": adapter.thicker_pen(train.images[pick][:, None]), "feedback_labels": train.labels[pick],
        "holdout": adapter.thicker_pen(holdout), "holdout_labels": np.load(ROOT / "models/mnist/holdout_labels.npy"),
    }


def _serve_and_log(env: Env, db_url: str, images: np.ndarray, labels: np.ndarray) -> float:
    """Each image through the router with its own request id; the answer and the input go into the
    prediction log, the true label into `labels`. Returns the served accuracy."""
    # One client per thread: a tritonclient HTTP client is not safe to share between threads.
    local = threading.local()
    opened: list[TritonClient] = []
    started = time.time()

    def one(i: int) -> contract.PredictionRecord:
        if not hasattr(local, "client"):
            local.client = TritonClient(env.server.http_url)
            opened.append(local.client)
        rid = f"ft-{time.monotonic_ns()}-{i}"
        probs = local.client.infer(ROUTER, {"image": images[i:i + 1].astype(np.float32)}, ["probabilities"],
                            request_id=rid)["probabilities"][0]
        # Times in sending order (not completion order), so the seeded split is the same on every run.
        return contract.PredictionRecord(rid, started + i * 1e-3, MODEL, "1", int(probs.argmax()), float(probs.max()),
                                         input=images[i].tobytes())

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        records = list(pool.map(one, range(len(images))))
    for c in opened:
        c.close()
    with connect(db_url) as db:
        contract.migrate(db)
        contract.write_predictions(db, records)
        with db.transaction():
            for r, label in zip(records, labels):
                db.execute("INSERT INTO labels (request_id, label, ts, source) VALUES (?, ?, ?, ?)",
                           (r.request_id, int(label), time.time() + 60, "test"))
    return float(np.mean([r.predicted == int(y) for r, y in zip(records, labels)]))


def _accuracy_through_router(env: Env, images: np.ndarray, labels: np.ndarray, version: int | None) -> float:
    client = env.client()
    params = {"version": str(version)} if version is not None else None
    preds = np.concatenate([
        client.infer(ROUTER, {"image": images[i:i + 100].astype(np.float32)}, ["probabilities"],
                     parameters=params)["probabilities"].argmax(-1)
        for i in range(0, len(images), 100)
    ])
    client.close()
    return float((preds == labels).mean())


def test_finetune_stages_a_canary_that_recovers_the_shifted_stream_when_feedback_is_thicker_pen(
    env: Env, database_url: str, shifted: dict[str, np.ndarray], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = _serve_and_log(env, database_url, shifted["feedback"], shifted["feedback_labels"])
    assert served < 0.75, f"the champion should read thicker-pen digits measurably worse; served accuracy {served}"
    np.savez(tmp_path / "shifted_holdout.npz", images=shifted["holdout"], labels=shifted["holdout_labels"])
    monkeypatch.setenv("TRITON_ADMIN_KEY", env.server.admin_key)

    started = time.monotonic()
    rc = env.cli("finetune", MODEL, "--out", str(tmp_path / "out"), "--eval",
                 f"{SHIFTED}={tmp_path / 'shifted_holdout.npz'}", db=database_url)
    out, err = capsys.readouterr()
    assert rc == 0, err
    print(out, f"finetune took {time.monotonic() - started:.1f} s", sep="\n")

    (report_file,) = (tmp_path / "out").glob(f"{MODEL}-*/finetune.json")
    report = json.loads(report_file.read_text())
    assert (report_file.parent / "finetune.png").stat().st_size > 10_000
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["held-back feedback"]["samples"] == round(FEEDBACK * 0.3)
    assert rows[SHIFTED]["champion_accuracy"] < 0.7
    assert rows[SHIFTED]["candidate_accuracy"] >= 0.85, rows
    assert rows["held-out set"]["change"] >= -0.01, rows
    assert report["export_check"]["max_abs_diff"] <= 1e-4 and report["export_check"]["top1_disagreements"] == 0

    registry = Registry(connect(database_url))
    record = registry.versions(MODEL)[-1]
    assert (record.state, record.traffic_percent) == ("canary", 10.0)
    assert record.gate["passed"] is True and record.gate["finetune"]["passed"] is True
    assert record.gate["finetune"]["feedback_accuracy"] == rows["held-back feedback"]["candidate_accuracy"]
    assert f"registered {MODEL} version {record.version} as staged" in out and "10%" in out

    # Its own reference.json (the drift monitor's baseline once it serves), not the champion's copied one.
    ref = contract.Reference.read(env.repository / MODEL / str(record.version))
    assert ref.version == str(record.version) and ref.n == 500
    assert ref.accuracy == pytest.approx(rows["held-out set"]["candidate_accuracy"])
    assert "reference: reference.json from 500 held-out samples" in out

    # Served through the router, pinned to the new version: the offline figure, and the same answers.
    candidate = env.repository / MODEL / str(record.version) / "model.onnx"
    offline = ort.InferenceSession(str(candidate)).run(None, {"image": shifted["holdout"].astype(np.float32)})[0]
    pinned = _accuracy_through_router(env, shifted["holdout"], shifted["holdout_labels"], record.version)
    assert pinned == pytest.approx(float((offline.argmax(-1) == shifted["holdout_labels"]).mean()))
    assert pinned == pytest.approx(rows[SHIFTED]["candidate_accuracy"])

    # Promote: unpinned traffic recovers; then roll back so the module's next test starts from version 1.
    client = env.client()
    rollout = Rollout(env.spec, MODEL, registry, client, env.repository, actor="test", drain_s=1.0)
    rollout.promote(record.version, "recovered the shifted stream")
    assert _accuracy_through_router(env, shifted["holdout"], shifted["holdout_labels"], None) >= 0.85
    rollout.rollback("test cleanup")
    assert ready_versions(client, MODEL) == {1}
    client.close()


def test_finetune_rejects_with_both_numbers_and_stages_nothing_when_feedback_labels_are_shuffled(
    env: Env, shifted: dict[str, np.ndarray], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'registry.db'}"
    shuffled = np.random.default_rng(0).permutation(shifted["feedback_labels"])
    np.savez(tmp_path / "feedback.npz", images=shifted["feedback"], labels=shuffled)
    monkeypatch.setenv("TRITON_ADMIN_KEY", env.server.admin_key)
    client = env.client()
    before = ready_versions(client, MODEL)

    rc = env.cli("finetune", MODEL, "--feedback", str(tmp_path / "feedback.npz"), "--out", str(tmp_path / "out"),
                 "--steps", "200", db=db_url)
    out, err = capsys.readouterr()
    assert rc == 1, out
    # stderr: the training progress lines, then the error as one line, last.
    lines = err.splitlines()
    assert lines[-1].startswith(f"triton-repo: error: {MODEL} version "), err
    assert not [line for line in lines[:-1] if "error" in line], err
    assert any(line.startswith(f"fine-tune {MODEL}: step 200/200") for line in lines), err
    err = lines[-1]
    assert "rejected: finetune gate:" in err
    for part in ("does not beat the champion's", "held-back feedback (150):", "needs > 0.0000", "McNemar p",
                 "held-out set (500):", "allowed <= 0.0100", "version 1 keeps serving"):
        assert part in err, (part, err)

    record = Registry(connect(db_url)).versions(MODEL)[-1]
    assert record.state == "rejected" and record.traffic_percent == 0
    figures = record.gate["finetune"]
    assert figures["passed"] is False and figures["feedback_samples"] == 150
    assert figures["feedback_accuracy"] - figures["champion_feedback_accuracy"] <= 0
    assert ready_versions(client, MODEL) == before
    assert not (env.repository / MODEL / str(record.version)).exists()
    client.close()
