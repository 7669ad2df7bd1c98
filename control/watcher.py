"""Automatic rollback: a loop that reads Triton's own per-version metrics and sends the canary back to 0%
when, over a window, its error ratio or its p99 latency is worse than the champion's by the spec's margin
(`lifecycle.auto_rollback`). The reason, with the figures, goes into the registry's history.

Figures per version of the target model, from the metrics endpoint:
  requests  nv_inference_request_success + nv_inference_request_failure (deltas over the window)
  errors    nv_inference_request_failure (delta)
  p99       nv_inference_request_summary_us{quantile="0.99"} (Triton's sliding-window summary)

With a drift monitor (`monitor_url`, triton-monitor serve), the canary also goes back when the monitor's
verdict on it, from labelled traffic, is `canary_worse` (its accuracy interval below the champion's) or
`accuracy_drop` (below its held-out accuracy by more than monitoring.drift.max_accuracy_drop): the same
verdicts as the ModelCanaryWorse and ModelAccuracyDrop alerts.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from build_tools.spec import AutoRollbackSpec
from control.rollout import Rollout
from triton_api.metrics import metric_series, scrape

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionSample:
    success: float = 0.0
    failure: float = 0.0
    p99_us: float | None = None


@dataclass(frozen=True)
class Window:
    """One version's figures over the watcher's window."""

    requests: float
    failures: float
    p99_ms: float | None

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def parse_metrics(text: str, model: str) -> dict[int, VersionSample]:
    """Per-version counters of one model from Prometheus text (labels other than version are summed)."""
    success: dict[int, float] = defaultdict(float)
    failure: dict[int, float] = defaultdict(float)
    p99: dict[int, float] = {}
    for name, store in (("nv_inference_request_success", success), ("nv_inference_request_failure", failure)):
        for labels, value in metric_series(text, name):
            if labels.get("model") == model and labels.get("version", "").isdigit():
                store[int(labels["version"])] += value
    for labels, value in metric_series(text, "nv_inference_request_summary_us"):
        # NaN (value != value) when the summary's window is empty.
        if (labels.get("model") == model and labels.get("version", "").isdigit()
                and labels.get("quantile") == "0.99" and value == value):
            p99[int(labels["version"])] = value
    versions = set(success) | set(failure) | set(p99)
    return {v: VersionSample(success[v], failure[v], p99.get(v)) for v in versions}


@dataclass(frozen=True)
class Accuracy:
    """The monitor's figures for one version: its checks that fail, its accuracy interval."""

    alarms: frozenset[str]
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    labelled: float | None = None


def parse_monitor(text: str, model: str) -> dict[int, Accuracy]:
    """Per-version verdicts and accuracy of one model from the drift monitor's Prometheus text."""
    alarms: dict[int, set[str]] = defaultdict(set)
    bounds: dict[int, dict[str, float]] = defaultdict(dict)
    labelled: dict[int, float] = {}
    for labels, value in metric_series(text, "tdk_monitor_check_alarm"):
        if labels.get("model") == model and labels.get("version", "").isdigit() and value > 0:
            alarms[int(labels["version"])].add(labels.get("check", ""))
    for labels, value in metric_series(text, "tdk_monitor_accuracy_ratio"):
        if labels.get("model") == model and labels.get("version", "").isdigit():
            bounds[int(labels["version"])][labels.get("bound", "")] = value
    for labels, value in metric_series(text, "tdk_monitor_window_records"):
        if labels.get("model") == model and labels.get("version", "").isdigit() and labels.get("window") == "labels":
            labelled[int(labels["version"])] = value
    return {
        v: Accuracy(frozenset(alarms.get(v, ())), bounds[v].get("estimate"), bounds[v].get("lower"),
                    bounds[v].get("upper"), labelled.get(v))
        for v in set(alarms) | set(bounds) | set(labelled)
    }


def judge_accuracy(champion: Accuracy | None, canary: Accuracy | None) -> str | None:
    """Why the canary must go back by the monitor's verdicts, with the figures, or None."""
    if canary is None:
        return None

    def fmt(a: Accuracy | None) -> str:
        if a is None or a.estimate is None:
            return "no accuracy yet"
        return f"{a.estimate:.2%} [{a.lower:.2%}, {a.upper:.2%}] over {a.labelled or 0:.0f} labels"

    reasons = []
    if "canary_worse" in canary.alarms:
        reasons.append(f"accuracy from labels {fmt(canary)} below the champion's {fmt(champion)} "
                       "(the intervals separate)")
    if "accuracy_drop" in canary.alarms:
        reasons.append(f"accuracy from labels {fmt(canary)} below its held-out accuracy by more than "
                       "monitoring.drift.max_accuracy_drop")
    return "; ".join(reasons) or None


def window(old: VersionSample, new: VersionSample) -> Window:
    requests = (new.success + new.failure) - (old.success + old.failure)
    return Window(max(requests, 0.0), max(new.failure - old.failure, 0.0),
                  None if new.p99_us is None else new.p99_us / 1000.0)


def judge(champion: Window, canary: Window, rule: AutoRollbackSpec) -> str | None:
    """Why the canary must go back to 0%, or None. Pure: the unit tests drive it with figures."""
    if canary.requests < rule.min_requests or champion.requests < rule.min_requests:
        return None
    reasons = []
    gap = canary.error_ratio - champion.error_ratio
    if gap > rule.max_error_ratio_increase:
        reasons.append(
            f"error ratio {canary.error_ratio:.2%} vs champion {champion.error_ratio:.2%} "
            f"(+{gap:.2%} > {rule.max_error_ratio_increase:.2%}) over {canary.requests:.0f} requests"
        )
    if (canary.p99_ms is not None and champion.p99_ms is not None
            and canary.p99_ms > champion.p99_ms * rule.max_p99_ratio
            and canary.p99_ms - champion.p99_ms > rule.min_p99_increase_ms):
        reasons.append(
            f"p99 {canary.p99_ms:.1f} ms vs champion {champion.p99_ms:.1f} ms "
            f"(> {rule.max_p99_ratio:g}x and +{rule.min_p99_increase_ms:g} ms)"
        )
    return "; ".join(reasons) or None


class Watcher:
    """Scrapes every `interval_s`; judges the canary against the champion over `auto_rollback.window_s`."""

    def __init__(self, rollout: Rollout, metrics_url: str, interval_s: float = 2.0,
                 monitor_url: str | None = None) -> None:
        self.rollout = rollout
        self.metrics_url = metrics_url
        self.monitor_url = monitor_url
        self.interval_s = interval_s
        self.rule = rollout.lifecycle.auto_rollback
        self.samples: deque[tuple[float, dict[int, VersionSample]]] = deque()

    def scrape(self) -> dict[int, VersionSample]:
        return parse_metrics(scrape(self.metrics_url), self.rollout.model)

    def step(self, now: float | None = None) -> str | None:
        """One scrape and one verdict; rolls the canary back and returns the reason when it must go."""
        now = time.monotonic() if now is None else now
        self.samples.append((now, self.scrape()))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.rule.window_s:
            self.samples.popleft()
        registry, model = self.rollout.registry, self.rollout.model
        canaries = registry.find(model, "canary")
        champion = registry.champion(model)
        if canaries and champion is not None and self.monitor_url:
            figures = parse_monitor(scrape(self.monitor_url), model)
            reason = judge_accuracy(figures.get(champion.version), figures.get(canaries[0].version))
            logger.info("watch %s (monitor): canary v%d -> %s", model, canaries[0].version, reason or "ok")
            if reason:
                return self._roll_back(canaries[0].version, f"automatic rollback from the drift monitor: {reason}")
        if not canaries or champion is None or now - self.samples[0][0] < self.rule.window_s * 0.999:
            return None
        (_, old), (_, new) = self.samples[0], self.samples[-1]
        canary = canaries[0]
        empty = VersionSample()
        w_champ = window(old.get(champion.version, empty), new.get(champion.version, empty))
        w_canary = window(old.get(canary.version, empty), new.get(canary.version, empty))
        reason = judge(w_champ, w_canary, self.rule)
        logger.info("watch %s: champion v%d %s, canary v%d %s -> %s", model, champion.version, w_champ,
                    canary.version, w_canary, reason or "ok")
        if reason is None:
            return None
        return self._roll_back(canary.version, f"automatic rollback over {self.rule.window_s:g} s: {reason}")

    def _roll_back(self, version: int, why: str) -> str:
        self.rollout.actor = "watcher"
        self.rollout.rollback(why)
        self.samples.clear()
        return f"rolled back {self.rollout.model} canary version {version}: {why}"

    def run(self, max_seconds: float | None = None) -> str | None:
        """Watch until a rollback happens (returns its reason) or max_seconds pass (returns None)."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while deadline is None or time.monotonic() < deadline:
            verdict = self.step()
            if verdict:
                return verdict
            time.sleep(self.interval_s)
        return None
