"""The TensorRT logger: bounded (errors and warnings kept, INFO/VERBOSE not), one per process.

TensorRT is not installed here, so `shared_logger` is given a namespace with the two names it uses
from the module, `ILogger` and `ILogger.Severity`, shaped as TensorRT 10.5's Python bindings define
them (pyCore.cpp): a base class to subclass and a severity enum. Everything else is the real code.
"""

from __future__ import annotations

import enum
import logging
import types

import pytest

from build_tools.tensorrt import api


def test_message_log_keeps_only_the_latest_errors_and_warnings_when_tensorrt_is_chatty() -> None:
    log = api.MessageLog()
    for i in range(50_000):
        log.add("verbose", f"tactic {i}")
        if i % 10 == 0:
            log.add("info", f"layer {i}")
    for i in range(api.KEEP_MESSAGES + 50):
        log.add("warning", f"w{i}")
    log.add("error", "the last error")
    assert len(log) == api.KEEP_MESSAGES
    kept = log.since(0, last=api.KEEP_MESSAGES)
    assert kept[-1] == "[ERROR] the last error"
    assert not any("tactic" in line or "layer" in line for line in kept)


def test_message_log_returns_what_came_after_a_mark_when_asked_since_it() -> None:
    log = api.MessageLog()
    log.add("error", "from the build")
    mark = log.mark()
    log.add("verbose", "dropped")
    log.add("internal_error", "from the runtime")
    assert log.since(mark) == ["[INTERNAL_ERROR] from the runtime"]


def test_message_log_forwards_warnings_to_logging_and_info_to_debug_when_added(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="build_tools.tensorrt.api")
    log = api.MessageLog()
    log.add("warning", "fp16 not fast here")
    log.add("info", "parsing")
    log.add("verbose", "tactic 7")
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, "TensorRT: fp16 not fast here") in records
    assert (logging.DEBUG, "TensorRT: parsing") in records
    assert not any("tactic 7" in m for _, m in records)


def _tensorrt_namespace(name: str) -> types.SimpleNamespace:
    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity  # type: ignore[attr-defined]
    return types.SimpleNamespace(__name__=name, ILogger=ILogger)


def test_shared_logger_returns_one_logger_per_process_when_asked_twice() -> None:
    trt = _tensorrt_namespace("tensorrt_for_test_shared")
    first = api.shared_logger(trt)
    second = api.shared_logger(trt)
    assert first is second
    # What the runtime reports reaches the logger the builder created.
    mark = first.messages.mark()
    second.log(trt.ILogger.Severity.ERROR, "engine deserialization failed")
    second.log(trt.ILogger.Severity.VERBOSE, "noise")
    assert first.messages.since(mark) == ["[ERROR] engine deserialization failed"]
