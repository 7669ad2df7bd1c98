"""Monitoring on the ngc flavor: the committed ngc repository's router and preprocessing step, with the
copy of the watching code `build-repo` puts beside them (`tdk_monitoring/`), served by the real Triton
2.51 (the embedded binary: the same server code as the 24.10 image) in a Python environment that has
NOT got this project's package, as in the official image. They export the tdk_serving_* metrics and
write the prediction log through the copied sink.

What differs from the official image, and why: the ngc `mnist_classifier` runs in Triton's onnxruntime
backend on a GPU, which the embedded server lacks; here the same ONNX file answers from a minimal
Python-backend model (ONNX Runtime on the CPU), so the router forwards to the real classifier. The
environment holds the project's third-party dependencies (numpy, Pillow, ONNX Runtime, ...) and none
of its own modules; tests/unit/test_monitoring_vendor.py checks the copy needs only numpy and the
standard library (the py310 CI phase runs it on the image's Python).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build_tools.config import MONITORING_VENDOR_DIR, read_config
from build_tools.server import ServerOptions, TritonServer
from clients.datasets import mnist_holdout
from clients.images import bytes_batch, encode_png
from control.db import Database
from control.monitor import contract
from control.monitor.serving import DATABASE_ENV, INPUT_STAT, LOG_RECORDS, PREDICTIONS
from triton_api import TritonClient
from triton_api.metrics import metric_value, scrape

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
NGC = ROOT / "model_repository"
N = 12
# The project's own top-level packages: none of them may be importable in the served environment.
PROJECT_PACKAGES = ("build_tools", "control", "triton_api", "clients", "loadtest", "models", "tools", "tests")

CLASSIFIER = '''
import json
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The ngc classifier's ONNX file, answered with ONNX Runtime (the embedded server has no
    onnxruntime backend)."""

    def initialize(self, args):
        self.session = ort.InferenceSession(str(Path(__file__).parent / "model.onnx"),
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "image").as_numpy()
            y = self.session.run(None, {"image": x})[0]
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("probabilities", y)]))
        return out
'''


def bare_environment(root: Path) -> Path:
    """A virtualenv on the stub's Python whose site-packages links the project venv's third-party
    packages only: no project module, no editable-install path file."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next((root / "lib").glob("python3*/site-packages"))
    ours = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    for entry in ours.iterdir():
        name = entry.name
        if name.endswith(".pth") or name.startswith(("__editable__", "_triton_deploy_kit", "triton_deploy_kit")):
            continue
        if name.split(".")[0] in PROJECT_PACKAGES or name == "__pycache__":
            continue
        (site / name).symlink_to(entry)
    return root


def ngc_copy(out: Path) -> Path:
    """The ngc router and preprocessing folders as committed, and the classifier's ONNX file behind a
    minimal Python-backend model with the ngc classifier's own interface."""
    for name in ("mnist_preprocess", "mnist_classifier_router"):
        shutil.copytree(NGC / name, out / name)
    config = read_config(NGC / "mnist_classifier" / "config.pbtxt")
    config.ClearField("platform")
    config.ClearField("default_model_filename")
    config.ClearField("instance_group")
    config.ClearField("optimization")
    config.ClearField("model_warmup")
    config.parameters.clear()
    config.backend = "python"
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    folder = out / "mnist_classifier"
    (folder / "1").mkdir(parents=True)
    shutil.copy(NGC / "mnist_classifier" / "labels.txt", folder / "labels.txt")
    shutil.copy(ROOT / "models/mnist/mnist_cnn.onnx", folder / "1" / "model.onnx")
    (folder / "1" / "model.py").write_text(CLASSIFIER)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    return out


def sink_processes(server_pid: int) -> list[tuple[int, str]]:
    """(pid, working folder) of the prediction-log sinks in the server's session (the harness starts
    the server as a session leader; its stubs and their sinks stay in it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            session = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[3])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if session == server_pid and b"control.monitor.sink" in cmdline:
                found.append((int(entry), os.readlink(f"/proc/{entry}/cwd")))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_ngc_router_and_preprocess_export_metrics_and_log_when_served_without_the_project_package(
    tmp_path: Path,
) -> None:
    for name in ("mnist_preprocess", "mnist_classifier_router"):
        vendored = NGC / name / "1" / MONITORING_VENDOR_DIR / "control" / "monitor" / "serving.py"
        assert vendored.is_file(), f"{vendored.relative_to(ROOT)} missing: run `make build-repo`"
    env_root = bare_environment(tmp_path / "image-like-env")
    probe = subprocess.run([str(env_root / "bin" / "python"), "-c", "import control"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert probe.returncode != 0, "the served environment must not have the project's package"
    repo = ngc_copy(tmp_path / "repository")
    db_path = tmp_path / "log" / "predictions.db"
    env = {"PATH": f"{env_root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           DATABASE_ENV: f"sqlite:///{db_path}"}
    options = ServerOptions(model_repositories=[repo], log_file=tmp_path / "tritonserver.log",
                            workdir=tmp_path / "work", env=env, health_port=None)
    holdout = mnist_holdout()
    images = holdout.images[:N]
    with TritonServer(options) as server:
        client = TritonClient(server.http_url)
        try:
            ids = []
            for i, image in enumerate(images):
                ids.append(f"ngc-{i}")
                pre = client.infer("mnist_preprocess", {"image_bytes": bytes_batch([encode_png(image)])},
                                   request_id=ids[-1])
                client.infer("mnist_classifier_router", {"image": pre["image"]}, request_id=ids[-1])
        finally:
            client.close()
        want = float(N)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = scrape(server.metrics_url)
            if ((metric_value(text, LOG_RECORDS, model="mnist_classifier", outcome="written") or 0) >= want
                    and (metric_value(text, f"{INPUT_STAT['mean_intensity']}_count", model="mnist_preprocess") or 0)
                    >= want):
                break
            time.sleep(0.3)
        sinks = sink_processes(server.process.pid)
    assert metric_value(text, PREDICTIONS, model="mnist_classifier", version="1") == want
    assert metric_value(text, f"{INPUT_STAT['mean_intensity']}_count", model="mnist_classifier", version="1") == want
    # The preprocessing step also saw its warmup images, once per instance.
    pre = read_config(repo / "mnist_preprocess" / "config.pbtxt")
    warmup = sum(w.batch_size for w in pre.model_warmup) * sum(g.count for g in pre.instance_group)
    assert metric_value(text, f"{INPUT_STAT['original_size']}_count", model="mnist_preprocess") == want + warmup
    assert metric_value(text, LOG_RECORDS, model="mnist_classifier", outcome="written") == want
    # The sink that wrote them ran the router's copy of the package (it starts in the copy's folder).
    vendored_root = str((repo / "mnist_classifier_router" / "1" / MONITORING_VENDOR_DIR).resolve())
    assert sinks and all(cwd == vendored_root for _, cwd in sinks), sinks
    with Database(f"sqlite:///{db_path}") as db:
        rows = [contract.prediction_from_row(r) for r in db.query("SELECT * FROM predictions ORDER BY id")]
    assert sorted(r.request_id for r in rows) == sorted(ids)
    assert all(r.model == "mnist_classifier" and r.version == "1" for r in rows)
    assert all(set(r.stats) == {"mean_intensity", "ink_fraction", "bbox_size", "com_offset", "original_size"}
               for r in rows)
    # Sent to the router as model-ready tensors (no size input): each record holds the tensor's own size.
    assert all(r.stats["original_size"] == 28.0 for r in rows)
    # The log's classes are the classifier's answers: the held-out digits' labels for nearly all.
    accuracy = np.mean([r.predicted == int(holdout.labels[int(r.request_id.split("-")[1])]) for r in rows])
    assert accuracy >= 0.9
