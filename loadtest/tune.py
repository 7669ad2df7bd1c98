"""The SLO tuner behind ``triton-repo tune``: search a model's serving settings on the real server.

For one model of the spec it measures, on the embedded Triton started through the project's harness,
closed-loop gRPC load (``loadtest.loadgen``) at the target concurrency for each candidate setting:

* embedded instance count, ONNX Runtime intra-op threads (the runner's), dynamic batching's
  ``max_queue_delay_microseconds`` and ``max_batch_size``.

Preferred batch sizes and queue policies are not searched: on the embedded flavor they bring the
batcher's 500 ms stall back (docs/stall.md), and the linter warns about them.

The search is a coordinate descent from the spec's current settings (one dimension at a time, the
best value kept), so it costs a dozen server starts rather than the whole grid. The objective:

* ``--p99-ms X``: the highest throughput whose p99 is at most X ms (with no failure and no request
  over 250 ms); if none qualifies, the lowest p99;
* without it: the highest throughput with no failure and no request over 250 ms.

Requests are built from the model's interface (read from the ONNX graph or the spec): random data for
numeric inputs, the warmup files of the spec for BYTES inputs. The report (Markdown table, JSON and a
PNG of the throughput/p99 frontier) goes to ``--out``; with ``--write`` the chosen settings are written
back into the spec with a ruamel.yaml round trip that keeps its comments and layout.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.errors import ToolkitError
from build_tools.interfaces import resolve_model_io
from build_tools.spec import DeploySpec, load_spec
from loadtest import loadgen, procstat
from loadtest.servers import affinity, build_repository, split_cpus, triton

logger = logging.getLogger(__name__)

SLOW_MS = 250.0
_NP = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
       "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


class TuneError(ToolkitError):
    """The tuner cannot run as asked (unknown model, no way to build requests, no result)."""


@dataclass(frozen=True)
class Settings:
    instances: int
    intra_op_threads: int
    max_queue_delay_us: int
    max_batch_size: int

    def label(self) -> str:
        return (f"{self.instances} inst, {self.intra_op_threads} thr, delay {self.max_queue_delay_us} us, "
                f"max batch {self.max_batch_size}")


@dataclass
class Trial:
    settings: Settings
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    slow: int  # requests over 250 ms
    failures: int
    first_error: str | None = None
    # CPU of the server's whole process tree per answered request (ms): on a shared machine, where
    # other work takes wall time, the figure that ranks settings by cost rather than by luck.
    cpu_ms_per_request: float | None = None

    @property
    def clean(self) -> bool:
        return self.failures == 0 and self.slow == 0 and self.throughput_rps > 0


@dataclass
class TuneResult:
    model: str
    concurrency: int
    p99_target_ms: float | None
    start: Settings
    chosen: Settings
    trials: list[Trial] = field(default_factory=list)
    reason: str = ""


def current_settings(spec: DeploySpec, model: str) -> Settings:
    m = spec.models[model]
    groups = m.instance_groups.get("embedded") or []
    instances = sum(g.count for g in groups) if groups else 1
    delay = m.dynamic_batching.max_queue_delay_microseconds if m.dynamic_batching else 0
    return Settings(instances, m.runtime.intra_op_threads, delay, m.max_batch_size)


def model_overrides(spec_data: dict[str, Any], model: str, s: Settings) -> dict[str, Any]:
    """The model's spec section with ``s`` applied (for loadtest.servers.build_repository)."""
    section = copy.deepcopy(spec_data["models"][model])
    groups = section.setdefault("instance_groups", {})
    kind = (groups.get("embedded") or [{"kind": "KIND_CPU"}])[0].get("kind", "KIND_CPU")
    groups["embedded"] = [{"kind": kind, "count": s.instances}]
    section.setdefault("runtime", {})["intra_op_threads"] = s.intra_op_threads
    section.setdefault("dynamic_batching", {})["max_queue_delay_microseconds"] = s.max_queue_delay_us
    section["max_batch_size"] = s.max_batch_size
    if section.get("kind") == "python":
        section.pop("runtime", None)  # the runner's threads only exist for ONNX models
    return {model: section}


# --------------------------------------------------------------------------- requests


def _decode_any(body: bytes, batch: int) -> None:
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(body)
    if not response.raw_output_contents:
        raise loadgen.ResponseCheckError("gRPC response has no raw output")


def grpc_target(spec: DeploySpec, model: str, address: str, count: int = 32, seed: int = 0) -> loadgen.Target:
    """Single-item requests built from the model's interface."""
    from tritonclient.grpc import service_pb2

    io = resolve_model_io(spec, model)
    m = spec.models[model]
    files = {}
    for w in m.warmup:
        files.update({k: spec.resolve(v) for k, v in w.files.items()})
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        request = service_pb2.ModelInferRequest(model_name=model)
        for t in io.inputs:
            if t.optional:
                continue
            tensor = request.inputs.add(name=t.name)
            dims = [1 if d < 0 else d for d in t.dims]
            shape = ([1] if m.max_batch_size > 0 else []) + dims
            tensor.shape.extend(shape)
            if t.data_type == "STRING":
                if t.name not in files:
                    raise TuneError(f"models.{model}.inputs.{t.name}: a BYTES input needs sample data; add a "
                                    f"warmup with data: file and files: {{{t.name}: path}}")
                raw = files[t.name].read_bytes()
                tensor.datatype = "BYTES"
                request.raw_input_contents.append(len(raw).to_bytes(4, "little") + raw)
            elif t.data_type in _NP:
                tensor.datatype = t.data_type
                data = (rng.random(shape) * 255).astype(_NP[t.data_type])
                request.raw_input_contents.append(data.tobytes())
            else:
                raise TuneError(f"models.{model}.inputs.{t.name}: data type {t.data_type} is not supported by "
                                f"the tuner; supported: BYTES (STRING), {', '.join(_NP)}")
        requests.append(request.SerializeToString())
    return loadgen.Target(f"triton-grpc/{model}", "grpc", address, requests, [None] * count, 1, _decode_any,
                          check_response=False)


# --------------------------------------------------------------------------- search


def better(a: Trial, b: Trial | None, p99_target_ms: float | None) -> bool:
    """Whether ``a`` beats ``b`` under the objective."""
    if b is None:
        return True

    def key(t: Trial) -> tuple[float, ...]:
        ok = t.clean and (p99_target_ms is None or t.p99_ms <= p99_target_ms)
        # Qualifying trials by throughput; the others by p99 (closest to qualifying), always below.
        return (1.0, t.throughput_rps) if ok else (0.0, -t.p99_ms if t.failures == 0 else -1e18)

    return key(a) > key(b)


def min_max_batch_size(spec: DeploySpec, model: str) -> int:
    """The smallest max_batch_size the spec allows: its warmups and every ensemble that runs the model,
    directly or through its lifecycle router (which batches like its target and passes batches on whole)."""
    m = spec.models[model]
    names = {model, m.router_name(model)}
    needs = [w.batch_size for w in m.warmup]
    needs += [e.max_batch_size for e in spec.ensembles.values() if any(st.model in names for st in e.steps)]
    return max(needs, default=1)


def candidates(
    start: Settings, max_batch_limit: int, cpus: int, min_batch: int = 1
) -> list[tuple[str, list[Settings]]]:
    def vary(**kw: int) -> Settings:
        return Settings(**{**asdict(start), **kw})

    instances = sorted({1, 2, 3, 4, start.instances})
    threads = sorted({1, 2, start.intra_op_threads} & set(range(1, max(cpus, 1) + 1)) | {start.intra_op_threads})
    delays = sorted({0, 100, 500, 2000, start.max_queue_delay_us})
    batches = sorted({b for b in (16, 64, max_batch_limit) if min_batch <= b <= max_batch_limit}
                     | {start.max_batch_size})
    return [
        ("instances", [vary(instances=n) for n in instances]),
        ("intra_op_threads", [vary(intra_op_threads=n) for n in threads]),
        ("max_queue_delay_us", [vary(max_queue_delay_us=d) for d in delays]),
        ("max_batch_size", [vary(max_batch_size=b) for b in batches]),
    ]


def tune(
    spec_path: Path, model: str, concurrency: int, p99_target_ms: float | None = None, duration_s: float = 4.0,
    out: Path = Path("build/tune"), progress: Callable[[str], None] = lambda line: None,
) -> TuneResult:
    import yaml

    spec = load_spec(spec_path)
    if model not in spec.models:
        raise TuneError(f"--model {model!r}: not a model of {spec_path}; models: {sorted(spec.models)}")
    m = spec.models[model]
    if m.max_batch_size <= 0 or m.dynamic_batching is None:
        raise TuneError(f"models.{model}: the tuner needs a batching model (max_batch_size > 0 and "
                        f"dynamic_batching); got max_batch_size {m.max_batch_size}")
    data = yaml.safe_load(Path(spec_path).read_text())
    start = current_settings(spec, model)
    split = split_cpus()
    out.mkdir(parents=True, exist_ok=True)
    result = TuneResult(model, concurrency, p99_target_ms, start, start)
    measured: dict[Settings, Trial] = {}
    best: Trial | None = None

    def measure(s: Settings) -> Trial:
        if s in measured:
            return measured[s]
        with tempfile.TemporaryDirectory(prefix="tune-") as tmp:
            repo = build_repository(Path(tmp) / "repo", spec_path, models=model_overrides(data, model, s))
            with triton([repo], out / "triton.log", cpus=split.server if split.pinned else None) as server:
                target = grpc_target(spec, model, server.grpc_url)
                pid = server.process.pid if server.process else None
                before = procstat.tree_cpu(pid) if pid else {}
                with affinity(split.client if split.pinned else None):
                    r = loadgen.run_load(target, concurrency, duration_s, warmup_s=1.0, slow_ms=(SLOW_MS,))
                spent = sum(procstat.cpu_delta(before, procstat.tree_cpu(pid)).values()) if pid else 0.0
        lat = r.latency_ms
        # requests answered over the warm-up and the window, at the window's rate
        answered = r.throughput_rps * (duration_s + 1.0)
        cpu_ms = 1000.0 * spent / answered if spent > 0 and answered > 0 else None
        trial = Trial(s, r.throughput_rps, lat.get("p50", float("nan")), lat.get("p99", float("nan")),
                      lat.get("max", float("nan")), r.slow.get(f"{SLOW_MS:g}", 0), r.failures, r.first_error,
                      cpu_ms)
        measured[s] = trial
        result.trials.append(trial)
        progress(f"[{len(result.trials):2d}] {s.label():<48} {trial.throughput_rps:8.0f} req/s  p50 "
                 f"{trial.p50_ms:7.2f}  p99 {trial.p99_ms:7.2f}  max {trial.max_ms:7.1f} ms  "
                 f">{SLOW_MS:g}ms {trial.slow}  failures {trial.failures}  server CPU "
                 f"{'n/a' if cpu_ms is None else f'{cpu_ms:.3f}'} ms/request")
        return trial

    best = measure(start)
    for dimension, options in candidates(start, max(m.max_batch_size, 64), len(split.server),
                                         min_max_batch_size(spec, model)):
        progress(f"-- {dimension}")
        base = best.settings
        for option in options:
            s = Settings(**{**asdict(base), dimension: getattr(option, dimension)})
            trial = measure(s)
            if better(trial, best, p99_target_ms):
                best = trial
    result.chosen = best.settings
    met = best.clean and (p99_target_ms is None or best.p99_ms <= p99_target_ms)
    result.reason = (
        f"{'highest throughput' if met else 'no setting met the target; lowest p99'} at concurrency "
        f"{concurrency}{f' with p99 <= {p99_target_ms:g} ms' if p99_target_ms and met else ''}: "
        f"{best.throughput_rps:.0f} req/s, p99 {best.p99_ms:.2f} ms, {best.slow} over {SLOW_MS:g} ms, "
        f"{best.failures} failures"
    )
    write_report(result, out, split.describe())
    return result


# --------------------------------------------------------------------------- report and write-back


def frontier(trials: list[Trial]) -> list[Trial]:
    """The trials no other trial beats on both throughput and p99 (failure-free ones only)."""
    ok = [t for t in trials if t.failures == 0 and t.throughput_rps > 0]
    return sorted((t for t in ok if not any(
        o.throughput_rps >= t.throughput_rps and o.p99_ms <= t.p99_ms and o is not t
        and (o.throughput_rps > t.throughput_rps or o.p99_ms < t.p99_ms) for o in ok)),
        key=lambda t: t.p99_ms)


def write_report(result: TuneResult, out: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = frontier(result.trials)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([t.p99_ms for t in result.trials], [t.throughput_rps for t in result.trials], c="0.6",
               label="tried")
    ax.plot([t.p99_ms for t in front], [t.throughput_rps for t in front], "o-", color="C0", label="frontier")
    chosen = next(t for t in result.trials if t.settings == result.chosen)
    ax.scatter([chosen.p99_ms], [chosen.throughput_rps], s=160, facecolors="none", edgecolors="C3",
               linewidths=2, label="chosen")
    if result.p99_target_ms:
        ax.axvline(result.p99_target_ms, color="C3", linestyle=":", label=f"p99 target {result.p99_target_ms:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (req/s)")
    ax.set_title(f"{result.model}: settings tried at concurrency {result.concurrency}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"tune_{result.model}.png", dpi=110)
    plt.close(fig)
    rows = ["| instances | intra-op threads | queue delay (us) | max batch | req/s | p50 ms | p99 ms | max ms "
            "| >250 ms | failures | server CPU ms/request | |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in result.trials:
        s = t.settings
        mark = "**chosen**" if s == result.chosen else ("start" if s == result.start else "")
        mark += " frontier" if t in front else ""
        rows.append(f"| {s.instances} | {s.intra_op_threads} | {s.max_queue_delay_us} | {s.max_batch_size} | "
                    f"{t.throughput_rps:,.0f} | {t.p50_ms:.2f} | {t.p99_ms:.2f} | {t.max_ms:.1f} | {t.slow} | "
                    f"{t.failures} | {'–' if t.cpu_ms_per_request is None else f'{t.cpu_ms_per_request:.3f}'} | "
                    f"{mark.strip()} |")
    target = f"p99 <= {result.p99_target_ms:g} ms" if result.p99_target_ms else "highest clean throughput"
    text = (f"# Tuning {result.model}\n\nTarget: {target} at concurrency {result.concurrency} (gRPC, "
            f"closed loop). Machine: {machine}.\n\nChosen: {result.chosen.label()} — {result.reason}.\n\n"
            + "\n".join(rows) + f"\n\n![frontier](tune_{result.model}.png)\n")
    (out / f"tune_{result.model}.md").write_text(text)
    (out / f"tune_{result.model}.json").write_text(json.dumps(
        {"model": result.model, "concurrency": result.concurrency, "p99_target_ms": result.p99_target_ms,
         "start": asdict(result.start), "chosen": asdict(result.chosen), "reason": result.reason,
         "trials": [{**asdict(t.settings), **{k: v for k, v in asdict(t).items() if k != "settings"}}
                    for t in result.trials]}, indent=1))


def write_back(spec_path: Path, model: str, s: Settings) -> None:
    """Write ``s`` into the spec file, keeping its comments, order and flow styles (ruamel round trip)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    yaml.indent(mapping=2, sequence=4, offset=2)  # the spec's style: "- " indented under its key
    doc = yaml.load(spec_path.read_text())
    section = doc["models"][model]
    section["max_batch_size"] = s.max_batch_size
    db = section.get("dynamic_batching")
    if db is None:
        db = section["dynamic_batching"] = CommentedMap()
    db["max_queue_delay_microseconds"] = s.max_queue_delay_us
    groups = section.get("instance_groups")
    if groups is None:
        groups = section["instance_groups"] = CommentedMap()
    embedded = groups.get("embedded")
    if embedded:
        embedded[0]["count"] = s.instances
        for extra in list(embedded[1:]):
            embedded.remove(extra)
    else:
        seq = CommentedSeq([CommentedMap(kind="KIND_CPU", count=s.instances)])
        seq.fa.set_flow_style()
        groups["embedded"] = seq
    if section.get("kind", "onnx") == "onnx":
        runtime = section.get("runtime")
        if runtime is None:
            runtime = section["runtime"] = CommentedMap()
        runtime["intra_op_threads"] = s.intra_op_threads
    with open(spec_path, "w") as f:
        yaml.dump(doc, f)
    load_spec(spec_path)  # still a valid spec


def main_progress(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
