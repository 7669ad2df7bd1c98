"""Capacity plan by simulation: replicas for a request rate, and how the HPA follows a load ramp.

The per-replica figure comes from the committed benchmark (`bench/results.json`, written by
`make bench`): the highest single-image throughput of one target (default `triton-http/<ensemble>`,
the spec's classification ensemble over HTTP, dynamic batching on) among the points whose p99 is
within the SLO. One replica is what that benchmark measured: one embedded server pinned to one CPU.

The model (docs/kubernetes.md states the same assumptions):
* Each ready replica serves up to `peak_rps` (the highest throughput any point of the target reached);
  load spreads evenly over ready replicas (the Service balances connections, clients use many).
* Queueing per replica is M/M/1 at utilisation rho = load / capacity (waiting time rho / (mu (1 - rho)));
  above capacity the excess accumulates as a fluid backlog that drains at the spare capacity. Dynamic
  batching makes a real server degrade more gently than M/M/1 near saturation: the model is pessimistic
  there.
* The autoscaler sees the queue time per request averaged over the recording rule's 1 minute window, and
  pending requests 15 s late (scrape interval plus adapter); it acts every 15 s with the HPA algorithm:
  desired = ceil(replicas x metric / target), no change within a 0.1 tolerance, pods without metrics
  (still starting) counted as 0 when scaling up, the largest of the metrics' proposals, then the
  behaviour of the generated HPA (build_tools/k8s/manifests.py:hpa_behavior: stabilisation windows
  and scale-up/down policies).
* A new pod is ready `pod_start_s` after the HPA asks for it (scheduling, image start, model load);
  removed pods leave at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from build_tools.errors import ToolkitError
from build_tools.k8s.manifests import hpa_behavior

SYNC_S = 15  # the HPA controller's sync period (kube-controller-manager default)
TOLERANCE = 0.1  # its default tolerance
RATE_WINDOW_S = 60  # the recording rule's rate window
PENDING_LAG_S = 15
RHO_CAP = 0.999  # M/M/1 at or above saturation: the fluid backlog carries the rest


@dataclass(frozen=True)
class Measured:
    source: str
    target: str
    slo_ms: float
    rps_at_slo: float  # highest throughput with p99 within the SLO
    concurrency_at_slo: int
    p99_ms_at_slo: float
    peak_rps: float  # highest throughput of any point (the service rate of a replica)
    server_cpus: int


def default_target(ensemble: str) -> str:
    """The benchmark's name for the served ensemble over HTTP (loadtest/bench.py's client/model)."""
    return f"triton-http/{ensemble}"


def per_replica_throughput(bench: Path, target: str, slo_ms: float) -> Measured:
    try:
        data = json.loads(bench.read_text())
    except (OSError, ValueError) as e:
        raise ToolkitError(f"cannot read benchmark results {bench}: {e}; run `make bench`") from e
    points = [p for p in data.get("points", [])
              if p.get("target") == target and p.get("batch_size") == 1 and not p.get("failures")
              and "batching off" not in str(p.get("server", ""))]
    if not points:
        targets = sorted({str(p.get("target")) for p in data.get("points", [])})
        raise ToolkitError(f"--target {target!r}: no single-image point in {bench}; "
                           f"targets there: {', '.join(targets)}")
    within = [p for p in points if p["latency_ms"]["p99"] <= slo_ms]
    if not within:
        best = min(p["latency_ms"]["p99"] for p in points)
        raise ToolkitError(f"--slo-ms {slo_ms:g}: no point of {target} has p99 within it (best p99 {best:.1f} ms)")
    best = max(within, key=lambda p: p["throughput_rps"])
    return Measured(
        source=str(bench), target=target, slo_ms=slo_ms, rps_at_slo=float(best["throughput_rps"]),
        concurrency_at_slo=int(best["concurrency"]), p99_ms_at_slo=float(best["latency_ms"]["p99"]),
        peak_rps=float(max(p["throughput_rps"] for p in points)),
        server_cpus=len(data.get("cpu_split", {}).get("server", [])) or 1,
    )


@dataclass(frozen=True)
class Plan:
    rate_rps: float
    headroom: float
    per_replica_rps: float
    replicas: int


def plan(measured: Measured, rate_rps: float, headroom: float) -> Plan:
    if not 0 < headroom <= 1:
        raise ToolkitError(f"--headroom {headroom:g}: must be in (0, 1]")
    per_replica = measured.rps_at_slo * headroom
    return Plan(rate_rps, headroom, per_replica, max(1, math.ceil(rate_rps / per_replica)))


def describe_plan(p: Plan, m: Measured | None = None) -> str:
    return (f"capacity plan: {p.rate_rps:,.0f} requests/s needs {p.replicas} replica(s) at "
            f"{p.per_replica_rps:,.0f} requests/s each ({p.headroom:.0%} of the throughput at the SLO)")


@dataclass(frozen=True)
class Ramp:
    start_rps: float
    end_rps: float
    ramp_s: float
    hold_s: float

    def rate(self, t: float) -> float:
        if t >= self.ramp_s:
            return self.end_rps
        return self.start_rps + (self.end_rps - self.start_rps) * t / self.ramp_s

    @property
    def duration_s(self) -> int:
        return int(self.ramp_s + self.hold_s)


@dataclass(frozen=True)
class SimOptions:
    pod_start_s: float = 60.0
    min_replicas: int = 2
    max_replicas: int = 50
    queue_target_us: float = 5_000.0
    pending_target: float = 4.0
    behavior: dict[str, Any] = field(default_factory=hpa_behavior)


@dataclass
class SimResult:
    measured: Measured
    ramp: Ramp
    options: SimOptions
    t: list[int] = field(default_factory=list)
    offered_rps: list[float] = field(default_factory=list)
    capacity_rps: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)  # what the HPA set (pods asked for)
    ready: list[int] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)  # modelled queue time per request, instantaneous
    seen_queue_ms: list[float] = field(default_factory=list)  # what the autoscaler reads (1 min average)
    pending_per_pod: list[float] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)


def _wait_s(rho: float, mu: float) -> float:
    rho = min(rho, RHO_CAP)
    return rho / (mu * (1 - rho)) if rho > 0 else 0.0


def _policy_limit(policies: list[dict[str, Any]], base: int, up: bool) -> int:
    """The HPA's scaling limit from replicas `base` one period ago (selectPolicy Max: the loosest)."""
    limits = []
    for p in policies:
        step = math.ceil(base * p["value"] / 100) if p["type"] == "Percent" else p["value"]
        limits.append(base + step if up else base - step)
    return max(limits) if up else min(limits)


def simulate(measured: Measured, ramp: Ramp, opts: SimOptions) -> SimResult:
    mu = measured.peak_rps
    up, down = opts.behavior["scaleUp"], opts.behavior["scaleDown"]
    period_up = max(p["periodSeconds"] for p in up["policies"])
    period_down = max(p["periodSeconds"] for p in down["policies"])
    res = SimResult(measured, ramp, opts)
    replicas = opts.min_replicas
    pods: list[float] = [0.0] * replicas  # ready times; the initial pods are ready at t=0
    backlog = 0.0
    recommendations: list[tuple[int, int]] = []  # (t, desired) for the stabilisation windows
    history: list[tuple[int, int]] = [(0, replicas)]  # (t, replicas after each decision)
    for t in range(ramp.duration_s + 1):
        lam = ramp.rate(t)
        ready = sum(1 for r in pods if r <= t)
        cap = ready * mu
        backlog = max(0.0, backlog + lam - cap) if ready else backlog + lam
        rho = lam / cap if cap else math.inf
        wait = _wait_s(rho, mu) + (backlog / cap if cap else 0.0)
        pending = (lam * _wait_s(rho, mu) + backlog) / ready if ready else backlog
        res.t.append(t)
        res.offered_rps.append(lam)
        res.capacity_rps.append(cap)
        res.ready.append(ready)
        res.queue_ms.append(wait * 1e3)
        res.backlog.append(backlog)
        res.pending_per_pod.append(pending)
        window = res.queue_ms[-RATE_WINDOW_S:]
        res.seen_queue_ms.append(sum(window) / len(window))
        if t > 0 and t % SYNC_S == 0 and ready:
            seen_pending = res.pending_per_pod[max(0, t - PENDING_LAG_S)]
            proposals = []
            for value, target in ((res.seen_queue_ms[-1] * 1e3, opts.queue_target_us),
                                  (seen_pending, opts.pending_target)):
                # Pods still starting have no metrics: counted as 0 when scaling up.
                usage = value * ready / replicas
                ratio = usage / target
                proposals.append(replicas if abs(ratio - 1) <= TOLERANCE else math.ceil(replicas * ratio))
            desired = max(opts.min_replicas, min(opts.max_replicas, max(proposals)))
            recommendations.append((t, desired))
            # Stabilisation as the HPA controller does it: the lowest recommendation of the scale-up
            # window and the highest of the scale-down window bound the change from the current count.
            up_rec = min(d for (s, d) in recommendations if s > t - up["stabilizationWindowSeconds"] or s == t)
            down_rec = max(d for (s, d) in recommendations if s > t - down["stabilizationWindowSeconds"] or s == t)
            desired = replicas
            if desired < up_rec:
                desired = up_rec
            if desired > down_rec:
                desired = down_rec
            if desired > replicas:
                base = next((r for (s, r) in reversed(history) if s <= t - period_up), history[0][1])
                desired = min(desired, _policy_limit(up["policies"], base, up=True))
            elif desired < replicas:
                base = next((r for (s, r) in reversed(history) if s <= t - period_down), history[0][1])
                desired = max(desired, _policy_limit(down["policies"], base, up=False))
            desired = max(opts.min_replicas, min(opts.max_replicas, desired))
            if desired > replicas:
                pods += [t + opts.pod_start_s] * (desired - replicas)
            elif desired < replicas:
                pods = sorted(pods)[: desired]
            replicas = desired
            history.append((t, replicas))
        res.replicas.append(replicas)
    return res


def summary(res: SimResult) -> dict[str, Any]:
    slo = res.measured.slo_ms
    over = [i for i, q in enumerate(res.queue_ms) if q > slo]
    final_ready = res.ready[-1]
    reached = next((i for i, c in enumerate(res.capacity_rps) if c >= res.ramp.end_rps and i >= res.ramp.ramp_s), None)
    return {
        "peak_queue_ms": round(max(res.queue_ms), 2),
        "seconds_queue_over_slo": len(over),
        "requests_in_seconds_over_slo": round(sum(res.offered_rps[i] for i in over)),
        "max_backlog_requests": round(max(res.backlog)),
        "final_replicas": res.replicas[-1],
        "final_ready": final_ready,
        "final_utilisation": round(res.offered_rps[-1] / res.capacity_rps[-1], 3) if res.capacity_rps[-1] else None,
        "capacity_covers_rate_from_s": reached,
    }


def describe_simulation(res: SimResult) -> str:
    s = summary(res)
    r, m, o = res.ramp, res.measured, res.options
    return "\n".join([
        f"per replica: {m.rps_at_slo:,.0f} requests/s at p99 {m.p99_ms_at_slo:.1f} ms <= {m.slo_ms:g} ms "
        f"(concurrency {m.concurrency_at_slo}), peak {m.peak_rps:,.0f} requests/s; {m.target} in {m.source} "
        f"(one replica = {m.server_cpus} CPU)",
        f"simulated ramp {r.start_rps:,.0f} -> {r.end_rps:,.0f} requests/s over {r.ramp_s:g} s, then {r.hold_s:g} s; "
        f"pod start {o.pod_start_s:g} s; targets: queue {o.queue_target_us / 1000:g} ms/request, "
        f"{o.pending_target:g} pending/pod",
        f"  replicas at the end: {s['final_replicas']} ({s['final_ready']} ready, utilisation "
        f"{s['final_utilisation']}); peak modelled queue time {s['peak_queue_ms']:,.1f} ms; "
        f"{s['seconds_queue_over_slo']} s above the {m.slo_ms:g} ms SLO "
        f"({s['requests_in_seconds_over_slo']:,} requests offered in those seconds); "
        f"largest backlog {s['max_backlog_requests']:,} requests",
    ])


def to_json(p: Plan, res: SimResult) -> str:
    return json.dumps({
        "measured": asdict(res.measured), "plan": asdict(p), "ramp": asdict(res.ramp),
        "options": asdict(res.options), "summary": summary(res),
        "series": {k: getattr(res, k) for k in ("t", "offered_rps", "capacity_rps", "replicas", "ready",
                                                 "queue_ms", "seen_queue_ms", "pending_per_pod")},
    }, indent=1)


def plot(res: SimResult, p: Plan, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    ax1.plot(res.t, res.offered_rps, label="offered load")
    ax1.plot(res.t, res.capacity_rps, label="capacity of ready pods (peak)")
    ax1.axhline(p.rate_rps, ls=":", c="grey")
    ax1.set_ylabel("requests/s")
    ax1.legend(loc="upper left")
    ax1.set_title(f"HPA on a load ramp: {res.measured.target}, {res.measured.rps_at_slo:,.0f} req/s per replica at "
                  f"the {res.measured.slo_ms:g} ms SLO, pod start {res.options.pod_start_s:g} s")
    ax2.step(res.t, res.replicas, where="post", label="replicas asked for")
    ax2.step(res.t, res.ready, where="post", label="ready")
    ax2.axhline(p.replicas, ls=":", c="grey", label=f"plan: {p.replicas} at {p.headroom:.0%} headroom")
    ax2.set_ylabel("pods")
    ax2.legend(loc="upper left")
    ax3.plot(res.t, res.queue_ms, label="queue time per request (model)")
    ax3.plot(res.t, res.seen_queue_ms, label="as the autoscaler sees it (1 min rate)")
    ax3.axhline(res.options.queue_target_us / 1000, ls="--", c="green", label="autoscaling target")
    ax3.axhline(res.measured.slo_ms, ls="--", c="red", label="SLO")
    ax3.set_yscale("symlog", linthresh=1)
    ax3.set_ylim(bottom=0)
    ax3.set_ylabel("ms")
    ax3.set_xlabel("seconds")
    ax3.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
