"""Errors of the load-test tools, in the toolkit's hierarchy."""

from __future__ import annotations

from build_tools.errors import ClientError, ServerError, ToolkitError


class LoadTestError(ToolkitError):
    """A load test or benchmark could not run as asked."""


class ResponseCheckError(ClientError):
    """A response arrived but is wrong: bad status, shape, label, or an error from the server."""


class RefusedError(ResponseCheckError):
    """The server refused the request on purpose (queue full or queue timeout): load shedding, not a
    failure. Counted apart from errors by the load generator and the Locust users."""


class BaselineServerError(ServerError):
    """The Flask baseline server could not be started or did not answer."""


class PerfAnalyzerError(LoadTestError):
    """perf_analyzer is missing, failed, or wrote output we cannot read."""
