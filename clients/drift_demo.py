"""`make drift-demo`: drift, alerts and accuracy from late labels, on the embedded server, end to end.

1. The embedded repository is built (each classifier version gets its reference.json) and served; the
   serving models write the prediction log into a SQLite file of the demo's folder.
2. The drift monitor (control.monitor) runs beside it, and a local Prometheus with the project's alert
   rules scrapes it (when the `prometheus` binary is installed).
3. Clean traffic: MNIST digits the reference never saw (the training split), as PNGs to the `mnist`
   ensemble, each with a request id. The monitor's checks stay quiet.
4. A shifted stream: the same kind of digits written with a thicker pen (a 3x3 dilation). Every `step`
   requests the monitor recomputes: the detection delay is the number of shifted requests sent when
   the input-drift check first fails.
5. One class dominating: digits of one class only, until the prediction-drift check fails.
6. Labels arrive (POST /labels, keyed by request id): the accuracy from labels drops, with its interval.
7. The alerts fire in Prometheus (ModelInputDrift, ModelPredictionDrift, after their `for:` minute).
8. The false-alarm rate: 50 windows resampled from the logged clean records, judged like the monitor.
9. Fine-tuning from the labels is `triton-repo finetune` (docs/lifecycle.md, Fine-tuning): not run here
   yet; the place is marked below.

Every number is printed; the figures also go to `<workdir>/drift_demo.json` and a PNG of the drift
panel's data (`drift_panel.png`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import logging
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from build_tools.errors import ToolkitError
from build_tools.spec import DriftSpec
from control.db import Database
from control.monitor.contract import Reference, prediction_from_row
from control.monitor.drift import Snapshot, window_figures
from control.monitor.service import Monitor, MonitorServer

logger = logging.getLogger(__name__)

Say = Callable[[str], None]


def thick_pen(images: np.ndarray, passes: int = 1) -> np.ndarray:
    """A thicker pen: grey-level dilation with a 3x3 square, `passes` times ([N, 28, 28] uint8)."""
    out = np.asarray(images, dtype=np.uint8)
    for _ in range(passes):
        p = np.pad(out, ((0, 0), (1, 1), (1, 1)))
        h, w = out.shape[-2:]
        out = np.max(np.stack([p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                               for dy in (-1, 0, 1) for dx in (-1, 0, 1)]), axis=0)
    return out


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8).reshape(image.shape[-2:]), mode="L").save(buf, format="PNG")
    return buf.getvalue()


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


class Scenario:
    """Sends streams to the served ensemble and reads the monitor; shared by the demo and its test."""

    def __init__(self, http_url: str, db: Database, monitor: Monitor, model: str, version: str, ensemble: str,
                 ensemble_input: str, ensemble_output: str, say: Say, threads: int = 4) -> None:
        self.http_url = http_url
        self.db = db
        self.monitor = monitor
        self.model, self.version = model, version
        self.ensemble, self.ensemble_input, self.ensemble_output = ensemble, ensemble_input, ensemble_output
        self.say = say
        self.threads = threads
        self.result = Result(model, version)
        self.answers: dict[str, int] = {}  # request id -> top-1 class the client received

    @property
    def spec(self) -> DriftSpec:
        return self.monitor.spec

    # -- traffic -------------------------------------------------------------------------------------
    def send(self, images: np.ndarray, ids: Sequence[str]) -> list[int]:
        """One request per image (PNG bytes) with its request id; returns the served top-1 classes."""
        from triton_api import TritonClient

        pngs = [png(img) for img in images]

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
        rows = self.db.query("SELECT request_id, predicted FROM predictions WHERE model = ? AND version = ?",
                             (self.model, self.version))
        logged = {r["request_id"]: int(r["predicted"]) for r in rows}
        return sum(1 for rid, cls in self.answers.items() if logged.get(rid) != cls)

    def logged(self) -> int:
        row = self.db.query_one("SELECT COUNT(*) AS n FROM predictions WHERE model = ? AND version = ?",
                                (self.model, self.version))
        return int(row["n"]) if row else 0

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
        items = [{"request_id": rid, "label": int(lab)} for rid, lab in truth.items()]
        accepted = duplicate = 0
        for start in range(0, len(items), 500):
            req = urllib.request.Request(monitor_url + "/labels", data=json.dumps(items[start:start + 500]).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                body = json.loads(r.read())
            accepted, duplicate = accepted + body["accepted"], duplicate + body["duplicate"]
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
    """The drift panel's data (max PSI and chi-square p-value per step) rendered with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in result.points if p.phase in ("clean", "shifted", "one-cls")]
    # x: requests after the clean stream, the thicker pen first, then one class only.
    x = [0 if p.phase == "clean" else p.sent + (result.shifted_sent if p.phase == "one-cls" else 0) for p in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
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
    ax2.text(result.shifted_sent / 2, spec.chi2_p_value * 3, "thicker pen", ha="center", fontsize=8)
    if result.dominant_sent:
        ax2.text(result.shifted_sent + result.dominant_sent / 2, spec.chi2_p_value * 30, "one class", ha="center",
                 fontsize=8)
    ax2.set_xlabel("requests after the clean stream")
    ax2.set_title("Prediction drift")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(workdir: Path, spec_path: Path, clean_n: int = 1000, shifted_n: int = 1000, step: int = 25,
        prometheus: bool = True, say: Say | None = None, windows: int = 50, dominant_n: int = 300) -> Result:
    """The whole scenario on a fresh embedded server; returns the figures (also written to workdir)."""
    import os
    import shutil

    from build_tools.build import build_repositories
    from build_tools.served import classifier_names
    from build_tools.server import ServerOptions, TritonServer
    from build_tools.spec import FlavorSpec, load_spec
    from clients.datasets import mnist_train
    from clients.local_prometheus import LocalPrometheus, find_prometheus
    from control.monitor.cli import DB_ENV, num_classes
    from control.monitor.drift import References

    say = say or _print
    spec = load_spec(spec_path)
    names = classifier_names(spec)
    drift = spec.monitoring.drift
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    repo = workdir / "repository"
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repo))}}), ["embedded"])
    version = str(max(spec.models[names.classifier].version_sources))
    ref_folder = repo / names.classifier / version
    if not (ref_folder / Reference.FILENAME).is_file():
        raise ToolkitError(f"the build wrote no {Reference.FILENAME} in {ref_folder}: the spec's monitoring "
                           f"section must list {names.classifier} with its reference data")
    ref = Reference.read(ref_folder)
    db_url = f"sqlite:///{(workdir / 'monitor.db').resolve()}"
    say(f"1. repository {repo} built; {names.classifier} v{version} reference: {ref.n} held-out digits, "
        f"accuracy {ref.accuracy:.2%}")
    train = mnist_train()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train.labels))
    pick_clean, pick_shift = order[:clean_n], order[clean_n:clean_n + shifted_n]
    dominant_class = 1
    rest = order[clean_n + shifted_n:]
    pick_dominant = rest[train.labels[rest] == dominant_class][:dominant_n]
    images = np.asarray(train.images, dtype=np.uint8).reshape(-1, 28, 28)
    clean_images, clean_truth = images[pick_clean], train.labels[pick_clean]
    shift_images, shift_truth = thick_pen(images[pick_shift]), train.labels[pick_shift]
    dominant_images = images[pick_dominant]

    server = TritonServer(ServerOptions.from_spec(spec.server, model_repositories=[repo],
                                                  log_file=workdir / "tritonserver.log", workdir=workdir / "server"))
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
        with MonitorServer(monitor) as ms:
            say(f"2. Triton {server.http_url}; drift monitor {ms.url}/metrics (window {drift.window}, psi_alert "
                f"{drift.psi_alert:g}, chi2_p_value {drift.chi2_p_value:g}, max_accuracy_drop "
                f"{drift.max_accuracy_drop:g})")
            prom = None
            if prometheus and find_prometheus():
                prom = LocalPrometheus(workdir / "prometheus", {"drift-monitor": ms.url.removeprefix("http://")})
                prom.start()
                say(f"   Prometheus {prom.url} with compose/prometheus/alerts.yml, scraping the monitor every 1 s")
            elif prometheus:
                say("   (no `prometheus` binary: the alert is not checked; Debian package `prometheus`)")
            try:
                scenario = Scenario(server.http_url, db, monitor, names.classifier, version, names.ensemble,
                                    names.ensemble_input, names.ensemble_output, say)
                say(f"3. clean stream: {clean_n} MNIST digits the reference never saw, PNG to {names.ensemble}")
                scenario.clean(clean_images, step=max(step, 100))
                say(f"4. shifted stream (thicker pen), {step} requests per step:")
                scenario.shifted(shift_images, step=step, stop_after_detection=drift.window // 2)
                detected = time.monotonic()
                res = scenario.result
                say(f"   detection delay: input drift after {res.detection_delay} shifted requests; prediction "
                    f"drift after {res.prediction_drift_delay if res.prediction_drift_delay else 'none'}")
                say(f"5. one class dominating: MNIST digits of class {dominant_class} only, {step} per step:")
                scenario.dominant(dominant_images, step)
                say(f"   prediction drift after {res.dominant_delay} requests of class {dominant_class}")
                res.log_mismatches = scenario.log_mismatches()
                say(f"   prediction log: {len(scenario.answers)} requests, {res.log_mismatches} whose logged "
                    "prediction differs from the answer the client got")
                truth = {f"clean-{i}": int(t) for i, t in enumerate(clean_truth)}
                truth.update({f"shift-{i}": int(t) for i, t in enumerate(shift_truth[:res.shifted_sent])})
                truth.update({f"dominant-{i}": dominant_class for i in range(res.dominant_sent)})
                say("6. labels arrive (POST /labels by request id):")
                snap = scenario.labels(ms.url, truth)
                if snap.accuracy is not None:
                    say(f"   monitor: accuracy over the latest {snap.labelled} labelled requests "
                        f"{snap.accuracy.estimate:.2%} [{snap.accuracy.low:.2%}, {snap.accuracy.high:.2%}] vs "
                        f"held-out {ref.accuracy:.2%}: accuracy_drop "
                        f"{'ALARM' if res.accuracy_drop_alarm else 'quiet'}")
                if prom is not None:
                    say("7. Prometheus: waiting for ModelInputDrift and ModelPredictionDrift to fire (`for: 1m`)")
                    deadline = time.monotonic() + 150
                    while time.monotonic() < deadline:
                        res.alert_state = prom.alert_state("ModelInputDrift")
                        res.prediction_alert_state = prom.alert_state("ModelPredictionDrift")
                        if res.alert_state == "firing" and res.alert_seconds is None:
                            res.alert_seconds = time.monotonic() - detected
                        if res.alert_state == res.prediction_alert_state == "firing":
                            break
                        time.sleep(1)
                    say(f"   ModelInputDrift: {res.alert_state or 'not active'}"
                        + (f", {res.alert_seconds:.0f} s after the detection" if res.alert_seconds else "")
                        + f"; ModelPredictionDrift: {res.prediction_alert_state or 'not active'}")
                n_alarm, per_check = false_alarms(db, names.classifier, version, ref, drift, "clean-", windows)
                res.false_alarm_windows, res.false_alarm_checks = n_alarm, per_check
                say(f"8. false alarms on clean traffic: {n_alarm} of {windows} windows of {drift.window} "
                    f"(resampled from the {clean_n} logged clean requests): {per_check}")
                # 9. Fine-tuning from these labels (`triton-repo finetune`: labelled feedback + replay, the
                #    fine-tune gate, then canary and promote) needs a server in explicit model control with
                #    the admin key and the inputs kept in the log (keep_inputs_rate); not wired here yet.
                say("9. fine-tuning: `triton-repo finetune` (docs/lifecycle.md, Fine-tuning; `make finetune-report`) "
                    "is not run by this demo")
            finally:
                if prom is not None:
                    prom.stop()
    out = workdir / "drift_demo.json"
    out.write_text(json.dumps(asdict(scenario.result), indent=1) + "\n")
    png_path = plot(scenario.result, drift, workdir / "drift_panel.png")
    say(f"figures: {out}, {png_path}")
    return scenario.result


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("deploy.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path("build/drift-demo"))
    parser.add_argument("--clean", type=int, default=1000, help="clean requests before the shift")
    parser.add_argument("--shifted", type=int, default=1000, help="at most this many shifted requests")
    parser.add_argument("--step", type=int, default=25, help="shifted requests between two monitor updates")
    parser.add_argument("--windows", type=int, default=50, help="resampled clean windows for the false-alarm count")
    parser.add_argument("--no-prometheus", action="store_true", help="skip the alert check in a local Prometheus")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        res = run(args.workdir, args.spec, args.clean, args.shifted, args.step, not args.no_prometheus,
                  windows=args.windows)
    except ToolkitError as e:
        sys.stderr.write(f"drift-demo: error: {str(e).splitlines()[0]}\n")
        return 1
    ok = (not res.clean_alarms and res.detection_delay is not None and res.accuracy_drop_alarm
          and res.log_mismatches == 0 and res.alert_state in (None, "firing"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

