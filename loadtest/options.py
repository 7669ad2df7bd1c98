"""The load test's own Locust options, its pass/fail rule and address helpers.

Free of Locust imports on purpose: importing Locust monkey-patches the standard library with gevent,
which tests and tools that only need these functions must not pay for.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlparse

# While the server cannot be reached, each user waits 50 ms, 100 ms, ... up to 2 s between calls: a
# closed loop of refused connections would otherwise spin thousands of failures a second and burn the
# load generator's CPU. The first answer from the server ends the back-off.
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0


def backoff_seconds(failures_in_a_row: int) -> float:
    """The wait before the next call after this many unreachable-server failures in a row (jittered)."""
    if failures_in_a_row <= 0:
        return 0.0
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures_in_a_row - 1))
    return ceiling * random.uniform(0.5, 1.0)


DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001


# Our options, each also read from LOCUST_<NAME> and from Locust's config files (locust.conf,
# --config FILE), like Locust's own: name, type, default, help.
OPTIONS: tuple[tuple[str, type, object, str], ...] = (
    ("--batch-size", int, 1, "images per request"),
    ("--check-labels", bool, False,
     "count a prediction that differs from the sample's label as a failure"),
    ("--grpc-host", str, "", "HOST:PORT of Triton's gRPC endpoint (default: --host's host, port 8001)"),
    ("--max-fail-ratio", float, 0.01, "fail the run above this share of failed requests"),
    ("--max-p95-ms", float, 500.0, "fail the run when the 95th percentile latency is above this (ms; 0 = off)"),
    ("--max-p99-ms", float, 1000.0, "fail the run when the 99th percentile latency is above this (ms; 0 = off)"),
    ("--request-timeout", float, 60.0,
     "seconds one request may take before it counts as failed (connect and answer; gRPC deadline)"),
)


def env_var(option: str) -> str:
    """``--grpc-host`` -> ``LOCUST_GRPC_HOST`` (Locust's own naming for its options)."""
    return "LOCUST_" + option.lstrip("-").replace("-", "_").upper()


def add_options(parser: Any) -> None:
    """Register our options on Locust's argument parser (also shown in its web UI).

    Locust's parser is a configargparse parser: ``env_var`` makes each option readable from the
    environment, and its config-file reader takes any registered option (``grpc-host = H:P``).
    """
    group = parser.add_argument_group("triton load test")
    for option, kind, default, text in OPTIONS:
        extra = {"action": "store_true"} if kind is bool else {"type": kind}
        group.add_argument(option, default=default, env_var=env_var(option),
                           help=f"{text} (default {default!r}; env {env_var(option)})", **extra)


def threshold_problems(stats: Any, options: Any) -> list[str]:
    """What breaks the thresholds in ``stats`` (Locust's total StatsEntry); empty when the run passes."""
    if stats.num_requests == 0:
        return ["no request was made"]
    problems = []
    ratio = stats.num_failures / stats.num_requests
    if ratio > options.max_fail_ratio:
        problems.append(f"failure ratio {ratio:.4f} ({stats.num_failures} of {stats.num_requests}) "
                        f"> {options.max_fail_ratio}")
    for pct, limit in ((0.95, options.max_p95_ms), (0.99, options.max_p99_ms)):
        value = stats.get_response_time_percentile(pct)
        if limit and value > limit:
            problems.append(f"p{round(pct * 100)} latency {value:.0f} ms > {limit:g} ms")
    return problems


def http_address(host: str | None) -> str:
    """``http://h:p`` (or ``h:p``) -> ``h:p``, what tritonclient.http expects."""
    if not host:
        raise ValueError("no host: pass --host http://HOST:PORT")
    parsed = urlparse(host if "://" in host else f"http://{host}")
    if not parsed.hostname:
        raise ValueError(f"cannot read a host name from --host {host!r}")
    return f"{parsed.hostname}:{parsed.port or DEFAULT_HTTP_PORT}"


def grpc_address(host: str | None, grpc_host: str | None) -> str:
    """``--grpc-host`` if given; else ``--host`` when it is grpc://; else --host's host name, port 8001."""
    if grpc_host:
        return grpc_host.split("://", 1)[-1]
    if not host:
        raise ValueError("no gRPC address: pass --grpc-host HOST:PORT (or --host grpc://HOST:PORT)")
    parsed = urlparse(host if "://" in host else f"grpc://{host}")
    if parsed.scheme == "grpc":
        return f"{parsed.hostname}:{parsed.port or DEFAULT_GRPC_PORT}"
    return f"{parsed.hostname}:{DEFAULT_GRPC_PORT}"
