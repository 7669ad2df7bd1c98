"""What a plan builder is: the request it gets, what it reports back, and how the gate runs a plan.

Two builders implement it: the TensorRT Python API (`api.py`) and the `trtexec` command (`trtexec.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from build_tools.errors import PlanBuildError
from build_tools.onnx_io import GraphInterface
from build_tools.tensorrt.profile import InputProfile, PrecisionSettings

PlanRunner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class NoBuilderError(PlanBuildError):
    """Neither the TensorRT Python API nor trtexec (nor a GPU) is available on this machine."""


@dataclass(frozen=True)
class CalibrationSet:
    """INT8 calibration input: batches at the profile's opt shape, and the cache TensorRT reads/writes."""

    batches: list[dict[str, np.ndarray]]
    cache_path: Path


@dataclass(frozen=True)
class BuildRequest:
    onnx_path: Path
    plan_path: Path
    precision: PrecisionSettings
    profiles: list[InputProfile]
    workspace_mib: int
    timing_cache: Path
    calibration: CalibrationSet | None = None


@dataclass(frozen=True)
class BuildInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    builder: str
    log_tail: str = ""


class PlanBackend(Protocol):
    name: str
    # How many separate runs the gate may start (None: no limit). trtexec starts one process per run.
    max_gate_runs: int | None

    def check_supported(self, graph: GraphInterface) -> None:
        """Raise PlanBuildError, before anything is built, for a model this builder cannot build or gate."""
        ...

    def build(self, request: BuildRequest) -> BuildInfo: ...

    def runner(self, plan_path: Path, dynamic_inputs: Iterable[str]) -> PlanRunner: ...
