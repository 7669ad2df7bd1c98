"""Prediction-log records and references for the monitor's tests, written through the contract."""

from __future__ import annotations

import numpy as np

from control.monitor.contract import STAT_NAMES, PredictionRecord, Reference


def reference_from(stats: dict[str, np.ndarray], predicted: np.ndarray, accuracy: float, model: str = "clf",
                   version: str = "1", bins: int = 10, classes: int = 10) -> Reference:
    """A reference with decile bins of each statistic (open ends) and the class shares of `predicted`."""
    out: dict[str, dict[str, list[float | None]]] = {}
    for name, values in stats.items():
        inner = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        edges: list[float | None] = [None, *(float(e) for e in inner), None]
        idx = np.searchsorted(inner, values, side="right")
        probs = np.bincount(idx, minlength=len(inner) + 1) / len(values)
        out[name] = {"edges": edges, "probs": probs.tolist()}
    shares = np.bincount(predicted, minlength=classes) / len(predicted)
    return Reference(model=model, version=version, n=len(predicted), accuracy=accuracy, classes=shares.tolist(),
                     stats=out)


def synthetic_stats(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    """Five statistics shaped like MNIST's; `shift` moves every one by that many standard deviations."""
    base = {
        "mean_intensity": (0.13, 0.03), "ink_fraction": (0.19, 0.04), "bbox_size": (19.0, 1.5),
        "com_offset": (0.6, 0.3), "original_size": (28.0, 0.0),
    }
    return {name: rng.normal(mu + shift * max(sd, 1e-3), max(sd, 1e-3), n) for name, (mu, sd) in base.items()}


def records(rng: np.random.Generator, n: int, model: str = "clf", version: str = "1", shift: float = 0.0,
            dominant: int | None = None, start_ts: float = 1000.0, prefix: str = "r",
            truth: np.ndarray | None = None, accuracy: float = 0.98) -> tuple[list[PredictionRecord], np.ndarray]:
    """n records (and their true classes): predictions are right with probability `accuracy`."""
    stats = synthetic_stats(rng, n, shift)
    if truth is None:
        truth = rng.integers(0, 10, n) if dominant is None else np.where(rng.random(n) < 0.6, dominant,
                                                                          rng.integers(0, 10, n))
    wrong = rng.random(n) > accuracy
    predicted = np.where(wrong, (truth + 1 + rng.integers(0, 9, n)) % 10, truth)
    out = [
        PredictionRecord(f"{prefix}{i}", start_ts + i * 0.01, model, version, int(predicted[i]), 0.9,
                         {name: float(stats[name][i]) for name in STAT_NAMES})
        for i in range(n)
    ]
    return out, truth


def monitor_scrape(db_url: str) -> str:
    """The text of a real monitor's /metrics over a log where every family has series: a champion and a
    canary with labels (accuracy by role), drifted inputs (PSI, chi-square), a duplicate and a pending
    label."""
    import urllib.request

    from build_tools.spec import DriftSpec
    from control.db import Database
    from control.monitor import feedback
    from control.monitor.contract import write_predictions
    from control.monitor.drift import References
    from control.monitor.service import Monitor, MonitorServer
    from control.registry import Registry

    rng = np.random.default_rng(0)
    refs = References([])
    with Database(db_url) as db:
        feedback.migrate(db)
        registry = Registry(db)
        for version, state in (("1", "champion"), ("2", "canary")):
            refs.add(reference_from(synthetic_stats(rng, 2000), rng.integers(0, 10, 2000), 0.98, version=version))
            registry.add("clf", int(version), version * 64, f"v{version}.onnx", "test", state, {}, "test")
            recs, truth = records(rng, 300, version=version, prefix=f"v{version}-", shift=1.0)
            write_predictions(db, recs)
            feedback.ingest(db, [feedback.Label(r.request_id, int(t)) for r, t in zip(recs, truth)], "test")
        feedback.ingest(db, [feedback.Label("v1-0", 3), feedback.Label("not-yet", 1)], "test")
        monitor = Monitor(db, refs, DriftSpec(min_window=100, min_labels=50))
        monitor.update()
        with MonitorServer(monitor) as server, urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
            return r.read().decode()
