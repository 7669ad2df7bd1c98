"""Locust entry point: ``locust -f loadtest/locustfile.py --host http://HOST:8000``.

Users (loadtest/users.py): HttpClassifierUser, HttpEnsembleUser, GrpcClassifierUser, GrpcEnsembleUser,
equally weighted; name some on the command line to run only those. Options of our own (also in the
web UI): ``--batch-size N`` (images per request), ``--check-labels`` (a prediction that differs from
the sample's label is a failure: the model gets 98.6 % right, so allow for it), ``--grpc-host H:P``.

Pass/fail (checked when Locust quits; in distributed mode on the master, which holds the totals):
``--max-fail-ratio`` (default 0.01), ``--max-p95-ms`` (default 500), ``--max-p99-ms`` (default 1000);
0 switches a latency threshold off. A run that breaks one, or made no request at all, exits with 1.

Headless with reports, e.g.::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --grpc-host 127.0.0.1:8001 \\
        --headless -u 16 -r 16 -t 30s --csv build/loadtest/run --html build/loadtest/run.html
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

# Locust puts this file's folder on sys.path, not the repository: make `loadtest` importable from a
# plain checkout too (the project's editable install already does).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

from locust import events  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402

from loadtest.options import add_options, threshold_problems  # noqa: E402
from loadtest.users import (  # noqa: E402,F401  (Locust finds the users in this module)
    GrpcClassifierUser,
    GrpcEnsembleUser,
    HttpClassifierUser,
    HttpEnsembleUser,
)

logger = logging.getLogger("loadtest")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_options(parser)


@events.quitting.add_listener
def _thresholds(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return  # workers hold only their share; the master decides
    total = environment.stats.total
    problems = threshold_problems(total, environment.parsed_options)
    # Refusals (load shedding) are their own entries ("... refused"), never failures.
    refused = sum(e.num_requests for e in environment.stats.entries.values() if e.name.endswith(" refused"))
    summary = (f"{total.num_requests} requests, {total.num_failures} failures, {refused} refusals, "
               f"p95 {total.get_response_time_percentile(0.95):.0f} ms, "
               f"p99 {total.get_response_time_percentile(0.99):.0f} ms, {total.total_rps:.1f} req/s")
    if problems:
        logger.error("load test FAILED its thresholds (%s): %s", summary, "; ".join(problems))
        environment.process_exit_code = 1
    else:
        logger.info("load test passed its thresholds: %s", summary)
        environment.process_exit_code = 0
