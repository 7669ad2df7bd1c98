"""`make drift-demo`: drift, alerts, late labels, fine-tuning, canary and promotion on the embedded server.

Generic: the model, its ensemble, the data and the shift come from the spec. The model's adapter
(`lifecycle.finetune.adapter`, a module under the model's own folder) supplies the labelled stream
the reference never saw (`stream_data`), the shift the spec names (`monitoring.models.<model>.shift`,
one of the adapter's SHIFTS) and how one input becomes the ensemble's raw request (`encode_request`).

1. The embedded repository is built from the spec with `monitoring.keep_inputs_rate` set to what
   fine-tuning needs (every logged record keeps its input; deploy.yaml's default keeps 1 in 10), printed
   with the rest of the settings. Each classifier version gets its reference.json. The server runs in
   explicit model-control mode (the lifecycle steps load versions) and writes the prediction log into a
   SQLite file of the demo's folder, which is also the lifecycle registry.
2. The drift monitor (control.monitor) runs beside it, and a local Prometheus with the project's alert
   rules scrapes it (when the `prometheus` binary is installed); a thread notes when each alert fires.
3. Clean traffic: the adapter's stream, encoded, to the ensemble, each with a request id. Quiet.
4. The shifted stream: every `step` requests the monitor recomputes; the detection delay is the number
   of shifted requests sent when the input-drift check first fails.
5. One class dominating: inputs of one class only, until the prediction-drift check fails.
6. Labels arrive (POST /labels, keyed by request id): the accuracy from labels drops, with its interval.
7. The alerts in Prometheus (ModelInputDrift, ModelPredictionDrift, after their `for:` minute).
8. The false-alarm rate: windows resampled from the logged clean records, judged like the monitor.
9. `triton-repo finetune` (the real command, in a subprocess) trains from the logged, labelled feedback,
   judges the candidate (the fine-tune gate), stages it (lint, gate, load, its own reference.json, the
   served check) and sends it a canary share.
10. Canary: more shifted traffic; the split per version from the prediction log; labels; the accuracy
   of each version from the monitor.
11. `triton-repo promote`; more shifted traffic, all on the new champion: its accuracy, and the
   monitor comparing it with its own reference.json.

Every number is printed; the figures also go to `<workdir>/drift_demo.json` and a PNG
(`drift_panel.png`: the drift checks over the streams, and accuracy before and after fine-tuning).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from build_tools.errors import ToolkitError
from build_tools.spec import DeploySpec, DriftSpec
from control.db import Database
from control.monitor.contract import Reference, prediction_from_row
from control.monitor.drift import Snapshot, window_figures
from control.monitor.service import Monitor, MonitorServer

logger = logging.getLogger(__name__)

Say = Callable[[str], None]


Encode = Callable[[np.ndarray], bytes]


@dataclass(frozen=True)
class ScenarioData:
    """What the model's adapter gives the scenario: labelled inputs, the shift, the request encoding."""

    adapter: Path
    inputs: np.ndarray  # model-ready, uint8 [N, *input dims]
    labels: np.ndarray  # int64 [N]
    shift_name: str
    shift: Callable[[np.ndarray], np.ndarray]
    encode: Encode


def scenario_data(spec: DeploySpec, model: str) -> ScenarioData:
    """The adapter named by the spec (`models.<model>.lifecycle.finetune.adapter`) and the shift it chose
    (`monitoring.models.<model>.shift`); errors name the field, the value and what is allowed."""
    from control.finetune import load_adapter

    lifecycle = spec.models[model].lifecycle
    if lifecycle is None or lifecycle.finetune is None:
        raise ToolkitError(f"models.{model}.lifecycle.finetune.adapter is not set: the drift scenario takes its "
                           f"data and shift from the model's adapter")
    path = spec.resolve(lifecycle.finetune.adapter)
    adapter: ModuleType = load_adapter(path)
    missing = [f for f in ("stream_data", "encode_request") if not callable(getattr(adapter, f, None))]
    shifts = getattr(adapter, "SHIFTS", None)
    if missing or not isinstance(shifts, dict):
        raise ToolkitError(f"lifecycle.finetune.adapter: {path} lacks {missing or ['SHIFTS']}; the drift scenario "
                           f"needs stream_data(), encode_request(input) and SHIFTS {{name: function}}")
    watched = spec.monitoring.models.get(model)
    name = watched.shift if watched is not None else None
    if name not in shifts:
        raise ToolkitError(f"monitoring.models.{model}.shift: {name!r} is not a shift of {path.name}; allowed: "
                           f"{sorted(shifts)}")
    inputs, labels = adapter.stream_data()
    return ScenarioData(path, np.asarray(inputs, dtype=np.uint8), np.asarray(labels, dtype=np.int64), str(name),
                        shifts[name], adapter.encode_request)


@dataclass
class Point:
    """The monitor's view after `sent` requests of a phase."""

    phase: str
    sent: int
    window: int
    max_psi: float | None
    worst_stat: str | None
    chi2_p: float | None
    alarms: list[str]


@dataclass
class Result:
    model: str
    version: str
    clean_sent: int = 0
    shifted_sent: int = 0
    shifted_more: int = 0  # shifted requests after the one-class phase (the traffic goes on; labels follow)
    clean_alarms: list[str] = field(default_factory=list)
    detection_delay: int | None = None  # shifted requests until the input-drift check failed
    prediction_drift_delay: int | None = None
    dominant_sent: int = 0  # requests of one class, after the shifted stream
    dominant_delay: int | None = None  # of those, until the prediction-drift check failed
    prediction_alert_state: str | None = None  # ModelPredictionDrift in Prometheus
    accuracy_clean: float | None = None  # from labels, clean requests only
    accuracy_shifted: float | None = None
    accuracy_window: list[float] | None = None  # the monitor's estimate, lower, upper after the labels
    accuracy_drop_alarm: bool = False
    alert_state: str | None = None  # ModelInputDrift in Prometheus
    alert_seconds: float | None = None  # from the detection to the alert firing
    log_mismatches: int | None = None  # logged prediction != the answer the client got
    false_alarm_windows: int | None = None
    false_alarm_checks: dict[str, int] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    shift: str = ""
    keep_inputs_rate: float | None = None  # the demo's monitoring.keep_inputs_rate
    # Fine-tuning (triton-repo finetune): its report's rows {set: {samples, champion, candidate}}, gate, time.
    finetune_rows: dict[str, dict[str, float]] = field(default_factory=dict)
    finetune_gate: dict[str, Any] = field(default_factory=dict)
    finetune_seconds: float | None = None
    candidate_version: str | None = None
    candidate_reference: dict[str, Any] = field(default_factory=dict)  # its reference.json: version, accuracy, n
    canary_percent: float | None = None
    canary_split: dict[str, int] = field(default_factory=dict)  # version -> logged canary-phase requests
    canary_accuracy: dict[str, float] = field(default_factory=dict)  # version -> served accuracy (labels)
    canary_monitor: dict[str, list[float]] = field(default_factory=dict)  # version -> monitor's interval
    promoted: bool = False
    after_split: dict[str, int] = field(default_factory=dict)  # version -> logged after-promotion requests
    accuracy_shifted_after: float | None = None  # served, shifted stream, after the promotion
    # The same after-promotion requests, paired: their logged model-ready inputs through the old champion
    # offline (ONNX Runtime) and the new champion's served answers; (samples, old, new).
    after_paired: list[float] | None = None
    after_monitor_reference: dict[str, Any] = field(default_factory=dict)  # what the monitor compared v2 with
    after_accuracy_window: list[float] | None = None
    after_accuracy_drop_alarm: bool | None = None


class Scenario:
    """Sends streams to the served ensemble and reads the monitor; shared by the demo and its test."""

    def __init__(self, http_url: str, db: Database, monitor: Monitor, model: str, version: str, ensemble: str,
                 ensemble_input: str, ensemble_output: str, say: Say, encode: Encode, threads: int = 4) -> None:
        self.http_url = http_url
        self.db = db
        self.monitor = monitor
        self.model, self.version = model, version
        self.ensemble, self.ensemble_input, self.ensemble_output = ensemble, ensemble_input, ensemble_output
        self.say = say
        self.encode = encode
        self.threads = threads
        self.result = Result(model, version)
        self.answers: dict[str, int] = {}  # request id -> top-1 class the client received

    @property
    def spec(self) -> DriftSpec:
        return self.monitor.spec

    # -- traffic -------------------------------------------------------------------------------------
    def send(self, images: np.ndarray, ids: Sequence[str]) -> list[int]:
        """One request per input (encoded by the adapter) with its request id; returns the served top-1 classes."""
        from triton_api import TritonClient

        pngs = [self.encode(img) for img in images]

        def one(chunk: list[int]) -> list[tuple[int, int]]:
            out = []
            with TritonClient(self.http_url, timeout_s=60) as client:
                for i in chunk:
                    probs = client.infer(self.ensemble, {self.ensemble_input: np.array([[pngs[i]]], dtype=np.object_)},
                                         [self.ensemble_output], request_id=ids[i])[self.ensemble_output]
                    out.append((i, int(np.argmax(probs))))
            return out

        chunks = [list(range(k, len(pngs), self.threads)) for k in range(self.threads)]
        predicted = [0] * len(pngs)
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            for part in pool.map(one, chunks):
                for i, cls in part:
                    predicted[i] = cls
        self.answers.update(zip(ids, predicted))
        return predicted

    def log_mismatches(self) -> int:
        """Requests whose logged prediction differs from the answer the client got (the log must agree)."""
        rows = self.db.query("SELECT request_id, predicted FROM predictions WHERE model = ?", (self.model,))
        logged = {r["request_id"]: int(r["predicted"]) for r in rows}
        return sum(1 for rid, cls in self.answers.items() if logged.get(rid) != cls)

    def logged(self) -> int:
        row = self.db.query_one("SELECT COUNT(*) AS n FROM predictions WHERE model = ?", (self.model,))
        return int(row["n"]) if row else 0

    def versions_of(self, prefix: str) -> dict[str, int]:
        """Logged requests whose id starts with `prefix`, per version that answered."""
        rows = self.db.query("SELECT version, COUNT(*) AS n FROM predictions WHERE model = ? AND request_id LIKE ?"
                             " GROUP BY version ORDER BY version", (self.model, prefix + "%"))
        return {str(r["version"]): int(r["n"]) for r in rows}

    def stream(self, images: np.ndarray, prefix: str, step: int, first: int = 0) -> None:
        """Send `images` in steps of `step` with ids `<prefix><first + i>`, waiting for the log after each."""
        base = self.logged()
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            self.send(chunk, [f"{prefix}{first + start + i}" for i in range(len(chunk))])
            self.wait_logged(base + start + len(chunk))

    def post_labels(self, monitor_url: str, truth: dict[str, int]) -> tuple[int, int]:
        """Ground truth by request id through the monitor's HTTP endpoint: (accepted, duplicate)."""
        items = [{"request_id": rid, "label": int(lab)} for rid, lab in truth.items()]
        accepted = duplicate = 0
        for start in range(0, len(items), 500):
            req = urllib.request.Request(monitor_url + "/labels", data=json.dumps(items[start:start + 500]).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                body = json.loads(r.read())
            accepted, duplicate = accepted + body["accepted"], duplicate + body["duplicate"]
        return accepted, duplicate

    def served_accuracy(self, truth: dict[str, int]) -> float:
        return float(np.mean([self.answers[rid] == lab for rid, lab in truth.items()]))

    def snapshot_of(self, version: str) -> Snapshot | None:
        state = self.monitor.update()
        return next((s for s in state.snapshots if (s.model, s.version) == (self.model, version)), None)

    def wait_logged(self, expected: int, timeout_s: float = 60.0) -> None:
        """The log is written in batches off the request path: wait until it holds `expected` records."""
        deadline = time.monotonic() + timeout_s
        while self.logged() < expected:
            if time.monotonic() > deadline:
                raise ToolkitError(f"the prediction log holds {self.logged()} records of {self.model} "
                                   f"v{self.version} after {timeout_s:.0f} s; expected {expected}")
            time.sleep(0.1)

    def measure(self, phase: str, sent: int) -> tuple[Point, Snapshot]:
        state = self.monitor.update()
        snap = next((s for s in state.snapshots if (s.model, s.version) == (self.model, self.version)), None)
        if snap is None:
            raise ToolkitError(f"the monitor sees no records of {self.model} v{self.version}")
        checks = {"input_drift": snap.input_drift(self.spec), "prediction_drift": snap.prediction_drift(self.spec),
                  "accuracy_drop": snap.accuracy_drop(self.spec)}
        worst = max(snap.psi.items(), key=lambda kv: kv[1]) if snap.psi else (None, None)
        point = Point(phase, sent, snap.window, worst[1], worst[0], None if snap.chi2 is None else snap.chi2.p_value,
                      sorted(c for c, bad in checks.items() if bad))
        self.result.points.append(point)
        return point, snap

    def _line(self, p: Point) -> str:
        psi = "-" if p.max_psi is None else f"{p.max_psi:.3f} ({p.worst_stat})"
        chi = "-" if p.chi2_p is None else f"{p.chi2_p:.2g}"
        return (f"   {p.phase:>7} {p.sent:>5} sent: window {p.window}, max PSI {psi}, chi2 p {chi}; "
                f"alarms: {', '.join(p.alarms) or 'none'}")

    # -- phases --------------------------------------------------------------------------------------
    def clean(self, images: np.ndarray, step: int) -> None:
        base = self.logged()
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            self.send(chunk, [f"clean-{start + i}" for i in range(len(chunk))])
            self.wait_logged(base + start + len(chunk))
        point, _ = self.measure("clean", len(images))
        self.result.clean_sent = len(images)
        self.result.clean_alarms = point.alarms
        self.say(self._line(point))

    def shifted(self, images: np.ndarray, step: int, stop_after_detection: int = 0) -> None:
        """Shifted requests in steps; stops `stop_after_detection` requests after the input-drift check fails."""
        base = self.logged()
        sent = 0
        detected_at: int | None = None
        while sent < len(images):
            chunk = images[sent:sent + step]
            self.send(chunk, [f"shift-{sent + i}" for i in range(len(chunk))])
            sent += len(chunk)
            self.wait_logged(base + sent)
            point, _ = self.measure("shifted", sent)
            self.say(self._line(point))
            if "input_drift" in point.alarms and self.result.detection_delay is None:
                self.result.detection_delay = detected_at = sent
            if "prediction_drift" in point.alarms and self.result.prediction_drift_delay is None:
                self.result.prediction_drift_delay = sent
            if detected_at is not None and sent - detected_at >= stop_after_detection:
                break
        self.result.shifted_sent = sent

    def dominant(self, images: np.ndarray, step: int) -> None:
        """Requests of one class only, in steps, until the prediction-drift check fails."""
        base = self.logged()
        sent = 0
        while sent < len(images):
            chunk = images[sent:sent + step]
            self.send(chunk, [f"dominant-{sent + i}" for i in range(len(chunk))])
            sent += len(chunk)
            self.wait_logged(base + sent)
            point, _ = self.measure("one-cls", sent)
            self.say(self._line(point))
            if "prediction_drift" in point.alarms:
                self.result.dominant_delay = sent
                break
        self.result.dominant_sent = sent

    def labels(self, monitor_url: str, truth: dict[str, int]) -> Snapshot:
        """Ground truth arrives late, by request id, through the monitor's HTTP endpoint."""
        accepted, duplicate = self.post_labels(monitor_url, truth)
        for kind in ("clean", "shift"):
            ids = [rid for rid in truth if rid.startswith(kind + "-")]
            acc = float(np.mean([self.answers[rid] == truth[rid] for rid in ids])) if ids else None
            if kind == "clean":
                self.result.accuracy_clean = acc
            else:
                self.result.accuracy_shifted = acc
        _, snap = self.measure("labels", accepted)
        if snap.accuracy is not None:
            self.result.accuracy_window = [snap.accuracy.estimate, snap.accuracy.low, snap.accuracy.high]
        self.result.accuracy_drop_alarm = snap.accuracy_drop(self.spec)
        self.say(f"   labels: {accepted} accepted, {duplicate} duplicate; served accuracy clean "
                 f"{_pct(self.result.accuracy_clean)}, shifted {_pct(self.result.accuracy_shifted)}")
        return snap


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def false_alarms(db: Database, model: str, version: str, ref: Reference, spec: DriftSpec, prefix: str,
                 windows: int = 50, seed: int = 0) -> tuple[int, dict[str, int]]:
    """Windows of `spec.window` records resampled (with replacement) from the logged clean records, each
    judged by the monitor's own window figures: how many raise each check."""
    rows = db.query("SELECT * FROM predictions WHERE model = ? AND version = ? AND request_id LIKE ?",
                    (model, version, prefix + "%"))
    records = [prediction_from_row(r) for r in rows]
    if len(records) < spec.min_window:
        raise ToolkitError(f"{len(records)} clean records logged; the false-alarm count needs {spec.min_window}")
    rng = np.random.default_rng(seed)
    counts = {"input_drift": 0, "prediction_drift": 0}
    any_alarm = 0
    for _ in range(windows):
        pick = [records[i] for i in rng.integers(0, len(records), spec.window)]
        snap = window_figures(Snapshot(model, version), [r.predicted for r in pick], [r.stats for r in pick], ref,
                              spec)
        flags = {"input_drift": snap.input_drift(spec), "prediction_drift": snap.prediction_drift(spec)}
        for k, v in flags.items():
            counts[k] += v
        any_alarm += any(flags.values())
    return any_alarm, counts


def plot(result: Result, spec: DriftSpec, path: Path) -> Path:
    """The drift panel's data (max PSI and chi-square p-value per step) and the accuracy before and after
    fine-tuning, rendered with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in result.points if p.phase in ("clean", "shifted", "one-cls")]
    # x: requests after the clean stream, the shifted stream first, then one class only.
    x = [0 if p.phase == "clean" else p.sent + (result.shifted_sent if p.phase == "one-cls" else 0) for p in pts]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.2))
    ax1.plot(x, [p.max_psi or 0 for p in pts], "o-", ms=3, label="max PSI over the input statistics")
    ax1.axhline(spec.psi_alert, color="red", ls="--", label=f"psi_alert {spec.psi_alert:g}")
    ax1.axhline(spec.psi_warn, color="orange", ls=":", label=f"psi_warn {spec.psi_warn:g}")
    if result.detection_delay is not None:
        ax1.axvline(result.detection_delay, color="grey", ls="-.", label=f"input drift at {result.detection_delay}")
    ax1.set_xlabel("requests after the clean stream")
    ax1.set_ylabel("PSI")
    ax1.set_title(f"Input drift, {result.model} v{result.version} (window {spec.window})")
    ax1.legend(fontsize=8)
    ax2.semilogy(x, [max(p.chi2_p or 1.0, 1e-300) for p in pts], "o-", ms=3, label="chi-square p-value (classes)")
    ax2.axhline(spec.chi2_p_value, color="red", ls="--", label=f"chi2_p_value {spec.chi2_p_value:g}")
    for ax in (ax1, ax2):
        ax.axvspan(0, result.shifted_sent, color="tab:blue", alpha=0.06)
        if result.dominant_sent:
            ax.axvspan(result.shifted_sent, result.shifted_sent + result.dominant_sent, color="tab:purple", alpha=0.1)
    ax2.text(result.shifted_sent / 2, spec.chi2_p_value * 3, result.shift.replace("_", " "), ha="center", fontsize=8)
    if result.dominant_sent:
        ax2.text(result.shifted_sent + result.dominant_sent / 2, spec.chi2_p_value * 30, "one class", ha="center",
                 fontsize=8)
    ax2.set_xlabel("requests after the clean stream")
    ax2.set_title("Prediction drift")
    ax2.legend(fontsize=8)
    # Accuracy: served on the shifted stream (from the labels), before and after; held-out from the report.
    cand = result.candidate_version
    bars: list[tuple[str, float | None, str]] = [
        ("clean\nv" + result.version, result.accuracy_clean, "tab:green"),
        (f"shifted\nv{result.version}", result.accuracy_shifted, "tab:red"),
    ]
    if cand is not None:
        bars += [(f"canary\nv{v}", acc, "tab:orange") for v, acc in sorted(result.canary_accuracy.items())]
        bars.append((f"shifted, after\npromotion v{cand}", result.accuracy_shifted_after, "tab:blue"))
        held = result.finetune_rows.get("held-out set")
        if held:
            bars += [(f"held-out\nv{result.version}", held["champion"], "tab:gray"),
                     (f"held-out\nv{cand}", held["candidate"], "tab:cyan")]
    shown = [(n, v, c) for n, v, c in bars if v is not None]
    rects = ax3.bar(range(len(shown)), [v for _, v, _ in shown], color=[c for _, _, c in shown])
    ax3.bar_label(rects, labels=[f"{v:.1%}" for _, v, _ in shown], fontsize=8)
    ax3.set_xticks(range(len(shown)), [n for n, _, _ in shown], fontsize=7)
    ax3.set_ylim(0, 1.12)
    ax3.set_ylabel("accuracy")
    ax3.set_title("Accuracy before and after fine-tuning" + (" (promoted)" if result.promoted else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def paired_after(db: Database, model: str, old_onnx: Path, input_name: str, output: str, truth: dict[str, int],
                 answers: dict[str, int]) -> list[float] | None:
    """The requests in `truth` whose model-ready input the log kept, through the old champion offline and as
    the new champion answered them: [samples, old accuracy, new accuracy] (a paired comparison)."""
    from control.finetune import input_dims
    from control.gate import predict

    rows = [r for r in db.query("SELECT request_id, input FROM predictions WHERE model = ? AND input IS NOT NULL",
                                (model,)) if r["request_id"] in truth]
    if not rows:
        return None
    dims = input_dims(old_onnx)
    x = np.frombuffer(b"".join(bytes(r["input"]) for r in rows), dtype=np.uint8).reshape(-1, *dims)
    old = predict(old_onnx, {input_name: x.astype(np.float32)}, output).argmax(-1)
    labels = np.array([truth[r["request_id"]] for r in rows])
    new = np.array([answers[r["request_id"]] for r in rows])
    return [float(len(rows)), float((old == labels).mean()), float((new == labels).mean())]


class AlertWatch:
    """Polls Prometheus's alerts every second in a thread and notes when each one first fires, so the
    demo goes on (fine-tuning takes longer than the rules' `for:` minute) instead of waiting."""

    def __init__(self, prom: Any, names: Sequence[str]) -> None:
        self.prom = prom
        self.names = list(names)
        self.state: dict[str, str | None] = dict.fromkeys(self.names)
        self.fired_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for name in self.names:
                try:
                    state = self.prom.alert_state(name)
                except (OSError, ValueError, KeyError) as e:
                    logger.debug("prometheus alerts: %s", e)
                    continue
                if self.state.get(name) != "firing":  # firing once is what counts
                    self.state[name] = state
                if state == "firing":
                    self.fired_at.setdefault(name, time.monotonic())

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(self.state.get(n) != "firing" for n in self.names):
            time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run_cli(args: Sequence[str], env: dict[str, str], say: Say, prefix: str = "     ") -> list[str]:
    """`triton-repo ARGS` in a subprocess (the real command, as an operator runs it); its lines are
    printed as they come (training progress included). Returns stdout's lines; fails on a non-zero exit."""
    cmd = [sys.executable, "-m", "build_tools.cli", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        say(prefix + line)
    rc = proc.wait()
    if rc != 0:
        last = next((ln for ln in reversed(lines) if ln.strip()), "")
        raise ToolkitError(f"triton-repo {args[0]} exited with {rc}: {last}")
    return lines


def run(workdir: Path, spec_path: Path, clean_n: int = 1000, shifted_n: int = 1000, step: int = 25,
        prometheus: bool = True, say: Say | None = None, windows: int = 50, dominant_n: int = 300,
        keep_inputs_rate: float = 1.0, canary_n: int = 400, after_n: int = 400,
        finetune_steps: int | None = None) -> Result:
    """The whole scenario on a fresh embedded server; returns the figures (also written to workdir)."""
    import shutil

    from build_tools.build import build_repositories
    from build_tools.served import classifier_names
    from build_tools.server import ADMIN_KEY_ENV, ServerOptions, TritonServer
    from build_tools.spec import FlavorSpec, load_spec
    from clients.local_prometheus import LocalPrometheus, find_prometheus
    from control.gate import load_gate_data
    from control.monitor.cli import DB_ENV, num_classes
    from control.monitor.drift import References

    say = say or _print
    started = time.monotonic()
    spec = load_spec(spec_path)
    names = classifier_names(spec)
    model = names.classifier
    drift = spec.monitoring.drift
    data = scenario_data(spec, model)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    repo = workdir / "repository"
    # What fine-tuning needs, as a spec setting of this demo's repository (its router's config carries it).
    monitoring = spec.monitoring.model_copy(update={"keep_inputs_rate": keep_inputs_rate})
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repo))},
                                               "monitoring": monitoring}), ["embedded"])
    version = str(max(spec.models[model].version_sources))
    ref_folder = repo / model / version
    if not (ref_folder / Reference.FILENAME).is_file():
        raise ToolkitError(f"the build wrote no {Reference.FILENAME} in {ref_folder}: the spec's monitoring "
                           f"section must list {model} with its reference data")
    ref = Reference.read(ref_folder)
    db_path = (workdir / "monitor.db").resolve()
    db_url = f"sqlite:///{db_path}"
    say(f"1. repository {repo} built; {model} v{version} reference: {ref.n} held-out inputs, accuracy "
        f"{ref.accuracy:.2%}; monitoring.keep_inputs_rate {keep_inputs_rate:g} for this demo (deploy.yaml: "
        f"{spec.monitoring.keep_inputs_rate:g}): fine-tuning trains on logged inputs; data and shift "
        f"{data.shift_name!r} from {data.adapter.name}")
    finetune_rules = spec.models[model].lifecycle.finetune  # type: ignore[union-attr]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.labels))
    cut = np.cumsum([clean_n, shifted_n, canary_n, after_n])
    if cut[-1] > len(order):
        raise ToolkitError(f"the adapter's stream has {len(order)} inputs; the demo's streams need {cut[-1]}")
    pick_clean, pick_shift, pick_canary, pick_after, rest = np.split(order, cut)
    dominant_class = 1
    pick_dominant = rest[data.labels[rest] == dominant_class][:dominant_n]
    images = data.inputs
    clean_images, clean_truth = images[pick_clean], data.labels[pick_clean]
    shift_images, shift_truth = data.shift(images[pick_shift]), data.labels[pick_shift]
    dominant_images = images[pick_dominant]

    admin_key = secrets.token_urlsafe(24)
    server = TritonServer(ServerOptions.from_spec(spec.server, model_repositories=[repo], model_control_explicit=True,
                                                  admin_key=admin_key, log_file=workdir / "tritonserver.log",
                                                  workdir=workdir / "server"))
    result: Result | None = None
    with contextlib.ExitStack() as stack:
        # The serving models' log writer reads the database URL from the environment when they load:
        # the server inherits it at start; the caller's environment is then restored (a test session
        # starts other servers afterwards).
        previous = os.environ.get(DB_ENV)
        os.environ[DB_ENV] = db_url
        try:
            stack.enter_context(server)
        finally:
            if previous is None:
                os.environ.pop(DB_ENV, None)
            else:
                os.environ[DB_ENV] = previous
        db = stack.enter_context(Database(db_url))
        monitor = Monitor(db, References([repo]), drift, num_classes(spec))
        ms = stack.enter_context(MonitorServer(monitor))
        say(f"2. Triton {server.http_url} (explicit model control); drift monitor {ms.url}/metrics (window "
            f"{drift.window}, psi_alert {drift.psi_alert:g}, chi2_p_value {drift.chi2_p_value:g}, "
            f"max_accuracy_drop {drift.max_accuracy_drop:g})")
        watch: AlertWatch | None = None
        if prometheus and find_prometheus():
            prom = stack.enter_context(LocalPrometheus(workdir / "prometheus",
                                                       {"drift-monitor": ms.url.removeprefix("http://")}))
            watch = AlertWatch(prom, ["ModelInputDrift", "ModelPredictionDrift"])
            stack.callback(watch.stop)
            say(f"   Prometheus {prom.url} with compose/prometheus/alerts.yml, scraping the monitor every 1 s")
        elif prometheus:
            say("   (no `prometheus` binary: the alert is not checked; Debian package `prometheus`)")
        scenario = Scenario(server.http_url, db, monitor, model, version, names.ensemble, names.ensemble_input,
                            names.ensemble_output, say, data.encode)
        res = result = scenario.result
        res.shift, res.keep_inputs_rate = data.shift_name, keep_inputs_rate
        say(f"3. clean stream: {clean_n} inputs the reference never saw, encoded, to {names.ensemble}")
        scenario.clean(clean_images, step=max(step, 100))
        say(f"4. shifted stream ({data.shift_name}), {step} requests per step:")
        scenario.shifted(shift_images, step=step, stop_after_detection=drift.window // 2)
        detected = time.monotonic()
        say(f"   detection delay: input drift after {res.detection_delay} shifted requests; prediction "
            f"drift after {res.prediction_drift_delay if res.prediction_drift_delay else 'none'}")
        say(f"5. one class dominating: inputs of class {dominant_class} only, {step} per step:")
        scenario.dominant(dominant_images, step)
        say(f"   prediction drift after {res.dominant_delay} requests of class {dominant_class}")
        more = shift_images[res.shifted_sent:]
        if len(more):
            # The shifted traffic goes on while labels are collected: what fine-tuning will learn from.
            say(f"   the shifted stream goes on: {len(more)} more requests")
            scenario.stream(more, "shift-", step=100, first=res.shifted_sent)
            res.shifted_more = len(more)
        truth = {f"clean-{i}": int(t) for i, t in enumerate(clean_truth)}
        truth.update({f"shift-{i}": int(t) for i, t in enumerate(shift_truth)})
        truth.update({f"dominant-{i}": dominant_class for i in range(res.dominant_sent)})
        say("6. labels arrive (POST /labels by request id):")
        snap = scenario.labels(ms.url, truth)
        if snap.accuracy is not None:
            say(f"   monitor: accuracy over the latest {snap.labelled} labelled requests "
                f"{snap.accuracy.estimate:.2%} [{snap.accuracy.low:.2%}, {snap.accuracy.high:.2%}] vs "
                f"held-out {ref.accuracy:.2%}: accuracy_drop {'ALARM' if res.accuracy_drop_alarm else 'quiet'}")
        n_alarm, per_check = false_alarms(db, model, version, ref, drift, "clean-", windows)
        res.false_alarm_windows, res.false_alarm_checks = n_alarm, per_check
        say(f"7. false alarms on clean traffic: {n_alarm} of {windows} windows of {drift.window} "
            f"(resampled from the {clean_n} logged clean requests): {per_check}")

        # 8. Fine-tuning from the logged, labelled feedback: the real command against the real server.
        env = {**os.environ, ADMIN_KEY_ENV: admin_key}
        env.pop(DB_ENV, None)
        common = ["--url", server.http_url, "--spec", str(spec_path), "--repository", str(repo), "--db", db_url,
                  "--drain", "1", "--actor", "drift-demo"]
        gate_inputs, gate_labels = load_gate_data(spec.models[model].lifecycle.gate,  # type: ignore[union-attr]
                                                  spec.base_dir)
        watched_input = (spec.monitoring.models[model].input or next(iter(gate_inputs)))
        shifted_holdout = workdir / "shifted_holdout.npz"
        eval_name = f"{data.shift_name.replace('_', ' ')} held-out"
        np.savez(shifted_holdout, images=data.shift(np.asarray(gate_inputs[watched_input], dtype=np.uint8)),
                 labels=gate_labels)
        steps = finetune_steps or finetune_rules.steps  # type: ignore[union-attr]
        say(f"8. fine-tuning: triton-repo finetune {model} (labelled feedback from the prediction log, {steps} steps; "
            f"also reported: the held-out set with the shift, never trained on)")
        t_ft = time.monotonic()
        out = workdir / "finetune"
        lines = run_cli(["finetune", model, *common, "--out", str(out), "--eval", f"{eval_name}={shifted_holdout}",
                         "--steps", str(steps), "--reason", "drift demo: fine-tuned on labelled shifted traffic"],
                        env, say)
        res.finetune_seconds = time.monotonic() - t_ft
        report = json.loads(next(out.glob(f"{model}-*/finetune.json")).read_text())
        res.finetune_rows = {r["name"]: {"samples": r["samples"], "champion": r["champion_accuracy"],
                                         "candidate": r["candidate_accuracy"]} for r in report["rows"]}
        res.finetune_gate = report["gate"]
        staged = [ln for ln in lines if ln.startswith(f"registered {model} version ")]
        if not staged:
            raise ToolkitError("triton-repo finetune staged nothing")
        cand = res.candidate_version = staged[-1].split()[3]
        cand_ref = Reference.read(repo / model / cand)
        res.candidate_reference = {"version": cand_ref.version, "accuracy": cand_ref.accuracy, "n": cand_ref.n}
        res.canary_percent = finetune_rules.canary_percent  # type: ignore[union-attr]
        say(f"   {res.finetune_seconds:.0f} s; version {cand} staged with its own {Reference.FILENAME} (version "
            f"{cand_ref.version}, held-out accuracy {cand_ref.accuracy:.2%}); canary {res.canary_percent:g}%")
        if watch is not None:
            # The alerts' `for:` minute has mostly passed while fine-tuning ran.
            watch.wait(max(0.0, 150 - (time.monotonic() - detected)))
            res.alert_state = watch.state.get("ModelInputDrift")
            res.prediction_alert_state = watch.state.get("ModelPredictionDrift")
            if "ModelInputDrift" in watch.fired_at:
                res.alert_seconds = watch.fired_at["ModelInputDrift"] - detected
            say(f"   Prometheus: ModelInputDrift {res.alert_state or 'not active'}"
                + (f", {res.alert_seconds:.0f} s after the detection" if res.alert_seconds is not None else "")
                + f"; ModelPredictionDrift {res.prediction_alert_state or 'not active'}")

        # 9. Canary: shifted traffic split between the champion and the candidate.
        canary_images, canary_truth = data.shift(images[pick_canary]), data.labels[pick_canary]
        say(f"9. canary: {canary_n} more shifted requests through {names.ensemble}")
        scenario.stream(canary_images, "canary-", step=100)
        res.canary_split = scenario.versions_of("canary-")
        truth_c = {f"canary-{i}": int(t) for i, t in enumerate(canary_truth)}
        scenario.post_labels(ms.url, truth_c)
        logged = {str(r["request_id"]): str(r["version"]) for r in db.query(
            "SELECT request_id, version FROM predictions WHERE model = ? AND request_id LIKE ?", (model, "canary-%"))}
        for v in sorted(res.canary_split):
            ids = {rid: lab for rid, lab in truth_c.items() if logged.get(rid) == v}
            res.canary_accuracy[v] = scenario.served_accuracy(ids)
            snap_v = scenario.snapshot_of(v)
            if snap_v is not None and snap_v.accuracy is not None:
                res.canary_monitor[v] = [snap_v.accuracy.estimate, snap_v.accuracy.low, snap_v.accuracy.high]
        say("   split: " + ", ".join(f"v{v} {n} ({n / max(1, sum(res.canary_split.values())):.1%})"
                                     for v, n in res.canary_split.items())
            + "; served accuracy on them: " + ", ".join(f"v{v} {_pct(a)}" for v, a in res.canary_accuracy.items()))

        # 10. Promote, then the shifted stream again: all of it on the new champion.
        say(f"10. triton-repo promote {model} {cand}")
        run_cli(["promote", model, cand, *common, "--reason", "drift demo: recovered the shifted stream"], env, say)
        res.promoted = True
        after_images, after_truth = data.shift(images[pick_after]), data.labels[pick_after]
        scenario.stream(after_images, "after-", step=100)
        res.after_split = scenario.versions_of("after-")
        truth_a = {f"after-{i}": int(t) for i, t in enumerate(after_truth)}
        scenario.post_labels(ms.url, truth_a)
        res.accuracy_shifted_after = scenario.served_accuracy(truth_a)
        res.after_paired = paired_after(db, model, repo / model / version / "model.onnx", names.classifier_input,
                                        names.classifier_output, truth_a, scenario.answers)
        snap_new = scenario.snapshot_of(cand)
        new_ref = monitor.references.get(model, cand)
        if snap_new is not None:
            res.after_monitor_reference = {"reference_accuracy": snap_new.reference_accuracy,
                                           "reference_version": new_ref.version if new_ref else None,
                                           "max_psi": max(snap_new.psi.values()) if snap_new.psi else None,
                                           "role": snap_new.role}
            if snap_new.accuracy is not None:
                res.after_accuracy_window = [snap_new.accuracy.estimate, snap_new.accuracy.low, snap_new.accuracy.high]
            res.after_accuracy_drop_alarm = snap_new.accuracy_drop(drift)
        res.log_mismatches = scenario.log_mismatches()
        held = res.finetune_rows.get("held-out set", {})
        shifted_row = res.finetune_rows.get(eval_name, {})
        say(f"   {after_n} shifted requests after the promotion: {res.after_split}; served accuracy "
            f"{_pct(res.accuracy_shifted_after)} (v{version} on the shifted stream: {_pct(res.accuracy_shifted)})")
        if res.after_paired is not None:
            n_p, old_p, new_p = res.after_paired
            say(f"   paired, the same {n_p:.0f} logged inputs: v{version} offline {old_p:.2%}, v{cand} served "
                f"{new_p:.2%}")
        if snap_new is not None:
            acc = res.after_accuracy_window
            say(f"   monitor, v{cand} ({snap_new.role or 'unregistered'}) against its own {Reference.FILENAME} "
                f"(held-out accuracy {_pct(snap_new.reference_accuracy)}): accuracy from labels "
                + (f"{acc[0]:.2%} [{acc[1]:.2%}, {acc[2]:.2%}]" if acc else "-")
                + f", accuracy_drop {'ALARM' if res.after_accuracy_drop_alarm else 'quiet'}")
        say(f"   prediction log: {len(scenario.answers)} requests, {res.log_mismatches} whose logged prediction "
            "differs from the answer the client got")
        say("summary: shifted stream " + f"{_pct(res.accuracy_shifted)} -> {_pct(res.accuracy_shifted_after)} "
            f"(served); held-out {_pct(held.get('champion'))} -> {_pct(held.get('candidate'))}; "
            f"{eval_name} {_pct(shifted_row.get('champion'))} -> {_pct(shifted_row.get('candidate'))}; "
            f"detection after {res.detection_delay} requests; false alarms {n_alarm}/{windows}; "
            f"total {time.monotonic() - started:.0f} s")
    assert result is not None
    out_json = workdir / "drift_demo.json"
    out_json.write_text(json.dumps(asdict(result), indent=1) + "\n")
    png_path = plot(result, drift, workdir / "drift_panel.png")
    say(f"figures: {out_json}, {png_path}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("deploy.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path("build/drift-demo"))
    parser.add_argument("--clean", type=int, default=1000, help="clean requests before the shift")
    parser.add_argument("--shifted", type=int, default=1000, help="at most this many shifted requests")
    parser.add_argument("--step", type=int, default=25, help="shifted requests between two monitor updates")
    parser.add_argument("--windows", type=int, default=50, help="resampled clean windows for the false-alarm count")
    parser.add_argument("--canary", type=int, default=400, help="shifted requests while the candidate is a canary")
    parser.add_argument("--after", type=int, default=400, help="shifted requests after the promotion")
    parser.add_argument("--keep-inputs-rate", type=float, default=1.0,
                        help="monitoring.keep_inputs_rate of the demo's repository (fine-tuning trains on them)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="training steps (default: the spec's lifecycle.finetune.steps)")
    parser.add_argument("--no-prometheus", action="store_true", help="skip the alert check in a local Prometheus")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        res = run(args.workdir, args.spec, args.clean, args.shifted, args.step, not args.no_prometheus,
                  windows=args.windows, keep_inputs_rate=args.keep_inputs_rate, canary_n=args.canary,
                  after_n=args.after, finetune_steps=args.finetune_steps)
    except ToolkitError as e:
        sys.stderr.write(f"drift-demo: error: {str(e).splitlines()[0]}\n")
        return 1
    ok = (not res.clean_alarms and res.detection_delay is not None and res.accuracy_drop_alarm
          and res.log_mismatches == 0 and res.alert_state in (None, "firing") and res.promoted
          and res.accuracy_shifted_after is not None and res.accuracy_shifted is not None
          and res.accuracy_shifted_after > res.accuracy_shifted)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
