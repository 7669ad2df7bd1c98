"""What a test does when a tool it needs is missing: skip with the reason locally, fail in CI.

CI (``.ci/run``) installs every tool the suite uses and sets ``REQUIRE_TEST_TOOLS=1``: there a missing
tool is a broken CI environment, and a skip would hide it. Things CI cannot have (a GPU, TensorRT)
are not tools in this sense and keep skipping.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

STRICT_ENV = "REQUIRE_TEST_TOOLS"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def tool_missing(reason: str) -> NoReturn:
    """Skip (printing the reason), or fail when ``REQUIRE_TEST_TOOLS`` is set."""
    if strict():
        pytest.fail(f"{reason} ({STRICT_ENV} is set: CI must install it)", pytrace=False)
    print(f"SKIP: {reason}")
    pytest.skip(reason)
