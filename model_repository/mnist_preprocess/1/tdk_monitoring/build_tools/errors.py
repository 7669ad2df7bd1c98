"""One exception hierarchy for the toolkit; the CLI catches ToolkitError at the top."""

from __future__ import annotations


class ToolkitError(Exception):
    """Base of every error this project raises on purpose."""


class UsageError(ToolkitError):
    """A command was called wrongly (a flag value the server or the data cannot accept): exit code 2."""


class SpecError(ToolkitError):
    """deploy.yaml is malformed: names the field, the bad value and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ModelInspectionError(ToolkitError):
    """A model file cannot be read or does not fit what the spec asks of it."""


class LintError(ToolkitError):
    """The repository plan has findings; each names the model and the field."""

    def __init__(self, findings: list[str]) -> None:
        self.findings = findings
        summary = "; ".join(findings)
        super().__init__(f"repository lint failed with {len(findings)} finding(s): {summary}")


class RepositoryError(ToolkitError):
    """Writing or reading a model repository failed."""


class ServerError(ToolkitError):
    """The Triton server could not be started, did not become ready, or died."""


class ClientError(ToolkitError):
    """A request to a running Triton server failed (wraps tritonclient errors)."""


class ServerUnreachableError(ClientError):
    """No Triton answers at the address (refused, reset, or gRPC UNAVAILABLE): callers may back off."""


class PlanBuildError(ToolkitError):
    """A TensorRT plan could not be built, failed its accuracy gate, or its versions do not match."""


class DatabaseError(ToolkitError):
    """The control database could not be opened, migrated or queried."""


class RolloutError(ToolkitError):
    """A lifecycle step (stage, canary, promote, rollback) was refused or failed; the champion keeps serving."""


class FinetuneError(ToolkitError):
    """Fine-tuning could not produce a candidate (too little feedback, an export that disagrees with PyTorch)."""
