"""Host resources a flavor's server needs, computed from the spec (the compose helper reads these).

Shared memory: every Python-backend model instance runs in its own stub process that exchanges tensors
with the server through a shared-memory region. The region starts at the backend's
`shm-default-byte-size` (1 MiB by default) and grows in steps of `shm-growth-byte-size` (1 MiB by
default) when a request's tensors do not fit. Docker gives a container 64 MiB of shared memory unless
told otherwise; a server whose instances need more fails to load models or to grow a region under load.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from build_tools.config import default_instance_groups
from build_tools.interfaces import Interfaces, ModelIO, TensorIO, resolve_model_io
from build_tools.spec import DeploySpec, FlavorName

logger = logging.getLogger(__name__)

MIB = 1 << 20
PYTHON_SHM_DEFAULT_BYTES = 1 * MIB  # python backend shm-default-byte-size default
PYTHON_SHM_GROWTH_BYTES = 1 * MIB  # python backend shm-growth-byte-size default
DOCKER_DEFAULT_SHM_BYTES = 64 * MIB

_TYPE_BYTES = {
    "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
    "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
}


@dataclass(frozen=True)
class ShmModelEstimate:
    model: str
    instances: int
    bytes_per_instance: int


@dataclass(frozen=True)
class ShmEstimate:
    flavor: FlavorName
    models: tuple[ShmModelEstimate, ...]
    total_bytes: int

    @property
    def instances(self) -> int:
        return sum(m.instances for m in self.models)


def python_backend_models(spec: DeploySpec, flavor: FlavorName) -> list[str]:
    """Models the flavor runs on the Python backend: python models, plus every ONNX model when embedded
    (the embedded server runs ONNX through this project's Python-backend ONNX Runtime runner)."""
    return [n for n, m in spec.models.items() if m.kind == "python" or flavor == "embedded"]


def _tensor_bytes(t: TensorIO) -> int:
    # Variable dims count as 1 and BYTES as 0: the estimate is a floor for such tensors.
    return _TYPE_BYTES.get(t.data_type, 0) * math.prod(d if d > 0 else 1 for d in t.dims)


def _io_bytes_per_execution(io: ModelIO, max_batch_size: int) -> int:
    per_sample = sum(_tensor_bytes(t) for t in [*io.inputs, *io.outputs])
    return per_sample * max(max_batch_size, 1)


def python_backend_shm_estimate(
    spec: DeploySpec,
    flavor: FlavorName,
    default_bytes: int = PYTHON_SHM_DEFAULT_BYTES,
    growth_bytes: int = PYTHON_SHM_GROWTH_BYTES,
    interfaces: Interfaces | None = None,
) -> ShmEstimate:
    """Per model: instances x (default region + the growth steps one full batch of tensors needs)."""
    models = []
    for name in python_backend_models(spec, flavor):
        model = spec.models[name]
        instances = 0
        for g in default_instance_groups(model, flavor):
            # KIND_GPU places `count` instances on every listed GPU; without a list we assume one GPU.
            per_gpu = len(g.gpus) if g.kind == "KIND_GPU" and g.gpus else 1
            instances += g.count * per_gpu
        io = interfaces[name] if interfaces is not None else resolve_model_io(spec, name)
        if io.findings:
            logger.debug("shm estimate for %s uses a partial interface: %s", name, io.findings)
        steps = max(1, math.ceil(_io_bytes_per_execution(io, model.max_batch_size) / growth_bytes))
        models.append(ShmModelEstimate(name, instances, default_bytes + steps * growth_bytes))
    for router, target in spec.routers().items():
        # The generated routers run on the Python backend on both flavors, with their target's tensors.
        model = spec.models[target]
        assert model.lifecycle is not None
        io = interfaces[target] if interfaces is not None else resolve_model_io(spec, target)
        steps = max(1, math.ceil(_io_bytes_per_execution(io, model.max_batch_size) / growth_bytes))
        models.append(ShmModelEstimate(router, model.lifecycle.router_instances, default_bytes + steps * growth_bytes))
    total = sum(m.instances * m.bytes_per_instance for m in models)
    return ShmEstimate(flavor, tuple(models), math.ceil(total / MIB) * MIB)


def python_backend_shm_bytes(spec: DeploySpec, flavor: FlavorName) -> int:
    """Shared memory (bytes, whole MiB) the flavor's Python-backend instances need; 0 when there are none."""
    return python_backend_shm_estimate(spec, flavor).total_bytes


def shm_note(spec: DeploySpec, flavor: FlavorName, interfaces: Interfaces | None = None) -> str | None:
    est = python_backend_shm_estimate(spec, flavor, interfaces=interfaces)
    if not est.models:
        return None
    detail = ", ".join(f"{m.model} {m.instances}x{m.bytes_per_instance // MIB} MiB" for m in est.models)
    verdict = (
        "above Docker's default of 64 MiB: the container's shm_size must allow it"
        if est.total_bytes > DOCKER_DEFAULT_SHM_BYTES
        else "within Docker's default of 64 MiB, but set shm_size explicitly if you add instances"
    )
    return (
        f"python backend shared memory: {est.instances} instance(s) need about {est.total_bytes // MIB} MiB "
        f"({detail}); {verdict}"
    )
