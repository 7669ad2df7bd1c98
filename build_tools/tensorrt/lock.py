"""The build/serve version lock: which TensorRT built a plan, and which Triton image it is meant for.

A TensorRT plan only deserializes in the exact TensorRT version that built it (the tensorrt backend
refuses it with "The engine plan file is not compatible with this version of TensorRT"), and only on a
GPU of the compute capability it was built on. Next to every plan `build-repo` writes a lock file
(`model.plan.json.lock`, JSON) recording both, plus the Triton release the repository targets, and it
refuses to place a plan whose TensorRT version differs from the target image's. `triton-repo verify`
reads the same files back and compares them with a running server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from build_tools.errors import PlanBuildError
from build_tools.spec import TritonSpec

logger = logging.getLogger(__name__)

LOCK_SCHEMA = 1
# `.json.lock` is already git-ignored under model_repository/: the lock travels with its (ignored) plan.
LOCK_SUFFIX = ".json.lock"


@dataclass(frozen=True)
class TritonRelease:
    release: str
    server_version: str
    tensorrt_version: str


# What the `tritonserver:<release>-py3` image ships. Source: NVIDIA's Deep Learning Frameworks Support
# Matrix (Triton Inference Server rows) and the Triton Inference Server Release Notes of each release.
# The `-trtllm-python-py3` variant of the same release ships a different TensorRT (24.10: 10.4.0 per
# Triton's docs/introduction/compatibility.md), so this table is valid for the plain -py3 image only.
TRITON_RELEASES: dict[str, TritonRelease] = {
    r.release: r
    for r in (
        TritonRelease("24.08", "2.49.0", "10.3.0.26"),
        TritonRelease("24.09", "2.50.0", "10.4.0.26"),
        TritonRelease("24.10", "2.51.0", "10.5.0.18"),
        TritonRelease("24.11", "2.52.0", "10.6.0.26"),
        TritonRelease("24.12", "2.53.0", "10.7.0.23"),
    )
}

_VERSION = re.compile(r"^\d+(\.\d+)*$")


def parse_version(text: str) -> tuple[int, ...]:
    """'10.5.0.18' -> (10, 5, 0, 18); a PEP 440 suffix such as '.post1' is dropped."""
    core = re.match(r"^\d+(\.\d+)*", text.strip())
    if core is None or not _VERSION.match(core.group(0)):
        raise PlanBuildError(f"{text!r} is not a version number (expected digits separated by dots, e.g. 10.5.0)")
    return tuple(int(p) for p in core.group(0).split("."))


def versions_match(built: str, target: str) -> bool:
    """Same TensorRT release, compared on the components both name (at least major.minor.patch).

    trtexec reports three components (10.5.0), the Python module four (10.5.0.18); a plan is tied to the
    full version, so whatever both sides state must agree.
    """
    a, b = parse_version(built), parse_version(target)
    common = min(len(a), len(b))
    if common < 3:
        raise PlanBuildError(
            f"cannot compare TensorRT versions {built!r} and {target!r}: both must name at least "
            f"major.minor.patch (a plan only loads in the exact TensorRT version that built it)"
        )
    return a[:common] == b[:common]


def spec_target_problems(triton: TritonSpec) -> list[str]:
    """Inconsistencies between the spec's triton section and the release table."""
    known = TRITON_RELEASES.get(triton.release)
    if known is None:
        logger.warning(
            "triton.release %s is not in the release table (%s); trusting triton.server_version and "
            "triton.tensorrt_version from the spec", triton.release, ", ".join(TRITON_RELEASES)
        )
        return []
    problems = []
    if not versions_match(known.tensorrt_version, triton.tensorrt_version):
        problems.append(
            f"triton.tensorrt_version is {triton.tensorrt_version} but the tritonserver:{triton.release}-py3 "
            f"image ships TensorRT {known.tensorrt_version}; set triton.tensorrt_version: "
            f"\"{known.tensorrt_version}\" or change triton.release"
        )
    if parse_version(known.server_version) != parse_version(triton.server_version):
        problems.append(
            f"triton.server_version is {triton.server_version} but release {triton.release} is Triton "
            f"{known.server_version}; set triton.server_version: \"{known.server_version}\" or change "
            f"triton.release"
        )
    return problems


def require_consistent_target(triton: TritonSpec) -> None:
    problems = spec_target_problems(triton)
    if problems:
        raise PlanBuildError("the spec's triton section is inconsistent: " + "; ".join(problems))


@dataclass(frozen=True)
class PlanLock:
    """What a plan was built with and for; written next to the plan as JSON."""

    model: str  # the ONNX model the plan was built from
    trt_model: str  # the repository folder that serves the plan
    version: int
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    triton_release: str
    triton_server_version: str
    target_tensorrt_version: str
    precision: str
    builder: str  # "python" (TensorRT Python API) or "trtexec"
    onnx_sha256: str
    plan_sha256: str
    profile: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    built_at: str = ""
    schema: int = LOCK_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> PlanLock:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanBuildError(f"{source}: lock metadata is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise PlanBuildError(f"{source}: lock metadata must be a JSON object, got {type(data).__name__}")
        names = set(cls.__dataclass_fields__)
        required = {n for n in names if n not in ("profile", "gate", "built_at", "schema")}
        missing = sorted(required - set(data))
        if missing:
            raise PlanBuildError(f"{source}: lock metadata lacks {missing}; rebuild the plan with build-repo")
        if data.get("schema", LOCK_SCHEMA) != LOCK_SCHEMA:
            raise PlanBuildError(
                f"{source}: lock schema {data.get('schema')} is not the supported schema {LOCK_SCHEMA}; rebuild"
            )
        return cls(**{k: v for k, v in data.items() if k in names})


def lock_path(plan_path: Path) -> Path:
    return plan_path.with_name(plan_path.name + LOCK_SUFFIX)


def write_lock(plan_path: Path, lock: PlanLock) -> Path:
    path = lock_path(plan_path)
    path.write_text(lock.to_json())
    return path


def read_lock(plan_path: Path) -> PlanLock:
    """The lock of a plan; a plan without one cannot prove which TensorRT built it."""
    path = lock_path(plan_path)
    if not path.is_file():
        raise PlanBuildError(
            f"{plan_path}: no lock metadata ({path.name} missing), so its TensorRT version is unknown; "
            f"rebuild it with `triton-repo build-repo` in the serving image"
        )
    return PlanLock.from_json(path.read_text(), str(path))


def lock_problems(lock: PlanLock, triton: TritonSpec, where: str = "plan") -> list[str]:
    """Why a plan with this lock must not be served by the image the spec targets (empty: it may)."""
    problems = []
    if not versions_match(lock.tensorrt_version, triton.tensorrt_version):
        problems.append(
            f"{where}: built with TensorRT {lock.tensorrt_version} but the target image "
            f"tritonserver:{triton.release}-py3 has TensorRT {triton.tensorrt_version}; the tensorrt backend "
            f"would refuse to load it. Rebuild it inside that image"
        )
    if lock.triton_release != triton.release:
        problems.append(
            f"{where}: built for Triton release {lock.triton_release} but the spec targets {triton.release}; "
            f"rebuild it with build-repo"
        )
    return problems


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_plans(repository: Path) -> list[Path]:
    """Every <model>/<version>/model.plan in a repository, plus plans whose lock exists without them."""
    plans = set(repository.glob("*/*/*.plan"))
    plans |= {p.with_name(p.name[: -len(LOCK_SUFFIX)]) for p in repository.glob(f"*/*/*.plan{LOCK_SUFFIX}")}
    return sorted(plans)
