"""Drift and accuracy from the prediction log: one `Snapshot` per (model, version), computed from the
database and the version's reference (`reference.json`, written beside the version at build time).

  input drift       PSI of each input statistic over the latest `window` records vs the reference's bins
  prediction drift  chi-square of the predicted-class counts over the same window vs the reference's
                    predicted classes (a two-sample test: the reference is n held-out images)
  accuracy          over the latest `label_window` labelled records, with a Wilson interval
  label coverage    share of the latest `label_window` records that have a label
  label delay       label time - prediction time over those labelled records (median, 90th percentile)
  labels            late (delay > late_label_s), pending (no prediction yet, within the grace period),
                    unknown (no prediction after the grace period)

Verdicts use the spec's thresholds (`monitoring.drift`), so the Prometheus rules, the demo and the
lifecycle watcher judge the same way. Nothing is published for a window smaller than `min_window`, or
for accuracy with fewer than `min_labels` labels.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from build_tools.errors import DatabaseError
from build_tools.spec import DriftSpec
from control.db import Database
from control.monitor.contract import STAT_NAMES, Reference
from control.monitor.measures import (
    ChiSquare,
    Interval,
    bin_shares,
    chi_square,
    chi_square_homogeneity,
    psi,
    wilson,
)

logger = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """One version's figures at one moment; None where there is not enough data yet."""

    model: str
    version: str
    window: int = 0
    psi: dict[str, float] = field(default_factory=dict)
    chi2: ChiSquare | None = None
    class_shares: list[float] = field(default_factory=list)
    labelled: int = 0
    recent: int = 0  # records considered for coverage (latest label_window)
    accuracy: Interval | None = None
    reference_accuracy: float | None = None
    coverage: float | None = None
    delay_p50_s: float | None = None
    delay_p90_s: float | None = None
    role: str = ""  # champion / canary / staged from the lifecycle registry, "" when unregistered

    def input_drift(self, spec: DriftSpec) -> bool:
        return bool(self.psi) and max(self.psi.values()) > spec.psi_alert

    def prediction_drift(self, spec: DriftSpec) -> bool:
        return self.chi2 is not None and self.chi2.p_value < spec.chi2_p_value

    def accuracy_drop(self, spec: DriftSpec) -> bool:
        return (self.accuracy is not None and self.reference_accuracy is not None
                and self.accuracy.high < self.reference_accuracy - spec.max_accuracy_drop)


def canary_worse(champion: Snapshot | None, canary: Snapshot | None) -> bool:
    """The canary's accuracy interval lies wholly below the champion's (they separate)."""
    return (champion is not None and canary is not None and champion.accuracy is not None
            and canary.accuracy is not None and canary.accuracy.high < champion.accuracy.low)


@dataclass(frozen=True)
class LabelStatus:
    late: int
    pending: int
    unknown: int


class References:
    """`reference.json` of each version, looked up in the model repositories (cached; re-read when absent,
    so a version staged after the monitor started is picked up)."""

    def __init__(self, repositories: Sequence[Path]) -> None:
        self.repositories = [Path(r) for r in repositories]
        self._cache: dict[tuple[str, str], Reference] = {}
        self._warned: set[tuple[str, str]] = set()

    def add(self, ref: Reference) -> None:
        self._cache[(ref.model, ref.version)] = ref

    def get(self, model: str, version: str) -> Reference | None:
        key = (model, version)
        if key in self._cache:
            return self._cache[key]
        for repo in self.repositories:
            folder = repo / model / version
            if (folder / Reference.FILENAME).is_file():
                ref = Reference.read(folder)
                self._cache[key] = ref
                return ref
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("no %s for %s version %s in %s: its drift is not measured", Reference.FILENAME,
                           model, version, [str(r) for r in self.repositories])
        return None


def _roles(db: Database) -> dict[tuple[str, str], str]:
    try:
        rows = db.query("SELECT model, version, state FROM model_versions")
    except DatabaseError:
        return {}  # no lifecycle registry in this database (no version was ever staged)
    return {(r["model"], str(r["version"])): r["state"] for r in rows}


def versions(db: Database) -> list[tuple[str, str]]:
    return [(r["model"], r["version"]) for r in
            db.query("SELECT DISTINCT model, version FROM predictions ORDER BY model, version")]


def window_figures(snap: Snapshot, predicted: Sequence[int], stats: Sequence[dict[str, float]],
                   ref: Reference | None, spec: DriftSpec) -> Snapshot:
    """Fill the window's figures (size, class shares, chi-square, PSI per statistic) from its records."""
    snap.window = len(predicted)
    if not predicted:
        return snap
    classes = max(len(ref.classes) if ref else 0, 1 + max(predicted))
    counts = np.bincount(np.asarray(predicted, dtype=np.int64), minlength=classes)
    snap.class_shares = (counts / counts.sum()).tolist()
    if ref is None or snap.window < spec.min_window:
        return snap
    shares = np.array([*ref.classes, *([0.0] * (classes - len(ref.classes)))])
    # The reference's shares come from ref.n held-out images: a test of two samples, so their own
    # sampling noise is not taken for drift (the goodness-of-fit test when n is unknown).
    snap.chi2 = (chi_square_homogeneity(counts, shares * ref.n) if ref.n > 0 else chi_square(counts, shares))
    for name in STAT_NAMES:
        if name not in ref.stats:
            continue
        values = [s[name] for s in stats if name in s]
        if len(values) >= spec.min_window:
            snap.psi[name] = psi(ref.stats[name]["probs"], bin_shares(values, ref.stats[name]["edges"]))
    return snap


def snapshot(db: Database, model: str, version: str, ref: Reference | None, spec: DriftSpec,
             role: str = "") -> Snapshot:
    snap = Snapshot(model, version, role=role)
    rows = db.query(
        "SELECT predicted, stats FROM predictions WHERE model = ? AND version = ? ORDER BY ts DESC, id DESC LIMIT ?",
        (model, version, spec.window),
    )
    if ref is not None:
        snap.reference_accuracy = ref.accuracy
    window_figures(snap, [int(r["predicted"]) for r in rows], [json.loads(r["stats"] or "{}") for r in rows], ref,
                   spec)
    # Labels: the latest label_window records of the version, with their label when one has arrived.
    recent = db.query(
        "SELECT p.predicted, p.ts AS pts, l.label, l.ts AS lts FROM predictions p"
        " LEFT JOIN labels l ON l.request_id = p.request_id"
        " WHERE p.model = ? AND p.version = ? ORDER BY p.ts DESC, p.id DESC LIMIT ?",
        (model, version, spec.label_window),
    )
    labelled = [r for r in recent if r["label"] is not None]
    snap.recent, snap.labelled = len(recent), len(labelled)
    if recent:
        snap.coverage = len(labelled) / len(recent)
    if labelled:
        delays = np.array([max(float(r["lts"]) - float(r["pts"]), 0.0) for r in labelled])
        snap.delay_p50_s, snap.delay_p90_s = (float(q) for q in np.quantile(delays, [0.5, 0.9]))
    if len(labelled) >= spec.min_labels:
        correct = sum(int(r["predicted"]) == int(r["label"]) for r in labelled)
        snap.accuracy = wilson(correct, len(labelled), spec.confidence)
    return snap


def label_status(db: Database, spec: DriftSpec, now: float | None = None) -> LabelStatus:
    now = time.time() if now is None else now
    late = db.query_one(
        "SELECT COUNT(DISTINCT l.request_id) AS n FROM labels l JOIN predictions p ON p.request_id = l.request_id"
        " WHERE l.ts - p.ts > ?", (spec.late_label_s,))
    orphans = db.query(
        "SELECT l.ts FROM labels l LEFT JOIN predictions p ON p.request_id = l.request_id WHERE p.id IS NULL")
    cutoff = now - spec.unknown_label_grace_s
    unknown = sum(1 for r in orphans if float(r["ts"]) < cutoff)
    return LabelStatus(int(late["n"]) if late else 0, len(orphans) - unknown, unknown)


def snapshots(db: Database, refs: References, spec: DriftSpec, registry: Database | None = None) -> list[Snapshot]:
    """Every version in the log; roles from the lifecycle registry (`registry`, default the log's database)."""
    roles = _roles(registry or db)
    return [snapshot(db, m, v, refs.get(m, v), spec, roles.get((m, v), "")) for m, v in versions(db)]
