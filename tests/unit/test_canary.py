"""The healer's canary inferences (build_tools/healer.py): the request they send, and what they heal."""

from __future__ import annotations

import json
from pathlib import Path

from build_tools.healer import Healer, ModelHealth, canary_request


def _split(body: bytes, header_len: int) -> tuple[dict, bytes]:
    return json.loads(body[:header_len]), body[header_len:]


def test_canary_request_sends_warmup_file_when_config_names_one(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    sample = (3).to_bytes(4, "little") + b"png"  # one serialized BYTES element
    (tmp_path / "warmup" / "digit_png_image_bytes").write_bytes(sample)
    config = {
        "max_batch_size": 256,
        "input": [{"name": "image_bytes", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "model_warmup": [{"name": "digit_png", "batch_size": 1, "inputs": {"image_bytes": {
            "data_type": "TYPE_STRING", "dims": ["1"], "input_data_file": "digit_png_image_bytes"}}}],
    }
    built = canary_request(config, tmp_path)
    assert built is not None
    header, data = _split(*built)
    assert header["inputs"] == [{"name": "image_bytes", "shape": [1, 1], "datatype": "BYTES",
                                 "parameters": {"binary_data_size": len(sample)}}]
    assert data == sample


def test_canary_request_sends_zeros_when_no_warmup_file() -> None:
    config = {"max_batch_size": 0, "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": ["1", "28", "28"]}]}
    built = canary_request(config, None)
    assert built is not None
    header, data = _split(*built)
    assert header["inputs"][0]["shape"] == [1, 28, 28] and header["inputs"][0]["datatype"] == "FP32"
    assert data == bytes(28 * 28 * 4)


def test_canary_request_skipped_when_bytes_input_has_no_sample() -> None:
    config = {"max_batch_size": 8, "input": [{"name": "raw", "data_type": "TYPE_STRING", "dims": ["1"]}]}
    assert canary_request(config, None) is None


def test_healer_reloads_model_when_canaries_missed_in_a_row() -> None:
    answers = {"m": ["no answer within 2.0 s", "no answer within 2.0 s", None], "ok": [None, None, None]}
    reloads: list[str] = []
    healer = Healer(lambda: None, lambda m: reloads.append(m) or True, lambda: None,
                    canary=lambda m: answers[m].pop(0), canary_misses=2)
    healer.models["m"] = ModelHealth()
    healer.models["ok"] = ModelHealth()
    assert healer.canary_once() == []  # one miss: not yet
    assert healer.canary_once() == ["m"]  # the second in a row: healed
    assert reloads == ["m"]
    assert healer.healthy()
    assert healer.canary_once() == []
    metrics = healer.metrics_text()
    assert 'tdk_healer_canary_failures_total{model="m"} 2' in metrics
    assert 'tdk_healer_canary_failures_total{model="ok"} 0' in metrics
    assert 'tdk_healer_stub_heals_total{model="m"} 1' in metrics
    assert any("model m: stub not answering (2 canary(ies) of m missed" in e for e in healer.events)


def test_healer_counts_miss_but_waits_when_answer_follows() -> None:
    answers = ["no answer within 2.0 s", None, "no answer within 2.0 s", None]
    healer = Healer(lambda: None, lambda m: True, lambda: None, canary=lambda m: answers.pop(0), canary_misses=2)
    healer.models["m"] = ModelHealth()
    for _ in range(4):
        assert healer.canary_once() == []
    assert healer.models["m"].canary_failures == 2 and healer.models["m"].heals == 0


def test_healer_heals_owner_at_once_when_triton_names_unhealthy_stub() -> None:
    # A router's canary fails through its target's hung instance: the target is reloaded, at once.
    problem = "HTTP 500: {\"error\":\"router: clf version 1: Stub process 'clf_0_2' is not healthy.\"}"
    answers = {"router": [problem], "clf": [None]}
    reloads: list[str] = []
    healer = Healer(lambda: None, lambda m: reloads.append(m) or True, lambda: None,
                    canary=lambda m: answers[m].pop(0), canary_misses=3)
    healer.models["clf"] = ModelHealth({"clf_0_0", "clf_0_1", "clf_0_2"})
    healer.models["router"] = ModelHealth({"router_0_0"})
    assert healer.canary_once() == ["clf"]
    assert reloads == ["clf"]
