"""Automatic rollback: a loop that reads Triton's own per-version metrics and sends the canary back to 0%
when, over a window, its error ratio or its p99 latency is worse than the champion's by the spec's margin
(`lifecycle.auto_rollback`). The reason, with the figures, goes into the registry's history.

Figures per version of the target model, from the metrics endpoint:
  requests  nv_inference_request_success + nv_inference_request_failure (deltas over the window)
  errors    nv_inference_request_failure (delta)
  p99       nv_inference_request_summary_us{quantile="0.99"} (Triton's sliding-window summary)
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

    def __init__(self, rollout: Rollout, metrics_url: str, interval_s: float = 2.0) -> None:
        self.rollout = rollout
        self.metrics_url = metrics_url
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
        why = f"automatic rollback over {self.rule.window_s:g} s: {reason}"
        self.rollout.actor = "watcher"
        self.rollout.rollback(why)
        self.samples.clear()
        return f"rolled back {model} canary version {canary.version}: {why}"

    def run(self, max_seconds: float | None = None) -> str | None:
        """Watch until a rollback happens (returns its reason) or max_seconds pass (returns None)."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while deadline is None or time.monotonic() < deadline:
            verdict = self.step()
            if verdict:
                return verdict
            time.sleep(self.interval_s)
        return None
