"""trtexec: command construction, log/output parsing, failure handling, and build-repo through trtexec.

The failure and end-to-end tests run a fake `trtexec`: a real executable script written to tmp_path
(never a mock). In build mode it writes a "plan" naming the ONNX file and prints trtexec's version and
device lines; in run mode it runs that ONNX file with ONNX Runtime on the raw inputs and exports the
outputs in trtexec's --exportOutput JSON format. FAKE_TRT_* variables make it fail in chosen ways.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from build_tools.build import build_repositories
from build_tools.errors import PlanBuildError
from build_tools.spec import DeploySpec, parse_spec
from build_tools.tensorrt import builder as builder_mod
from build_tools.tensorrt.backend import BuildRequest, CalibrationSet
from build_tools.tensorrt.lock import read_lock
from build_tools.tensorrt.profile import InputProfile, precision_settings
from build_tools.tensorrt.trtexec import (
    TrtexecBackend,
    build_command,
    execute,
    parse_build_log,
    parse_output_json,
    run_command,
    shapes_arg,
)
from tests.support.onnx_models import tiny_classifier

FAKE_TRTEXEC = r'''#!{python}
import json, os, sys
import numpy as np

args = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in sys.argv[1:])
log = os.environ.get("FAKE_TRT_ARGV_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\n")
mode = os.environ.get("FAKE_TRT_MODE", "ok")
if mode != "noversion":
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec " + " ".join(sys.argv[1:]))
print("[I] === Device Information ===")
print("[I] Selected Device: Fake GPU 80GB")
print("[I] Compute Capability: 9.0")
if mode != "noversion":
    print("[I] TensorRT version: " + os.environ.get("FAKE_TRT_VERSION", "10.5.0"))
if mode == "fail":
    print("[E] Error[4]: fake failure while parsing the network")
    print("&&&& FAILED TensorRT.trtexec")
    sys.exit(3)
if mode == "nooutput":
    print("&&&& PASSED TensorRT.trtexec")
    sys.exit(0)
if "saveEngine" in args:
    with open(args["saveEngine"], "w") as f:
        json.dump({"onnx": args["onnx"]}, f)
    if "timingCacheFile" in args:
        with open(args["timingCacheFile"], "ab") as f:
            f.write(b"t")
else:
    import onnxruntime as ort
    with open(args["loadEngine"]) as f:
        onnx_path = json.load(f)["onnx"]
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16}
    shapes = {}
    for spec in filter(None, args.get("shapes", "").split(",")):
        name, dims = spec.rsplit(":", 1)
        shapes[name.strip("'")] = [int(d) for d in dims.split("x")]
    feed = {}
    for spec in args["loadInputs"].split(","):
        name, path = spec.split(":", 1)
        name = name.strip("'")
        info = next(i for i in sess.get_inputs() if i.name == name)
        feed[name] = np.fromfile(path, dtype=types[info.type]).reshape(shapes.get(name, info.shape))
    outs = sess.run(None, feed)
    if os.environ.get("FAKE_TRT_PERTURB") == "reverse":
        outs = [o[..., ::-1] for o in outs]
    with open(args["exportOutput"], "w") as f:
        f.write("[\n")
        for i, (info, o) in enumerate(zip(sess.get_outputs(), outs)):
            sep = "  " if i == 0 else ", "
            if o.dtype == np.uint8:
                # Like trtexec: UINT8 values go to the stream as characters (only INT8 is widened).
                vals = ", ".join(chr(int(v)) for v in o.ravel())
            else:
                vals = ", ".join("nan" if np.isnan(v) else repr(float(v)) for v in o.ravel())
            f.write(sep + '{ "name" : "' + info.name + '"\n')
            f.write('  , "dimensions" : "' + "x".join(str(d) for d in o.shape) + '"\n')
            f.write('  , "values" : [ ' + vals + " ]\n  }\n")
        f.write("]\n")
print("&&&& PASSED TensorRT.trtexec")
'''


def _write_fake(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "trtexec"
    path.write_text(FAKE_TRTEXEC.replace("{python}", sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake trtexec first on PATH, forced as the builder (so no GPU check runs)."""
    path = _write_fake(tmp_path / "fakebin")
    monkeypatch.setenv("PATH", f"{path.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("TRTEXEC", raising=False)
    monkeypatch.setenv(builder_mod.BUILDER_ENV, "trtexec")
    for var in ("FAKE_TRT_MODE", "FAKE_TRT_VERSION", "FAKE_TRT_PERTURB", "FAKE_TRT_ARGV_LOG"):
        monkeypatch.delenv(var, raising=False)
    return path


def _classifier(path: Path, classes: int = 3, size: int = 4, seed: int = 0, **kwargs: Any) -> Path:
    return tiny_classifier(path, classes, size, seed, **kwargs)


def _request(tmp_path: Path, precision: str = "fp16", profiles: list[InputProfile] | None = None,
             calibration: CalibrationSet | None = None) -> BuildRequest:
    return BuildRequest(
        onnx_path=tmp_path / "m.onnx",
        plan_path=tmp_path / "out" / "model.plan",
        precision=precision_settings(precision),  # type: ignore[arg-type]
        profiles=[InputProfile("image", (1, 1, 28, 28), (64, 1, 28, 28), (256, 1, 28, 28))]
        if profiles is None else profiles,
        workspace_mib=1024,
        timing_cache=tmp_path / "build" / "timing.cache",
        calibration=calibration,
    )


# --------------------------------------------------------------------------------------------------
# Command construction (pure)


def test_build_command_lists_profile_precision_and_cache_flags_when_fp16_with_dynamic_batch(tmp_path: Path) -> None:
    assert build_command("trtexec", _request(tmp_path)) == [
        "trtexec",
        f"--onnx={tmp_path / 'm.onnx'}",
        f"--saveEngine={tmp_path / 'out' / 'model.plan'}",
        "--memPoolSize=workspace:1024",
        f"--timingCacheFile={tmp_path / 'build' / 'timing.cache'}",
        "--skipInference",
        "--minShapes=image:1x1x28x28",
        "--optShapes=image:64x1x28x28",
        "--maxShapes=image:256x1x28x28",
        "--fp16",
    ]


def test_build_command_disables_tf32_and_omits_fp16_when_fp32(tmp_path: Path) -> None:
    cmd = build_command("trtexec", _request(tmp_path, "fp32"))
    assert "--noTF32" in cmd and "--fp16" not in cmd and "--int8" not in cmd


def test_build_command_omits_shapes_when_every_input_is_static(tmp_path: Path) -> None:
    cmd = build_command("trtexec", _request(tmp_path, profiles=[]))
    assert not any(a.startswith(("--minShapes", "--optShapes", "--maxShapes")) for a in cmd)


def test_build_command_raises_when_int8_has_no_calibration_cache(tmp_path: Path) -> None:
    calib = CalibrationSet([], tmp_path / "calibration.cache")
    expected = r"trtexec only reads caches \(--calib\), it cannot calibrate from tensorrt\.calibration_data"
    with pytest.raises(PlanBuildError, match=expected):
        build_command("trtexec", _request(tmp_path, "int8", calibration=calib))


def test_build_command_reads_the_calibration_cache_when_int8_has_one(tmp_path: Path) -> None:
    cache = tmp_path / "calibration.cache"
    cache.write_bytes(b"TRT-1005-EntropyCalibration2\n")
    cmd = build_command("trtexec", _request(tmp_path, "int8", calibration=CalibrationSet([], cache)))
    assert cmd[-3:] == ["--fp16", "--int8", f"--calib={cache}"]


def test_shapes_arg_quotes_names_when_they_contain_separators() -> None:
    assert shapes_arg("shapes", {"input:0": (2, 3), "plain": (1,)}) == "--shapes='input:0':2x3,plain:1"


def test_run_command_loads_inputs_and_exports_outputs_when_running_a_plan(tmp_path: Path) -> None:
    cmd = run_command("trtexec", tmp_path / "model.plan", {"image": tmp_path / "in0.bin"}, {"image": (8, 1, 28, 28)},
                      tmp_path / "out.json")
    assert cmd == [
        "trtexec", f"--loadEngine={tmp_path / 'model.plan'}", f"--loadInputs=image:{tmp_path / 'in0.bin'}",
        "--shapes=image:8x1x28x28", f"--exportOutput={tmp_path / 'out.json'}", "--iterations=1", "--warmUp=0",
        "--duration=0", "--avgRuns=1",
    ]


# --------------------------------------------------------------------------------------------------
# Parsing (pure)


def test_parse_build_log_reads_version_device_and_capability_when_present() -> None:
    log = (
        "[10/21/2024-10:00:00] [I] Selected Device: NVIDIA H100 80GB HBM3\n"
        "[10/21/2024-10:00:00] [I] Compute Capability: 9.0\n"
        "[10/21/2024-10:00:00] [I] TensorRT version: 10.5.0\n"
    )
    assert parse_build_log(log) == ("10.5.0", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.mark.parametrize(("banner", "version"), [("100500", "10.5.0"), ("8601", "8.6.1")])
def test_parse_build_log_decodes_the_banner_when_no_version_line_exists(banner: str, version: str) -> None:
    assert parse_build_log(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{banner}] # trtexec")[0] == version


def test_parse_build_log_returns_none_when_the_log_names_nothing() -> None:
    assert parse_build_log("nothing useful") == (None, None, None)


def test_parse_output_json_reshapes_values_when_given_trtexec_export() -> None:
    text = (
        '[\n  { "name" : "probabilities"\n  , "dimensions" : "2x2"\n  , "values" : [ 0.25, 0.75, nan, -inf ]\n  }\n'
        ', { "name" : "label"\n  , "dimensions" : "2"\n  , "values" : [ 1, 0 ]\n  }\n]\n'
    )
    out = parse_output_json(text)
    assert out["probabilities"].shape == (2, 2)
    assert np.isnan(out["probabilities"][1, 0]) and out["probabilities"][1, 1] == -np.inf
    assert out["label"].tolist() == [1, 0]


def test_parse_output_json_raises_when_values_do_not_fill_the_dimensions() -> None:
    with pytest.raises(PlanBuildError, match=r"has 3 values but dimensions 2x2 need 4"):
        parse_output_json('[{"name": "p", "dimensions": "2x2", "values": [1, 2, 3]}]')


def test_parse_output_json_raises_when_text_is_not_json() -> None:
    with pytest.raises(PlanBuildError, match="not valid JSON"):
        parse_output_json("[{")


# --------------------------------------------------------------------------------------------------
# Failure handling (real subprocess: the fake trtexec script)


def test_execute_raises_with_output_tail_when_trtexec_exits_non_zero(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRT_MODE", "fail")
    cmd = build_command(fake_trtexec, _request(tmp_path))
    with pytest.raises(PlanBuildError) as err:
        execute(cmd, [tmp_path / "out" / "model.plan"], "building model.plan", 30)
    message = str(err.value)
    assert message.startswith("building model.plan: trtexec exited with code 3, expected 0")
    assert "fake failure while parsing the network" in message


def test_execute_raises_when_trtexec_exits_zero_without_writing_the_plan(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRT_MODE", "nooutput")
    plan = tmp_path / "out" / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"stale plan from an earlier run")
    with pytest.raises(PlanBuildError, match=r"trtexec exited 0 but did not write .*model\.plan"):
        execute(build_command(fake_trtexec, _request(tmp_path)), [plan], "building model.plan", 30)
    assert not plan.exists()  # the stale file cannot pass for this run's output


def test_execute_raises_when_the_trtexec_binary_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(PlanBuildError, match=r"cannot run .*expected an executable trtexec"):
        execute([str(tmp_path / "missing" / "trtexec"), "--help"], [], "building", 30)


def test_execute_raises_when_trtexec_runs_past_the_timeout(tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\necho started\nsleep 10\n")
    slow.chmod(0o755)
    with pytest.raises(PlanBuildError, match=r"did not finish within 0 s; its output ends with:\nstarted"):
        execute([str(slow)], [], "building", 0.5)


def test_trtexec_backend_raises_when_the_log_names_no_tensorrt_version(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRT_MODE", "noversion")
    _classifier(tmp_path / "m.onnx", size=28)
    with pytest.raises(PlanBuildError, match="names no TensorRT version"):
        TrtexecBackend(str(fake_trtexec)).build(_request(tmp_path))


def test_trtexec_backend_builds_and_runs_when_trtexec_succeeds(tmp_path: Path, fake_trtexec: Path) -> None:
    onnx_path = _classifier(tmp_path / "m.onnx", size=28)
    backend = TrtexecBackend(str(fake_trtexec))
    info = backend.build(_request(tmp_path))
    assert (info.tensorrt_version, info.gpu_name, info.compute_capability, info.builder) == (
        "10.5.0", "Fake GPU 80GB", "9.0", "trtexec")
    assert (tmp_path / "build" / "timing.cache").is_file()
    x = np.random.default_rng(1).uniform(size=(3, 1, 28, 28)).astype(np.float32)
    out = backend.runner(tmp_path / "out" / "model.plan", ["image"])({"image": x})
    import onnxruntime as ort

    expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# build-repo through trtexec: lock, gate, placement


def _spec(tmp_path: Path, tensorrt: dict[str, Any] | None = None, **model: Any) -> DeploySpec:
    if not (tmp_path / "tiny.onnx").exists():
        _classifier(tmp_path / "tiny.onnx")
    np.save(tmp_path / "eval.npy", np.random.default_rng(2).uniform(size=(24, 1, 4, 4)).astype(np.float32))
    data = {
        "flavors": {"ngc": {"output": "model_repository"}},
        "models": {
            "tiny": {
                "source": "tiny.onnx",
                "formats": ["onnx", "tensorrt_plan"],
                "max_batch_size": 8,
                "dynamic_batching": {"preferred_batch_size": [4, 8]},
                "tensorrt": {"precision": "fp16", "evaluation_data": "eval.npy", **(tensorrt or {})},
                **model,
            }
        },
    }
    return parse_spec(data, base_dir=tmp_path)


def test_build_repositories_places_a_locked_plan_when_trtexec_builds_and_the_gate_passes(
    tmp_path: Path, fake_trtexec: Path
) -> None:
    plans = build_repositories(_spec(tmp_path), ["ngc"])
    plan = tmp_path / "model_repository" / "tiny_trt" / "1" / "model.plan"
    assert plan.is_file()
    lock = read_lock(plan)
    assert (lock.tensorrt_version, lock.triton_release, lock.builder, lock.precision) == (
        "10.5.0", "24.10", "trtexec", "fp16")
    assert lock.profile["inputs"] == {"image": {"min": [1, 1, 4, 4], "opt": [8, 1, 4, 4], "max": [8, 1, 4, 4]}}
    assert lock.gate["passed"] is True and lock.gate["samples"] == 24
    notes = "\n".join(plans["ngc"].notes)
    assert "plan tiny_trt/1/model.plan: built, fp16 with TensorRT 10.5.0 (trtexec)" in notes


def test_build_repositories_refuses_the_plan_when_trtexec_is_another_tensorrt_version(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRT_VERSION", "10.4.0")
    with pytest.raises(PlanBuildError, match=r"refusing to place the plan: .*built with TensorRT 10\.4\.0 but the "
                                             r"target image tritonserver:24\.10-py3 has TensorRT 10\.5\.0"):
        build_repositories(_spec(tmp_path), ["ngc"])
    assert not (tmp_path / "model_repository").exists()


def test_build_repositories_refuses_the_plan_when_the_gate_fails(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRT_PERTURB", "reverse")
    with pytest.raises(PlanBuildError, match=r"tiny_trt/1/model\.plan: accuracy gate failed, the plan is not written"):
        build_repositories(_spec(tmp_path), ["ngc"])
    assert not (tmp_path / "model_repository").exists()


def test_build_repositories_keeps_the_previous_plan_when_its_inputs_are_unchanged(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_log = tmp_path / "argv.log"
    monkeypatch.setenv("FAKE_TRT_ARGV_LOG", str(argv_log))
    build_repositories(_spec(tmp_path), ["ngc"])
    calls = len(argv_log.read_text().splitlines())
    plans = build_repositories(_spec(tmp_path), ["ngc"])
    assert len(argv_log.read_text().splitlines()) == calls  # no second build
    assert any(n.startswith("plan tiny_trt/1/model.plan: reused, built ") for n in plans["ngc"].notes)
    assert (tmp_path / "model_repository" / "tiny_trt" / "1" / "model.plan.json.lock").is_file()


def test_build_repositories_rebuilds_the_plan_when_the_onnx_model_changed(tmp_path: Path, fake_trtexec: Path) -> None:
    build_repositories(_spec(tmp_path), ["ngc"])
    before = read_lock(tmp_path / "model_repository" / "tiny_trt" / "1" / "model.plan")
    _classifier(tmp_path / "tiny.onnx", seed=7)
    plans = build_repositories(_spec(tmp_path), ["ngc"])
    after = read_lock(tmp_path / "model_repository" / "tiny_trt" / "1" / "model.plan")
    assert before.onnx_sha256 != after.onnx_sha256
    assert any(n.startswith("plan tiny_trt/1/model.plan: built, fp16") for n in plans["ngc"].notes)


def test_build_repositories_gates_on_random_inputs_when_no_evaluation_data(tmp_path: Path, fake_trtexec: Path) -> None:
    spec = _spec(tmp_path, {"evaluation_data": None, "random_input_range": [0, 2]}, max_batch_size=256,
                 dynamic_batching={"preferred_batch_size": [256]})
    build_repositories(spec, ["ngc"])
    lock = read_lock(tmp_path / "model_repository" / "tiny_trt" / "1" / "model.plan")
    assert lock.gate["samples"] == 1000
    assert "seeded random samples in [0.0, 2.0)" in str(lock.gate["source"])
    assert json.loads(lock.to_json())["gate"]["passed"] is True


# --------------------------------------------------------------------------------------------------
# What trtexec cannot serve, and how many processes the gate starts (issue 18)


def _runs(argv_log: Path) -> int:
    """trtexec invocations that ran a plan (the gate), from the fake's argv log."""
    lines = argv_log.read_text().splitlines()
    return sum(any(a.startswith("--loadEngine=") for a in json.loads(line)) for line in lines)


def test_build_repositories_gates_in_one_trtexec_run_per_profile_max_batch_when_the_model_batches(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_log = tmp_path / "argv.log"
    monkeypatch.setenv("FAKE_TRT_ARGV_LOG", str(argv_log))
    build_repositories(_spec(tmp_path), ["ngc"])  # 24 samples, profile max batch 8
    assert _runs(argv_log) == 3


def test_build_repositories_caps_the_trtexec_gate_processes_when_the_profile_takes_one_sample_per_run(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_log = tmp_path / "argv.log"
    monkeypatch.setenv("FAKE_TRT_ARGV_LOG", str(argv_log))
    monkeypatch.setattr(TrtexecBackend, "max_gate_runs", 4)
    plans = build_repositories(_spec(tmp_path, max_batch_size=1, dynamic_batching=None), ["ngc"])
    assert _runs(argv_log) == 4  # not one process for each of the 24 samples
    lock = read_lock(tmp_path / "model_repository" / "tiny_trt" / "1" / "model.plan")
    assert lock.gate["samples"] == 4
    assert "first 4 of 24 samples" in lock.gate["source"]
    assert any("gate passed" in n and "first 4 of 24 samples" in n for n in plans["ngc"].notes)


def test_trtexec_gate_run_limit_is_bounded_by_default() -> None:
    assert TrtexecBackend.max_gate_runs == 32


def test_build_repositories_refuses_uint8_outputs_before_building_when_the_builder_is_trtexec(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_log = tmp_path / "argv.log"
    monkeypatch.setenv("FAKE_TRT_ARGV_LOG", str(argv_log))
    _classifier(tmp_path / "tiny.onnx", uint8_output=True)
    with pytest.raises(PlanBuildError, match=r"output 'top' is UINT8: trtexec --exportOutput writes UINT8 values as "
                                             r"raw characters.*TensorRT Python API instead \(pip install "
                                             r"tensorrt-cu12-bindings"):
        build_repositories(_spec(tmp_path), ["ngc"])
    assert not argv_log.exists()  # refused before any trtexec process
    assert not (tmp_path / "model_repository").exists()


@pytest.mark.parametrize("name", ["a,b", "it's"])
def test_shapes_arg_raises_when_a_name_cannot_be_quoted_for_trtexec(name: str) -> None:
    with pytest.raises(PlanBuildError, match=r"trtexec cannot take a tensor name containing ','.*TensorRT Python API"):
        shapes_arg("shapes", {name: (1, 4)})


def test_build_repositories_refuses_an_unquotable_input_name_before_building_when_the_builder_is_trtexec(
    tmp_path: Path, fake_trtexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_log = tmp_path / "argv.log"
    monkeypatch.setenv("FAKE_TRT_ARGV_LOG", str(argv_log))
    _classifier(tmp_path / "tiny.onnx", input_name="pixels,raw")
    with pytest.raises(PlanBuildError, match=r"input 'pixels,raw': trtexec cannot take a tensor name"):
        build_repositories(_spec(tmp_path), ["ngc"])
    assert not argv_log.exists()


def test_demo_build_keeps_the_plan_and_its_lock_when_build_repo_built_them_first(
    tmp_path: Path, fake_trtexec: Path
) -> None:
    """`make demo` after a plan build: build-repo (the CLI) places a plan, then the demo's build step, run
    in a fresh interpreter as `make demo` runs it, must keep the plan and its lock (it used to drop both:
    the plan step was only registered when the CLI imported build_tools.tensorrt)."""
    # The demo is a client (the `clients` extra); the Python 3.10 repo-builder job installs only the core.
    pytest.importorskip("PIL", reason="clients.demo needs Pillow (the clients extra), absent from the core install")
    import subprocess

    import yaml

    _spec(tmp_path)  # writes the ONNX model and the evaluation data
    data = {
        "flavors": {"ngc": {"output": "model_repository"}},
        "models": {"tiny": {
            "source": "tiny.onnx", "formats": ["onnx", "tensorrt_plan"], "max_batch_size": 8,
            "dynamic_batching": {"preferred_batch_size": [4, 8]},
            "tensorrt": {"precision": "fp16", "evaluation_data": "eval.npy"},
        }, "pre": {
            "kind": "python", "source": "pre.py", "max_batch_size": 8,
            "inputs": [{"name": "x", "data_type": "FP32", "dims": [4]}],
            "outputs": [{"name": "y", "data_type": "FP32", "dims": [4]}],
        }},
    }
    (tmp_path / "pre.py").write_text("class TritonPythonModel:\n    pass\n")
    spec_file = tmp_path / "deploy.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    root = Path(__file__).resolve().parents[2]
    build = subprocess.run([sys.executable, "-m", "build_tools.cli", "build-repo", "--spec", str(spec_file)],
                           cwd=root, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    plan = tmp_path / "model_repository" / "tiny_trt" / "1" / "model.plan"
    lock = plan.with_name("model.plan.json.lock")
    before = (plan.read_bytes(), lock.read_bytes())

    demo_step = ("import sys\nfrom build_tools.spec import load_spec\nfrom clients.demo import build\n"
                 "print('\\n'.join(build(load_spec(sys.argv[1]))['ngc'].notes))")
    demo = subprocess.run([sys.executable, "-c", demo_step, str(spec_file)], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    assert (plan.read_bytes(), lock.read_bytes()) == before
    assert "plan tiny_trt/1/model.plan: reused, built" in demo.stdout
    assert "python backend shared memory: 1 instance(s)" in demo.stdout
