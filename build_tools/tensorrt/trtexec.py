"""Plan building and running with the `trtexec` command (used when the TensorRT Python API is absent).

Command construction (`build_command`, `run_command`) and log/output parsing are pure functions; `execute`
runs the process and turns every failure (cannot start, non-zero exit, timeout, missing output) into a
PlanBuildError carrying the tail of trtexec's output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build_tools.errors import PlanBuildError
from build_tools.onnx_io import GraphInterface
from build_tools.tensorrt.backend import BuildInfo, BuildRequest, PlanRunner

logger = logging.getLogger(__name__)

TRTEXEC_ENV = "TRTEXEC"  # full path of trtexec when it is neither on PATH nor where the image keeps it
# Where TensorRT's packages (and so the tritonserver images) keep trtexec: not on the image's PATH.
# Triton's own QA scripts call it by this path.
IMAGE_TRTEXEC_PATHS: tuple[str, ...] = ("/usr/src/tensorrt/bin/trtexec",)
BUILD_TIMEOUT_S = 3600.0
RUN_TIMEOUT_S = 600.0
TAIL_LINES = 30
# One trtexec process per gate batch re-initialises CUDA and reloads the plan (seconds each): a profile
# that only takes one sample per run (max_batch_size 0 or 1) gates on at most this many samples.
MAX_GATE_RUNS = 32


@dataclass(frozen=True)
class TrtexecLocation:
    path: str
    reason: str


def locate_trtexec() -> TrtexecLocation | None:
    """trtexec from $TRTEXEC, else PATH, else where the serving image keeps it; None when absent."""
    explicit = os.environ.get(TRTEXEC_ENV)
    if explicit:
        return TrtexecLocation(explicit, f"${TRTEXEC_ENV}")
    on_path = shutil.which("trtexec")
    if on_path:
        return TrtexecLocation(on_path, "on PATH")
    for candidate in IMAGE_TRTEXEC_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return TrtexecLocation(candidate, "where TensorRT's packages install it (not on PATH)")
    return None


def trtexec_search_description() -> str:
    return ", ".join([f"${TRTEXEC_ENV}", "PATH", *IMAGE_TRTEXEC_PATHS])


def find_trtexec() -> str | None:
    found = locate_trtexec()
    return found.path if found else None


# trtexec splits its tensor specs on ',' before it looks at quotes, and a name is quoted with "'": a name
# holding either cannot be written at all (TensorRT 10.5 sampleOptions.cpp).
_UNQUOTABLE = re.compile(r"[,']")


def check_tensor_name(name: str) -> None:
    if _UNQUOTABLE.search(name):
        raise PlanBuildError(
            f"input {name!r}: trtexec cannot take a tensor name containing ',' or \"'\" in its shape and input "
            f"flags; build this plan with the TensorRT Python API instead ({PYTHON_API_HINT}), or rename the "
            f"input in the ONNX graph"
        )


PYTHON_API_HINT = (
    "pip install tensorrt-cu12-bindings==<the image's TensorRT version> in the serving image, then "
    "TRITON_REPO_PLAN_BUILDER=python; docs/tensorrt.md"
)


def _tensor_name(name: str) -> str:
    check_tensor_name(name)
    # trtexec splits a spec on its last ':'; names holding ':' or blanks are wrapped in single quotes.
    return f"'{name}'" if re.search(r"[:\s]", name) else name


def shapes_arg(flag: str, shapes: Mapping[str, Sequence[int]]) -> str:
    """--minShapes=input:1x1x28x28,other:1x8 (trtexec's syntax: name:dims joined by x)."""
    spec = ",".join(f"{_tensor_name(n)}:{'x'.join(str(d) for d in s)}" for n, s in shapes.items())
    return f"--{flag}={spec}"


def build_command(trtexec: str | Path, req: BuildRequest) -> list[str]:
    """The trtexec command that builds req.plan_path from req.onnx_path."""
    cmd = [
        str(trtexec),
        f"--onnx={req.onnx_path}",
        f"--saveEngine={req.plan_path}",
        # MiB is trtexec's default unit for memory pools (TensorRT 8.4 and later).
        f"--memPoolSize=workspace:{req.workspace_mib}",
        f"--timingCacheFile={req.timing_cache}",
        # Build only: the accuracy gate runs the plan separately on real inputs.
        "--skipInference",
    ]
    if req.profiles:
        cmd += [
            shapes_arg("minShapes", {p.name: p.min for p in req.profiles}),
            shapes_arg("optShapes", {p.name: p.opt for p in req.profiles}),
            shapes_arg("maxShapes", {p.name: p.max for p in req.profiles}),
        ]
    prec = req.precision
    if not prec.tf32:
        cmd.append("--noTF32")
    if prec.fp16:
        cmd.append("--fp16")
    if prec.int8:
        cache = req.calibration.cache_path if req.calibration else None
        if cache is None or not cache.is_file():
            # trtexec cannot calibrate from data: with --int8 and no cache it uses placeholder scales.
            raise PlanBuildError(
                f"int8 with trtexec needs a calibration cache ({cache or 'none configured'} not found): trtexec "
                f"only reads caches (--calib), it cannot calibrate from tensorrt.calibration_data. Build this "
                f"plan once where the TensorRT Python API is importable (it writes that cache), or use "
                f"precision fp16"
            )
        cmd += ["--int8", f"--calib={cache}"]
    return cmd


def run_command(
    trtexec: str | Path,
    plan_path: Path,
    input_files: Mapping[str, Path],
    shapes: Mapping[str, Sequence[int]],
    export_path: Path,
) -> list[str]:
    """The trtexec command that runs a plan once on the given raw input files and exports the outputs."""
    cmd = [str(trtexec), f"--loadEngine={plan_path}"]
    if input_files:
        cmd.append("--loadInputs=" + ",".join(f"{_tensor_name(n)}:{p}" for n, p in input_files.items()))
    if shapes:
        cmd.append(shapes_arg("shapes", shapes))
    # One inference is enough to read outputs; the defaults would benchmark for seconds.
    cmd += [f"--exportOutput={export_path}", "--iterations=1", "--warmUp=0", "--duration=0", "--avgRuns=1"]
    return cmd


def tail(text: str | bytes | None, lines: int = TAIL_LINES) -> str:
    if text is None:
        return "<no output>"
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept) if kept else "<no output>"


def execute(cmd: list[str], expected: Iterable[Path], what: str, timeout_s: float) -> str:
    """Run trtexec; return its output, or raise PlanBuildError with the output's tail."""
    expected = list(expected)
    for path in expected:
        path.unlink(missing_ok=True)  # so a stale file cannot pass for this run's output
    logger.debug("%s: %s", what, " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=timeout_s, check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise PlanBuildError(
            f"{what}: trtexec did not finish within {timeout_s:.0f} s; its output ends with:\n{tail(e.output)}"
        ) from e
    except OSError as e:
        raise PlanBuildError(
            f"{what}: cannot run {cmd[0]!r} ({e.strerror or e}); expected an executable trtexec"
        ) from e
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise PlanBuildError(
            f"{what}: trtexec exited with code {proc.returncode}, expected 0; its output ends with:\n{tail(out)}"
        )
    if "&&&& FAILED" in out:
        raise PlanBuildError(f"{what}: trtexec reported FAILED (exit code 0); its output ends with:\n{tail(out)}")
    missing = [str(p) for p in expected if not p.is_file() or p.stat().st_size == 0]
    if missing:
        raise PlanBuildError(
            f"{what}: trtexec exited 0 but did not write {', '.join(missing)} (expected a non-empty file); "
            f"its output ends with:\n{tail(out)}"
        )
    return out


def decode_version(value: int) -> str:
    # NV_TENSORRT_VERSION: major*10000 + minor*100 + patch from TensorRT 10 on, major*1000 + ... before.
    if value >= 10000:
        return f"{value // 10000}.{(value // 100) % 100}.{value % 100}"
    return f"{value // 1000}.{(value // 100) % 10}.{value % 100}"


def parse_build_log(text: str) -> tuple[str | None, str | None, str | None]:
    """(TensorRT version, GPU name, compute capability) from trtexec's log, None where absent."""
    version = None
    m = re.search(r"TensorRT version:\s*(\d+(?:\.\d+)+)", text)
    if m:
        version = m.group(1)
    else:
        m = re.search(r"\[TensorRT v(\d+)\]", text)
        if m:
            version = decode_version(int(m.group(1)))
    gpu = re.search(r"Selected Device:\s*(.+?)\s*$", text, re.MULTILINE)
    cc = re.search(r"Compute Capability:\s*(\d+\.\d+)", text)
    return version, gpu.group(1) if gpu else None, cc.group(1) if cc else None


_NONFINITE = re.compile(r"(?<![\w\"])(-?)(nan|inf)(?![\w\"])", re.IGNORECASE)


def parse_output_json(text: str, source: str = "trtexec --exportOutput") -> dict[str, np.ndarray]:
    """Outputs written by --exportOutput: [{"name": ..., "dimensions": "4x10", "values": [...]}, ...]."""

    # C++ streams print nan/inf bare; Python's json reads NaN/Infinity.
    def fix(m: re.Match[str]) -> str:
        return "NaN" if m.group(2).lower() == "nan" else f"{m.group(1)}Infinity"

    try:
        data = json.loads(_NONFINITE.sub(fix, text))
    except json.JSONDecodeError as e:
        raise PlanBuildError(f"{source}: not valid JSON ({e}); expected trtexec's exported outputs") from e
    if not isinstance(data, list):
        raise PlanBuildError(f"{source}: expected a JSON list of outputs, got {type(data).__name__}")
    out: dict[str, np.ndarray] = {}
    for entry in data:
        try:
            name, dims, values = entry["name"], str(entry["dimensions"]), entry["values"]
        except (TypeError, KeyError) as e:
            raise PlanBuildError(f"{source}: output entry {entry!r} lacks name/dimensions/values") from e
        shape = tuple(int(d) for d in dims.split("x")) if dims.strip() else ()
        arr = np.asarray(values)
        if arr.size != int(np.prod(shape)):
            raise PlanBuildError(
                f"{source}: output {name!r} has {arr.size} values but dimensions {dims} need {int(np.prod(shape))}"
            )
        out[name] = arr.reshape(shape)
    return out


# Output types --exportOutput cannot write as numbers: trtexec prints UINT8 values as raw characters
# (only INT8 is widened to an integer before printing), which is not JSON.
UNEXPORTABLE_OUTPUT_TYPES = frozenset({"UINT8"})


class TrtexecBackend:
    """Builds with `trtexec --onnx ... --saveEngine`, runs with `trtexec --loadEngine ... --exportOutput`."""

    name = "trtexec"
    max_gate_runs: int | None = MAX_GATE_RUNS

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def check_supported(self, graph: GraphInterface) -> None:
        for t in graph.inputs:
            check_tensor_name(t.name)
        for t in graph.outputs:
            if t.data_type in UNEXPORTABLE_OUTPUT_TYPES:
                raise PlanBuildError(
                    f"output {t.name!r} is {t.data_type}: trtexec --exportOutput writes {t.data_type} values as raw "
                    f"characters, not numbers, so the accuracy gate cannot read them; build this plan with the "
                    f"TensorRT Python API instead ({PYTHON_API_HINT})"
                )

    def build(self, request: BuildRequest) -> BuildInfo:
        request.plan_path.parent.mkdir(parents=True, exist_ok=True)
        request.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        cmd = build_command(self.binary, request)
        log = execute(cmd, [request.plan_path], f"building {request.plan_path.name} from {request.onnx_path}",
                      BUILD_TIMEOUT_S)
        version, gpu, cc = parse_build_log(log)
        if version is None:
            raise PlanBuildError(
                f"trtexec built {request.plan_path} but its output names no TensorRT version (expected a "
                f"'TensorRT version: X.Y.Z' line), so the plan cannot be locked; output ends with:\n{tail(log)}"
            )
        return BuildInfo(version, gpu or "unknown", cc or "unknown", self.name, tail(log, 10))

    def runner(self, plan_path: Path, dynamic_inputs: Iterable[str]) -> PlanRunner:
        dynamic = set(dynamic_inputs)

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with tempfile.TemporaryDirectory(prefix="trtexec-gate.") as tmp:
                files = {}
                for i, (name, arr) in enumerate(feed.items()):
                    files[name] = Path(tmp) / f"input{i}.bin"
                    np.ascontiguousarray(arr).tofile(files[name])
                export = Path(tmp) / "outputs.json"
                shapes = {n: a.shape for n, a in feed.items() if n in dynamic}
                cmd = run_command(self.binary, plan_path, files, shapes, export)
                execute(cmd, [export], f"running {plan_path}", RUN_TIMEOUT_S)
                return parse_output_json(export.read_text(), str(export))

        return run
