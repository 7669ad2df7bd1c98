"""Model lifecycle on a running Triton in explicit model-control mode: stage, canary, promote, rollback.

Every step goes through Triton's repository API with a config override, then the same config is
written to the repository on disk, so a restarted server (`--load-model=*`) comes back as it was:

  target model  version_policy { specific { versions: [...] } } = the versions that are loaded
  router model  parameters { key: "weights" ... } = the traffic split
  ensembles     the step that runs the router: while one version takes all the traffic (and the router's
                `bypass_when_single_version` is "true"), that version directly, one Python-backend hop less;
                during a split, the router

Order of operations keeps traffic safe: a version is loaded (and checked through the router with the
pin parameter) before it may take traffic; traffic moves away from a version (router reload, which
Triton swaps in only once the new instance is ready) before that version is unloaded, and only after a
drain pause for requests the old router instance still holds. Ensembles are switched onto the router
before a split starts and back to the one version after it ends, each with a reload Triton swaps in only
once the new ensemble is ready; none ever points at a version that is about to be unloaded. A step that
fails leaves the previous router and the champion serving, and the registry says why.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from google.protobuf.json_format import MessageToJson
from tritonclient.grpc import model_config_pb2 as mc

from build_tools import config as cfg
from build_tools.errors import ClientError, ModelInspectionError, RepositoryError, RolloutError
from build_tools.folder_lock import folder_lock
from build_tools.onnx_io import read_interface
from build_tools.runner_params import ROUTER_PARAM_BYPASS, ROUTER_PARAM_WEIGHTS
from build_tools.spec import DeploySpec, LifecycleSpec, ModelSpec
from control.gate import FinetuneGateResult, GateResult, load_gate_data, run_gate
from control.monitor.contract import Reference
from control.monitor.reference import write_version_reference
from control.registry import Registry, VersionRecord
from triton_api import TritonClient

logger = logging.getLogger(__name__)

SMOKE_SAMPLES = 16
DEFAULT_DRAIN_S = 2.0
LOCK_TIMEOUT_S = 120.0

_Step = TypeVar("_Step", bound=Callable[..., Any])


def _exclusive(step: _Step) -> _Step:
    """One lifecycle step at a time per repository (a person and the watcher may act at once)."""

    @functools.wraps(step)
    def wrapper(self: Rollout, *args: Any, **kwargs: Any) -> Any:
        with self._repository_lock():
            return step(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ready_versions(client: TritonClient, model: str) -> set[int]:
    """The versions of `model` the server reports READY."""
    return {
        int(m["version"]) for m in client.repository_index()
        if m.get("name") == model and m.get("state") == "READY" and m.get("version")
    }


def _load(client: TritonClient, model: str, config: mc.ModelConfig) -> None:
    """Load (or reload) `model` with `config` instead of its config.pbtxt (Triton's config override)."""
    client.load_model(model, MessageToJson(config, preserving_proto_field_name=True, indent=None))


def _write_config(path: Path, config: mc.ModelConfig) -> None:
    """Replace config.pbtxt atomically (a crash never leaves half a config for the next start)."""
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(cfg.to_pbtxt(config))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class StepResult:
    """What a step did, in one line per action, for the CLI to print."""

    lines: tuple[str, ...]
    seconds: float


class Rollout:
    """Lifecycle steps for one model of the spec, against one server and one repository on disk."""

    def __init__(
        self,
        spec: DeploySpec,
        model: str,
        registry: Registry,
        client: TritonClient,
        repository: Path,
        actor: str = "cli",
        drain_s: float = DEFAULT_DRAIN_S,
    ) -> None:
        if model not in spec.models:
            raise RolloutError(f"{model!r} is not a model of the spec; models: {sorted(spec.models)}")
        self.model_spec: ModelSpec = spec.models[model]
        if self.model_spec.lifecycle is None:
            with_lifecycle = sorted(n for n, m in spec.models.items() if m.lifecycle is not None)
            raise RolloutError(
                f"models.{model}.lifecycle is not set, so it has no router; models with a lifecycle: {with_lifecycle}"
            )
        self.lifecycle: LifecycleSpec = self.model_spec.lifecycle
        self.spec = spec
        self.model = model
        self.router = str(self.model_spec.router_name(model))
        self.registry = registry
        self.client = client
        self.repository = Path(repository)
        self.actor = actor
        self.drain_s = drain_s
        for folder in (self.model_dir, self.router_dir):
            if not (folder / "config.pbtxt").is_file():
                raise RolloutError(
                    f"{folder / 'config.pbtxt'} not found: --repository must be the repository the server "
                    f"serves, built with `triton-repo build-repo`"
                )

    # -- the repository on disk --------------------------------------------------------------------
    @contextlib.contextmanager
    def _repository_lock(self) -> Iterator[None]:
        with folder_lock(self.repository, LOCK_TIMEOUT_S) as got:
            if not got:
                raise RolloutError(
                    f"another lifecycle step has held {self.repository} for {LOCK_TIMEOUT_S:.0f} s; "
                    f"try again when it is done"
                )
            yield

    @property
    def model_dir(self) -> Path:
        return self.repository / self.model

    @property
    def router_dir(self) -> Path:
        return self.repository / self.router

    def disk_versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def disk_target_config(self) -> mc.ModelConfig:
        return cfg.read_config(self.model_dir / "config.pbtxt")

    def disk_router_config(self) -> mc.ModelConfig:
        return cfg.read_config(self.router_dir / "config.pbtxt")

    @property
    def bypass(self) -> bool:
        """Whether ensembles call the one version directly while it takes all the traffic (build_tools.config)."""
        param = self.disk_router_config().parameters.get(ROUTER_PARAM_BYPASS)
        return param is not None and param.string_value == "true"

    def routed_steps(self) -> list[tuple[str, int]]:
        """(ensemble, step index) of every ensemble step of the spec that runs this model's router and is
        in this repository with the router or the model itself there (not a flavor's substitute)."""
        steps = []
        for name, ens in self.spec.ensembles.items():
            path = self.repository / name / "config.pbtxt"
            if not path.is_file():
                continue
            on_disk = cfg.read_config(path).ensemble_scheduling.step
            for i, step in enumerate(ens.steps):
                if step.model == self.router and i < len(on_disk) and on_disk[i].model_name in (self.router,
                                                                                                 self.model):
                    steps.append((name, i))
        return steps

    def ensemble_step_for(self, weights: dict[int, float]) -> tuple[str, int]:
        """(model, version) the routed ensemble steps should run for these weights."""
        version = cfg.direct_version(weights, self.bypass)
        return (self.model, version) if version is not None else (self.router, -1)

    def disk_weights(self) -> dict[int, float]:
        import json

        raw = self.disk_router_config().parameters[ROUTER_PARAM_WEIGHTS].string_value
        return {int(v): float(p) for v, p in json.loads(raw).items()}

    def disk_policy_versions(self) -> set[int]:
        """The versions the config.pbtxt on disk makes a restarted server load."""
        policy = self.disk_target_config().version_policy
        on_disk = self.disk_versions()
        kind = policy.WhichOneof("policy_choice")
        if kind == "specific":
            return set(policy.specific.versions)
        if kind == "all":
            return set(on_disk)
        # latest (Triton's default is the newest one)
        n = policy.latest.num_versions if kind == "latest" else 1
        return set(on_disk[-n:])

    def model_file(self, version: int) -> Path:
        return self.model_dir / str(version) / cfg.ONNX_FILENAME

    # -- registry bootstrap --------------------------------------------------------------------------
    def ensure_registered(self) -> None:
        """First use: the versions the router serves today become the registry's starting point."""
        if self.registry.versions(self.model):
            return
        weights = self.disk_weights()
        champion = max(weights, key=lambda v: (weights[v], v))
        for version, percent in sorted(weights.items()):
            path = self.model_file(version)
            if not path.is_file():
                raise RolloutError(
                    f"{path}: the router sends traffic to version {version} but its model file is missing"
                )
            gate: dict[str, Any] = {"bootstrap": True}
            if self.lifecycle.gate is not None:
                # The serving version's own accuracy, so later candidates are compared with a recorded figure.
                result, _ = run_gate(self.lifecycle.gate, self.spec.base_dir, path, None)
                gate.update(result.as_dict())
            self.registry.add(
                self.model, version, sha256_of(path), str(path), "registered from the serving repository",
                "champion" if version == champion else "canary", gate, self.actor, percent,
            )

    # -- server state ----------------------------------------------------------------------------------
    def loaded_versions(self) -> list[int]:
        """What should be loaded: staged, canary and champion versions, plus the previous champion
        (kept loaded so a rollback is only a router switch)."""
        keep = {v.version for v in self.registry.versions(self.model) if v.state in ("staged", "canary", "champion")}
        prev = self.previous_champion()
        if prev is not None:
            keep.add(prev.version)
        return sorted(keep)

    def previous_champion(self) -> VersionRecord | None:
        """The last champion that was replaced by a promotion (not one rolled back for a fault)."""
        for entry in reversed(self.registry.history(self.model)):
            if entry.action == "promote" and entry.from_state == "champion" and entry.version is not None:
                record = self.registry.get(self.model, entry.version)
                return record if record.state == "retired" else None
        return None

    def _apply_target(self, versions: list[int]) -> None:
        config = self.disk_target_config()
        config.ClearField("version_policy")
        config.version_policy.specific.versions.extend(sorted(versions))
        _load(self.client, self.model, config)
        _write_config(self.model_dir / "config.pbtxt", config)

    def _apply_router(self, weights: dict[int, float]) -> None:
        config = self.disk_router_config()
        config.parameters[ROUTER_PARAM_WEIGHTS].string_value = cfg.router_weights_json(weights)
        _load(self.client, self.router, config)
        _write_config(self.router_dir / "config.pbtxt", config)

    def _apply_ensembles(self, weights: dict[int, float]) -> list[str]:
        """Point the routed ensemble steps at the router (a split) or at the one version (all traffic)."""
        model, version = self.ensemble_step_for(weights)
        lines = []
        for name, index in self.routed_steps():
            path = self.repository / name / "config.pbtxt"
            config = cfg.read_config(path)
            step = config.ensemble_scheduling.step[index]
            if (step.model_name, step.model_version) == (model, version):
                continue
            cfg.route_step(config, self.spec, name, index, model, version)
            t = time.monotonic()
            _load(self.client, name, config)
            _write_config(path, config)
            where = (f"straight to {model} version {version} (the router is out of its path)" if model == self.model
                     else f"through {self.router} (a split needs it)")
            lines.append(f"ensemble {name}: {where} (switched in {time.monotonic() - t:.2f} s)")
        return lines

    def _drain(self) -> None:
        # The router's old instance may still hold requests bound for a version we are about to unload.
        time.sleep(self.drain_s)

    def _champion(self) -> VersionRecord:
        champion = self.registry.champion(self.model)
        if champion is None:
            raise RolloutError(f"{self.model} has no champion in the registry; nothing serves its traffic")
        return champion

    # -- steps ---------------------------------------------------------------------------------------
    @_exclusive
    def stage(
        self, source: Path, reason: str, prior_gate: FinetuneGateResult | None = None
    ) -> tuple[VersionRecord, StepResult]:
        """Lint, gate, register, load, check through the router pin; no traffic.

        `prior_gate`: a verdict reached before staging (the fine-tune gate); a failed one rejects the
        version with its figures, a passed one is recorded beside the standard gate's."""
        started = time.monotonic()
        lines: list[str] = []
        self.ensure_registered()
        source = Path(source)
        if not source.is_file():
            raise RolloutError(f"{source}: no such model file")
        champion = self._champion()
        sha = sha256_of(source)
        for existing in self.registry.versions(self.model):
            if existing.sha256 == sha and existing.state != "rejected":
                raise RolloutError(f"{source} is already registered as {self.model} version {existing.version} "
                                   f"({existing.state}); sha256 {sha[:12]}")
        version = max([*(v.version for v in self.registry.versions(self.model)), *self.disk_versions()]) + 1

        def reject(why: str, gate: dict[str, Any]) -> RolloutError:
            self.registry.add(self.model, version, sha, str(source), f"{reason} (rejected: {why})", "rejected",
                              gate, self.actor)
            return RolloutError(f"{self.model} version {version} rejected: {why}; version "
                                f"{champion.version} keeps serving")

        # Lint: the new file must have exactly the interface clients and the router already use.
        try:
            new_io = read_interface(source)
        except ModelInspectionError as e:
            raise reject(f"lint: {e}", {}) from e
        old_io = read_interface(self.model_file(champion.version))
        if (new_io.inputs, new_io.outputs) != (old_io.inputs, old_io.outputs):
            raise reject(
                f"lint: interface differs from version {champion.version} (inputs {new_io.inputs}, outputs "
                f"{new_io.outputs}; expected inputs {old_io.inputs}, outputs {old_io.outputs})", {})
        lines.append(f"lint: interface matches version {champion.version}")

        prior = {prior_gate.name: prior_gate.as_dict()} if prior_gate is not None else {}
        if prior_gate is not None:
            if not prior_gate.passed:
                raise reject(f"{prior_gate.name} gate: {'; '.join(prior_gate.reasons)} ({prior_gate.summary()})",
                             {"passed": False, **prior})
            lines.append(f"{prior_gate.name} gate: {prior_gate.summary()}: passed")

        gate_result: GateResult | None = None
        scores: np.ndarray | None = None
        if self.lifecycle.gate is not None:
            try:
                gate_result, scores = run_gate(self.lifecycle.gate, self.spec.base_dir, source,
                                               self.model_file(champion.version))
            except RolloutError as e:
                raise reject(f"gate: {e}", {"passed": False, "error": str(e), **prior}) from e
            if not gate_result.passed:
                raise reject("gate: " + "; ".join(gate_result.reasons), {**gate_result.as_dict(), **prior})
            lines.append(
                f"gate: accuracy {gate_result.accuracy:.4f} on {gate_result.samples} labelled samples "
                f"(champion {gate_result.champion_accuracy:.4f}), top-1 agreement with the champion "
                f"{gate_result.agreement_with_champion:.4f}: passed"
            )
        gate = gate_result.as_dict() if gate_result else {"passed": True, "note": "no gate configured"}
        gate.update(prior)

        # Load: copy the version folder (the champion's runner files + the new model), then reload the
        # target with the new version added. The champion keeps serving whatever happens here.
        folder = self.model_dir / str(version)
        if folder.exists():
            shutil.rmtree(folder)
        # Not the champion's reference.json: the new version gets its own, as a built version does, so
        # the drift monitor compares it with its own held-out figures once it serves.
        shutil.copytree(self.model_file(champion.version).parent, folder,
                        ignore=shutil.ignore_patterns(cfg.ONNX_FILENAME, Reference.FILENAME, "__pycache__"))
        shutil.copyfile(source, folder / cfg.ONNX_FILENAME)
        before = self.loaded_versions()
        t_load = time.monotonic()
        try:
            self._apply_target([*before, version])
        except ClientError as e:
            self._restore_target(before)
            shutil.rmtree(folder, ignore_errors=True)
            raise reject(f"load failed: {e}", gate) from e
        lines.append(f"load: {self.model} versions {[*before, version]} loaded in {time.monotonic() - t_load:.2f} s")

        # Smoke check through the router's pin: the served version answers like the file did offline.
        if scores is not None and self.lifecycle.gate is not None:
            problem = self._smoke(version, scores)
            if problem:
                self._restore_target(before)
                shutil.rmtree(folder, ignore_errors=True)
                raise reject(f"served check: {problem}", gate)
            lines.append(f"served check: {SMOKE_SAMPLES} samples through {self.router} pinned to version "
                         f"{version} match ONNX Runtime")
        # Written once Triton has loaded the version (a file it cannot load is refused by the load, above).
        try:
            ref = write_version_reference(self.spec, self.model, version, folder / cfg.ONNX_FILENAME, folder)
        except RepositoryError as e:
            self._restore_target(before)
            shutil.rmtree(folder, ignore_errors=True)
            raise reject(f"monitoring reference: {e}", gate) from e
        if ref is not None:
            lines.append(f"reference: {Reference.FILENAME} from {ref.n} held-out samples (accuracy {ref.accuracy:.4f})")
        record = self.registry.add(self.model, version, sha, str(source), reason, "staged", gate, self.actor)
        lines.append(f"registered {self.model} version {version} as staged (sha256 {sha[:12]}), no traffic")
        return record, StepResult(tuple(lines), time.monotonic() - started)

    def _restore_target(self, versions: list[int]) -> None:
        """After a failed load: make sure the versions that served before are loaded as before."""
        try:
            if not set(versions) <= ready_versions(self.client, self.model):
                self._apply_target(versions)
            else:
                config = self.disk_target_config()
                if list(config.version_policy.specific.versions) != versions:
                    config.ClearField("version_policy")
                    config.version_policy.specific.versions.extend(versions)
                    _write_config(self.model_dir / "config.pbtxt", config)
        except ClientError as e:
            logger.error("could not restore %s versions %s: %s", self.model, versions, e)

    def _smoke(self, version: int, expected: np.ndarray) -> str | None:
        assert self.lifecycle.gate is not None
        inputs, _ = load_gate_data(self.lifecycle.gate, self.spec.base_dir)
        config = self.disk_target_config()
        types = {i.name: i.data_type for i in config.input}
        feed = {}
        for name, array in inputs.items():
            if name in types:
                np_type = {mc.TYPE_FP32: np.float32, mc.TYPE_INT64: np.int64, mc.TYPE_UINT8: np.uint8,
                           mc.TYPE_INT32: np.int32, mc.TYPE_FP64: np.float64}.get(types[name], np.float32)
                feed[name] = array[:SMOKE_SAMPLES].astype(np_type)
        output = self.lifecycle.gate.output or config.output[0].name
        try:
            served = self.client.infer(self.router, feed, [output],
                                       parameters={self.lifecycle.pin_parameter: str(version)})
        except ClientError as e:
            return str(e)
        got, want = served[output].argmax(axis=-1), expected[:SMOKE_SAMPLES].argmax(axis=-1)
        if not np.array_equal(got, want):
            return f"top-1 differs from ONNX Runtime on {int((got != want).sum())} of {SMOKE_SAMPLES} samples"
        return None

    @_exclusive
    def canary(self, version: int, percent: float, reason: str) -> StepResult:
        started = time.monotonic()
        self.ensure_registered()
        if not 0 < percent < 100:
            raise RolloutError(f"--percent must be between 0 and 100 (exclusive), got {percent}; use promote for 100")
        record = self.registry.get(self.model, version)
        champion = self._champion()
        if record.state not in ("staged", "canary"):
            raise RolloutError(f"{self.model} version {version} is {record.state}; only a staged or canary version "
                               f"can take canary traffic")
        others = [v for v in self.registry.find(self.model, "canary") if v.version != version]
        if others:
            raise RolloutError(f"{self.model} version {others[0].version} is already the canary "
                               f"({others[0].traffic_percent:g}%); promote or roll it back first")
        if version not in ready_versions(self.client, self.model):
            raise RolloutError(f"{self.model} version {version} is not READY on the server; stage it again")
        weights = {champion.version: 100.0 - percent, version: float(percent)}
        t = time.monotonic()
        self._apply_router(weights)
        switch = time.monotonic() - t
        ensembles = self._apply_ensembles(weights)
        with self.registry.db.transaction():
            self.registry.set_state(self.model, champion.version, "champion", 100.0 - percent, self.actor, "canary",
                                    reason, {"canary": version})
            self.registry.set_state(self.model, version, "canary", float(percent), self.actor, "canary", reason,
                                    {"switch_s": switch})
        return StepResult((f"router {self.router}: version {champion.version} {100 - percent:g}%, version {version} "
                           f"{percent:g}% (switched in {switch:.2f} s)", *ensembles), time.monotonic() - started)

    @_exclusive
    def promote(self, version: int, reason: str) -> StepResult:
        started = time.monotonic()
        self.ensure_registered()
        record = self.registry.get(self.model, version)
        champion = self._champion()
        if record.state == "champion":
            raise RolloutError(f"{self.model} version {version} is already the champion")
        if record.state not in ("staged", "canary"):
            raise RolloutError(f"{self.model} version {version} is {record.state}; only a staged or canary version "
                               f"can be promoted")
        if version not in ready_versions(self.client, self.model):
            raise RolloutError(f"{self.model} version {version} is not READY on the server; stage it again")
        old_prev = self.previous_champion()
        t = time.monotonic()
        self._apply_router({version: 100.0})
        switch = time.monotonic() - t
        ensembles = self._apply_ensembles({version: 100.0})
        with self.registry.db.transaction():
            self.registry.set_state(self.model, champion.version, "retired", 0.0, self.actor, "promote",
                                    f"replaced by version {version}: {reason}", {"new_champion": version})
            self.registry.set_state(self.model, version, "champion", 100.0, self.actor, "promote", reason,
                                    {"switch_s": switch, "previous_champion": champion.version})
        lines = [f"router {self.router}: version {version} 100% (switched in {switch:.2f} s); version "
                 f"{champion.version} retired, kept loaded for rollback", *ensembles]
        if old_prev is not None and old_prev.version not in self.loaded_versions():
            self._drain()
            self._apply_target(self.loaded_versions())
            lines.append(f"unloaded version {old_prev.version}; loaded: {self.loaded_versions()}")
        return StepResult(tuple(lines), time.monotonic() - started)

    @_exclusive
    def rollback(self, reason: str) -> StepResult:
        """With a canary taking traffic: the canary goes to 0%. Otherwise: back to the previous champion."""
        started = time.monotonic()
        self.ensure_registered()
        champion = self._champion()
        canaries = self.registry.find(self.model, "canary")
        if canaries:
            canary = canaries[0]
            t = time.monotonic()
            self._apply_router({champion.version: 100.0})
            switch = time.monotonic() - t
            ensembles = self._apply_ensembles({champion.version: 100.0})
            with self.registry.db.transaction():
                self.registry.set_state(self.model, canary.version, "rejected", 0.0, self.actor, "rollback", reason,
                                        {"switch_s": switch})
                self.registry.set_state(self.model, champion.version, "champion", 100.0, self.actor, "rollback",
                                        f"canary {canary.version} rolled back: {reason}")
            self._drain()
            self._apply_target(self.loaded_versions())
            return StepResult((f"router {self.router}: version {champion.version} 100%, canary version "
                               f"{canary.version} 0% (switched in {switch:.2f} s), unloaded", *ensembles),
                              time.monotonic() - started)
        prev = self.previous_champion()
        if prev is None:
            raise RolloutError(f"{self.model} has no canary and no previous champion to roll back to "
                               f"(champion: version {champion.version})")
        lines = []
        if prev.version not in ready_versions(self.client, self.model):
            self._apply_target(sorted({*self.loaded_versions(), prev.version}))
            lines.append(f"reloaded version {prev.version}")
        t = time.monotonic()
        self._apply_router({prev.version: 100.0})
        switch = time.monotonic() - t
        ensembles = self._apply_ensembles({prev.version: 100.0})
        with self.registry.db.transaction():
            self.registry.set_state(self.model, champion.version, "rejected", 0.0, self.actor, "rollback", reason,
                                    {"switch_s": switch, "restored": prev.version})
            self.registry.set_state(self.model, prev.version, "champion", 100.0, self.actor, "rollback",
                                    f"restored after rolling back version {champion.version}: {reason}")
        self._drain()
        self._apply_target(self.loaded_versions())
        lines.append(f"router {self.router}: version {prev.version} 100% (switched in {switch:.2f} s); version "
                     f"{champion.version} rejected and unloaded")
        lines.extend(ensembles)
        return StepResult(tuple(lines), time.monotonic() - started)

    # -- agreement -----------------------------------------------------------------------------------
    def disagreements(self) -> list[str]:
        """Where the registry, the server and the repository on disk do not say the same thing."""
        problems = []
        want_loaded = set(self.loaded_versions())
        ready = ready_versions(self.client, self.model)
        if ready != want_loaded:
            problems.append(
                f"{self.model}: server has versions {sorted(ready)} READY, registry expects {sorted(want_loaded)}"
            )
        disk_policy = self.disk_policy_versions()
        if disk_policy != want_loaded:
            problems.append(f"{self.model}: config.pbtxt on disk loads {sorted(disk_policy)}, registry expects "
                            f"{sorted(want_loaded)}")
        import json

        want = {v: p for v, p in self.registry.weights(self.model).items()}
        served_raw = self.client.model_config(self.router).get("parameters", {}).get(ROUTER_PARAM_WEIGHTS, {})
        served = {int(v): float(p) for v, p in json.loads(served_raw.get("string_value", "{}")).items()}
        if served != want:
            problems.append(f"{self.router}: server routes {served}, registry says {want}")
        if self.disk_weights() != want:
            problems.append(f"{self.router}: config.pbtxt on disk routes {self.disk_weights()}, registry says {want}")
        expected = self.ensemble_step_for(want)
        for name, index in self.routed_steps():
            disk_step = cfg.read_config(self.repository / name / "config.pbtxt").ensemble_scheduling.step[index]
            served_steps = self.client.model_config(name).get("ensemble_scheduling", {}).get("step", [])
            served = (served_steps[index].get("model_name"), int(served_steps[index].get("model_version", -1))) \
                if index < len(served_steps) else None
            for where, got in (("server runs", served), ("config.pbtxt on disk runs",
                                                         (disk_step.model_name, disk_step.model_version))):
                if got != expected:
                    problems.append(f"{name}: {where} step {index} as {got}, the registry's weights {want} need "
                                    f"{expected}")
        return problems
