"""Fine-tuning without a server: the fine-tune gate's arithmetic, labelled feedback from the prediction log
(SQLite and a real PostgreSQL) and from a file, the spec section, and the adapter contract."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from build_tools.errors import FinetuneError, RolloutError, SpecError
from build_tools.spec import FinetuneSpec, load_spec, parse_spec
from control import feedback as fb
from control.db import connect
from control.finetune import load_adapter
from control.gate import judge_finetune, mcnemar_p_value
from control.monitor.contract import PredictionRecord, write_predictions

ROOT = Path(__file__).resolve().parents[2]
RULES = FinetuneSpec(adapter="models/mnist/finetune.py")


def _paired(n: int, champion_right: int, candidate_right: int, fixed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness arrays over n samples with the given totals; `fixed` = candidate right, champion wrong."""
    broken = champion_right - (candidate_right - fixed)
    both = champion_right - broken
    assert min(both, broken, fixed) >= 0 and both + broken + fixed <= n
    champion = np.zeros(n, bool)
    candidate = np.zeros(n, bool)
    champion[:both] = candidate[:both] = True
    champion[both:both + broken] = True
    candidate[both + broken:both + broken + fixed] = True
    return candidate, champion


def test_mcnemar_p_value_is_the_binomial_tail_when_counts_are_small() -> None:
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_p_value(3, 1) == pytest.approx(5 / 16)
    assert mcnemar_p_value(0, 4) == 1.0
    # Large counts stay exact and tiny (no overflow): 60 fixed, 2 broken.
    assert 0 < mcnemar_p_value(60, 2) < 1e-14
    assert mcnemar_p_value(60, 2) == pytest.approx(sum(math.comb(62, k) for k in range(60, 63)) / 2**62)


def test_finetune_gate_passes_when_the_candidate_beats_the_champion_and_loses_exactly_one_point() -> None:
    cand_fb, champ_fb = _paired(200, champion_right=120, candidate_right=180, fixed=62)
    cand_ho, champ_ho = _paired(500, champion_right=493, candidate_right=488, fixed=0)  # 5 of 500 = 1 point
    result = judge_finetune(cand_fb, champ_fb, cand_ho, champ_ho, RULES)
    assert result.passed, result.reasons
    assert (result.feedback_accuracy, result.champion_feedback_accuracy) == (0.9, 0.6)
    assert (result.feedback_fixed, result.feedback_broken) == (62, 2)
    assert result.holdout_drop == pytest.approx(0.01)
    assert result.as_dict()["feedback_gain"] == pytest.approx(0.3)


def test_finetune_gate_rejects_with_both_numbers_when_the_held_out_drop_is_over_one_point() -> None:
    cand_fb, champ_fb = _paired(200, champion_right=120, candidate_right=180, fixed=62)
    cand_ho, champ_ho = _paired(500, champion_right=493, candidate_right=487, fixed=0)  # 6 of 500
    result = judge_finetune(cand_fb, champ_fb, cand_ho, champ_ho, RULES)
    assert not result.passed
    assert result.reasons == (
        "accuracy on the held-out set 0.9740 is more than max_holdout_drop 0.0100 below the champion's 0.9860",
    )
    summary = result.summary()
    for figure in ("0.9000", "0.6000", "needs > 0.0000", "0.9740", "0.9860", "allowed <= 0.0100", "needs <= 0.05"):
        assert figure in summary, (figure, summary)


def test_finetune_gate_rejects_when_the_candidate_only_ties_the_champion_on_feedback() -> None:
    cand_fb, champ_fb = _paired(100, champion_right=70, candidate_right=70, fixed=10)
    cand_ho, champ_ho = _paired(500, champion_right=493, candidate_right=493, fixed=0)
    result = judge_finetune(cand_fb, champ_fb, cand_ho, champ_ho, RULES)
    assert not result.passed
    assert any("does not beat the champion's 0.7000" in r for r in result.reasons)
    assert any("McNemar p-value" in r for r in result.reasons)


def test_finetune_gate_rejects_a_small_win_when_mcnemar_says_it_is_noise() -> None:
    # 3 fixed, 1 broken: +2 samples is a win by accuracy, p = 5/16 by McNemar.
    cand_fb, champ_fb = _paired(100, champion_right=70, candidate_right=72, fixed=3)
    cand_ho, champ_ho = _paired(500, champion_right=493, candidate_right=493, fixed=0)
    result = judge_finetune(cand_fb, champ_fb, cand_ho, champ_ho, RULES)
    assert [r.split(" on ")[0] for r in result.reasons] == ["McNemar p-value 0.31"]
    # The same win passes when the test is switched off (max_feedback_p_value 1.0).
    lenient = RULES.model_copy(update={"max_feedback_p_value": 1.0})
    assert judge_finetune(cand_fb, champ_fb, cand_ho, champ_ho, lenient).passed


def test_finetune_gate_refuses_when_candidate_and_champion_were_judged_on_different_sets() -> None:
    with pytest.raises(RolloutError, match="same, non-empty sets"):
        judge_finetune(np.ones(3, bool), np.ones(4, bool), np.ones(5, bool), np.ones(5, bool), RULES)


def _label(db_url: str, request_id: str, label: int) -> None:
    with connect(db_url) as db:
        db.execute("INSERT INTO labels (request_id, label, ts, source) VALUES (?, ?, ?, ?)",
                   (request_id, label, 0.0, "test"))


def test_feedback_joins_the_latest_record_of_each_id_with_its_label_when_read_from_the_log(database_url: str) -> None:
    image = lambda v: bytes([v]) * 784  # noqa: E731 - a tiny local helper
    records = [
        PredictionRecord("a", 1.0, "m", "1", 3, 0.9, input=image(1)),
        PredictionRecord("a", 2.0, "m", "1", 3, 0.9, input=image(2)),  # same id, later: this one counts
        PredictionRecord("b", 3.0, "m", "1", 4, 0.8, input=image(3)),
        PredictionRecord("c", 4.0, "m", "1", 5, 0.7, input=None),  # input not kept: not feedback
        PredictionRecord("d", 5.0, "m", "1", 6, 0.6, input=image(4)),  # no label yet
        PredictionRecord("e", 6.0, "other", "1", 6, 0.6, input=image(5)),  # another model
        PredictionRecord("f", 7.0, "m", "1", 6, 0.6, input=b"\x01" * 10),  # not this model's input shape
    ]
    with connect(database_url) as db:
        from control.monitor import contract

        contract.migrate(db)
        write_predictions(db, records)
    for rid, label in (("a", 7), ("b", 8), ("c", 9), ("e", 1), ("f", 2), ("zz", 3)):
        _label(database_url, rid, label)
    with connect(database_url) as db:
        got = fb.from_database(db, "m", (1, 28, 28), window=100, num_classes=10)
        newest = fb.from_database(db, "m", (1, 28, 28), window=1, num_classes=10)
    assert got.request_ids == ("a", "b")
    assert got.labels.tolist() == [7, 8]
    assert got.inputs.shape == (2, 1, 28, 28) and got.inputs.dtype == np.uint8
    assert got.inputs[0].max() == 2 and got.inputs[1].max() == 3
    assert newest.request_ids == ("b",)


def test_feedback_file_is_refused_with_what_was_expected_when_malformed(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((4, 28, 28), np.uint8), labels=np.arange(4))
    loaded = fb.from_file(good, (1, 28, 28), num_classes=10)
    assert loaded.inputs.shape == (4, 1, 28, 28) and loaded.labels.dtype == np.int64
    digits = np.zeros((4, 28, 28), np.uint8)
    cases = {
        "missing": ({"images": digits}, r"needs arrays 'images' and 'labels'; missing \['labels'\]"),
        "dtype": ({"images": np.zeros((4, 28, 28)), "labels": np.arange(4)}, "must be uint8"),
        "shape": ({"images": np.zeros((4, 27, 27), np.uint8), "labels": np.arange(4)}, r"shape \[1, 28, 28\]"),
        "count": ({"images": np.zeros((4, 28, 28), np.uint8), "labels": np.arange(3)}, "one integer per image"),
        "range": ({"images": digits, "labels": np.array([0, 1, 2, 10])}, r"0\.\.9, got 0\.\.10"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(FinetuneError, match=message):
            fb.from_file(path, (1, 28, 28), num_classes=10)


def test_feedback_split_holds_back_the_same_share_when_seeded() -> None:
    data = fb.Feedback(np.arange(100, dtype=np.uint8).reshape(100, 1), np.arange(100), tuple(map(str, range(100))), "t")
    train, back = fb.split(data, 0.3, seed=0)
    again_train, again_back = fb.split(data, 0.3, seed=0)
    assert len(back) == 30 and len(train) == 70
    assert back.request_ids == again_back.request_ids and train.request_ids == again_train.request_ids
    assert not set(back.request_ids) & set(train.request_ids)
    assert fb.split(data, 0.3, seed=1)[1].request_ids != back.request_ids


def test_spec_finetune_is_refused_with_the_field_when_there_is_no_gate() -> None:
    data = {"models": {"m": {"source": "m.onnx", "lifecycle": {"finetune": {"adapter": "a.py"}}}}}
    with pytest.raises(SpecError, match=r"models\.m\.lifecycle.*finetune: needs `gate`"):
        parse_spec(data)
    data["models"]["m"]["lifecycle"]["finetune"]["replay_share"] = 1.5
    data["models"]["m"]["lifecycle"]["gate"] = {"data": "d.npz", "labels": "l.npy"}
    with pytest.raises(SpecError, match=r"finetune\.replay_share.*less than 1"):
        parse_spec(data)


def test_project_spec_finetune_adapter_defines_the_contract_when_loaded() -> None:
    spec = load_spec(ROOT / "deploy.yaml")
    lifecycle = spec.models["mnist_classifier"].lifecycle
    assert lifecycle is not None and lifecycle.finetune is not None
    adapter = load_adapter(spec.resolve(lifecycle.finetune.adapter))
    assert all(callable(getattr(adapter, f)) for f in ("load_network", "export_module", "replay_data", "augment"))


def test_load_adapter_names_the_missing_functions_when_the_file_lacks_them(tmp_path: Path) -> None:
    path = tmp_path / "adapter.py"
    path.write_text("def load_network(path):\n    return None\n")
    with pytest.raises(FinetuneError, match=r"lacks \['export_module', 'replay_data'\]"):
        load_adapter(path)
