"""Plan building and running with the TensorRT Python API (`import tensorrt`).

Device memory goes through a few CUDA driver calls via ctypes (`CudaDriver`), so the builder needs
nothing beyond the `tensorrt` module and the NVIDIA driver: no pycuda, cuda-python or torch.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from build_tools.errors import PlanBuildError
from build_tools.onnx_io import GraphInterface
from build_tools.tensorrt.backend import BuildInfo, BuildRequest, CalibrationSet, NoBuilderError, PlanRunner
from build_tools.tensorrt.trtexec import decode_version

logger = logging.getLogger(__name__)

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_P = ctypes.POINTER


def _load_driver() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def current_compute_capability(device: int = 0) -> str | None:
    """Compute capability of the GPU plans would be built on, None when there is none."""
    if visible_gpu_count() <= device:
        return None
    try:
        return CudaDriver(device).compute_capability()
    except PlanBuildError:
        return None


def visible_gpu_count() -> int:
    """How many CUDA devices the driver exposes (0 without a driver or GPU)."""
    lib = _load_driver()
    if lib is None or lib.cuInit(0) != 0:
        return 0
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


class CudaDriver:
    """The handful of CUDA driver calls the builder and the gate need, on the device's primary context
    (the one the CUDA runtime inside TensorRT uses too)."""

    def __init__(self, device: int = 0) -> None:
        lib = _load_driver()
        if lib is None:
            raise NoBuilderError("no NVIDIA driver: libcuda.so.1 cannot be loaded; TensorRT plans need a GPU")
        self._lib = lib
        sig: dict[str, list[Any]] = {
            "cuInit": [ctypes.c_uint],
            "cuDeviceGetCount": [_P(ctypes.c_int)],
            "cuDeviceGet": [_P(ctypes.c_int), ctypes.c_int],
            "cuDeviceGetName": [ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
            "cuDeviceGetAttribute": [_P(ctypes.c_int), ctypes.c_int, ctypes.c_int],
            "cuDevicePrimaryCtxRetain": [_P(ctypes.c_void_p), ctypes.c_int],
            "cuCtxSetCurrent": [ctypes.c_void_p],
            "cuMemAlloc_v2": [_P(ctypes.c_uint64), ctypes.c_size_t],
            "cuMemFree_v2": [ctypes.c_uint64],
            "cuMemcpyHtoD_v2": [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t],
            "cuMemcpyDtoH_v2": [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t],
            "cuStreamCreate": [_P(ctypes.c_void_p), ctypes.c_uint],
            "cuStreamSynchronize": [ctypes.c_void_p],
            "cuGetErrorName": [ctypes.c_int, _P(ctypes.c_char_p)],
        }
        for name, args in sig.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = ctypes.c_int
        self._call("cuInit", 0)
        count = ctypes.c_int(0)
        self._call("cuDeviceGetCount", ctypes.byref(count))
        if count.value <= device:
            raise NoBuilderError(f"CUDA device {device} not found ({count.value} visible); TensorRT plans need a GPU")
        dev = ctypes.c_int(0)
        self._call("cuDeviceGet", ctypes.byref(dev), device)
        self.device = dev.value
        ctx = ctypes.c_void_p()
        self._call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), self.device)
        self._call("cuCtxSetCurrent", ctx)

    def _call(self, name: str, *args: Any) -> None:
        code = getattr(self._lib, name)(*args)
        if code != 0:
            text = ctypes.c_char_p()
            self._lib.cuGetErrorName(code, ctypes.byref(text))
            label = text.value.decode() if text.value else "unknown error"
            raise PlanBuildError(f"CUDA driver call {name} failed with {label} ({code})")

    def device_name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._call("cuDeviceGetName", buf, 256, self.device)
        return buf.value.decode(errors="replace")

    def compute_capability(self) -> str:
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._call("cuDeviceGetAttribute", ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                   self.device)
        self._call("cuDeviceGetAttribute", ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                   self.device)
        return f"{major.value}.{minor.value}"

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64(0)
        self._call("cuMemAlloc_v2", ctypes.byref(ptr), max(int(nbytes), 1))
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self._call("cuMemFree_v2", ptr)

    def to_device(self, ptr: int, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        self._call("cuMemcpyHtoD_v2", ptr, arr.ctypes.data_as(ctypes.c_void_p), arr.nbytes)

    def to_host(self, arr: np.ndarray, ptr: int) -> None:
        if not arr.flags.c_contiguous:
            raise PlanBuildError("internal: device-to-host copies need a contiguous host array")
        self._call("cuMemcpyDtoH_v2", arr.ctypes.data_as(ctypes.c_void_p), ptr, arr.nbytes)

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._call("cuStreamCreate", ctypes.byref(handle), 0)
        return int(handle.value or 0)

    def synchronize(self, stream: int) -> None:
        self._call("cuStreamSynchronize", ctypes.c_void_p(stream))


KEEP_MESSAGES = 200  # errors and warnings kept for error reports, newest last


class MessageLog:
    """What TensorRT said that an error report needs: its errors and warnings, the last `keep` of them.

    INFO goes to debug logging only and VERBOSE is dropped: a build emits thousands of those, and the
    one logger of a process lives as long as the process.
    """

    def __init__(self, keep: int = KEEP_MESSAGES) -> None:
        self._lines: deque[tuple[int, str]] = deque(maxlen=keep)
        self._count = 0
        self._lock = threading.Lock()

    def add(self, level: str, message: str) -> None:
        if level in ("error", "internal_error"):
            logger.error("TensorRT: %s", message)
        elif level == "warning":
            logger.warning("TensorRT: %s", message)
        else:
            if level == "info":
                logger.debug("TensorRT: %s", message)
            return
        with self._lock:
            self._count += 1
            self._lines.append((self._count, f"[{level.upper()}] {message}"))

    def mark(self) -> int:
        """A point in the log; `since(mark)` returns what was kept after it."""
        with self._lock:
            return self._count

    def since(self, mark: int, last: int = 30) -> list[str]:
        with self._lock:
            return [line for n, line in self._lines if n > mark][-last:]

    def __len__(self) -> int:
        return len(self._lines)


_SHARED: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()


def shared_logger(trt: Any) -> Any:
    """The one TensorRT logger of this process for this module, created on first use.

    TensorRT keeps the logger it was first given for the whole process, so every Builder, parser and
    Runtime here gets this same object; its `messages` (a MessageLog) then hold the runtime's errors
    too, which a second logger would never receive.
    """
    key = getattr(trt, "__name__", "tensorrt")
    with _SHARED_LOCK:
        existing = _SHARED.get(key)
        if existing is not None:
            return existing
        sev = trt.ILogger.Severity
        levels = {
            sev.INTERNAL_ERROR: "internal_error",
            sev.ERROR: "error",
            sev.WARNING: "warning",
            sev.INFO: "info",
            sev.VERBOSE: "verbose",
        }

        class ProcessLogger(trt.ILogger):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages = MessageLog()

            def log(self, severity: Any, msg: str) -> None:
                self.messages.add(levels.get(severity, "info"), msg)

        _SHARED[key] = ProcessLogger()
        return _SHARED[key]


def library_version() -> str | None:
    """The version of the libnvinfer this process loaded (getInferLibVersion), None when unknown."""
    for soname in ("libnvinfer.so.10", "libnvinfer.so.8"):
        try:
            lib = ctypes.CDLL(soname, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
        except OSError:
            continue
        fn = lib.getInferLibVersion
        fn.restype = ctypes.c_int32
        fn.argtypes = []
        return decode_version(int(fn()))
    return None


def bindings_mismatch(module_version: str, lib_version: str | None) -> str | None:
    """Why the Python module and the TensorRT libraries it runs on disagree (None: they agree or the
    library version is unknown). The bindings-only wheel runs on the image's own libraries."""
    if lib_version is None:
        return None
    mod = module_version.split(".")[:3]
    if mod == lib_version.split(".")[:3]:
        return None
    return (
        f"the TensorRT Python module is {module_version} but the TensorRT libraries it loaded are {lib_version}; "
        f"install the bindings of the libraries' version (pip install tensorrt-cu12-bindings=={lib_version})"
    )


def _calibrator(trt: Any, cuda: CudaDriver, calib: CalibrationSet) -> Any:
    """Entropy calibrator fed with the spec's calibration batches; it reuses and refreshes the cache."""
    if not calib.batches:
        raise PlanBuildError("int8 calibration needs at least one batch of calibration data")

    class NpyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            first = calib.batches[0]
            self.batch = int(next(iter(first.values())).shape[0])
            self.device = {n: cuda.alloc(a.nbytes) for n, a in first.items()}

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(calib.batches):
                return None
            batch = calib.batches[self.index]
            self.index += 1
            for n in names:
                cuda.to_device(self.device[n], batch[n])
            return [self.device[n] for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return calib.cache_path.read_bytes() if calib.cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            calib.cache_path.parent.mkdir(parents=True, exist_ok=True)
            calib.cache_path.write_bytes(bytes(memoryview(cache)))

        def release(self) -> None:
            for ptr in self.device.values():
                cuda.free(ptr)
            self.device = {}

    return NpyCalibrator()


class TensorRTApiBackend:
    """Builds and runs plans in-process with the TensorRT Python API."""

    name = "python"
    max_gate_runs: int | None = None  # in-process: any number of batches costs no process start

    def __init__(self, module: str = "tensorrt") -> None:
        trt = importlib.import_module(module)
        self.trt = trt
        self.module = module
        mismatch = bindings_mismatch(str(trt.__version__), library_version())
        if mismatch:
            raise PlanBuildError(mismatch)

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    def check_supported(self, graph: GraphInterface) -> None:
        """The Python API builds and runs every input name and output type the gate compares."""

    def build(self, request: BuildRequest) -> BuildInfo:
        trt = self.trt
        cuda = CudaDriver()
        log = shared_logger(trt)
        mark = log.messages.mark()
        builder = trt.Builder(log)
        # TensorRT 10 networks are always explicit-batch; the flag only exists (and is needed) before 10.
        major = int(self.version.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, log)
        if not parser.parse_from_file(str(request.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise PlanBuildError(f"TensorRT {self.version} cannot parse {request.onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mib << 20)
        prec = request.precision
        if not prec.tf32:
            config.clear_flag(trt.BuilderFlag.TF32)
        if prec.fp16:
            # Deprecated since TensorRT 10 and may disappear: without it we simply do not warn.
            if not getattr(builder, "platform_has_fast_fp16", True):
                logger.warning("this GPU has no fast fp16: an fp16 plan may be slower than fp32")
            config.set_flag(trt.BuilderFlag.FP16)
        profile = None
        if request.profiles:
            profile = builder.create_optimization_profile()
            for p in request.profiles:
                profile.set_shape(p.name, p.min, p.opt, p.max)
            config.add_optimization_profile(profile)
        calibrator = None
        if prec.int8:
            if request.calibration is None:
                raise PlanBuildError("int8 precision needs tensorrt.calibration_data")
            config.set_flag(trt.BuilderFlag.INT8)
            calibrator = _calibrator(trt, cuda, request.calibration)
            config.int8_calibrator = calibrator
            if profile is not None:
                config.set_calibration_profile(profile)
        self._use_timing_cache(config, request.timing_cache)
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.release()
        if serialized is None:
            raise PlanBuildError(
                f"TensorRT {self.version} could not build {request.plan_path} from {request.onnx_path}; "
                f"its errors and warnings:\n" + ("\n".join(log.messages.since(mark)) or "<none>")
            )
        request.plan_path.parent.mkdir(parents=True, exist_ok=True)
        with open(request.plan_path, "wb") as f:
            f.write(serialized)
        request.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        request.timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        return BuildInfo(self.version, cuda.device_name(), cuda.compute_capability(), self.name,
                         "\n".join(log.messages.since(mark, 10)))

    def _use_timing_cache(self, config: Any, path: Path) -> None:
        # The cache only holds kernel timings: a stale or foreign one costs build time, never correctness.
        data = path.read_bytes() if path.is_file() else b""
        cache = config.create_timing_cache(data)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            logger.warning("timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    def runner(self, plan_path: Path, dynamic_inputs: Iterable[str]) -> PlanRunner:
        trt = self.trt
        cuda = CudaDriver()
        log = shared_logger(trt)
        mark = log.messages.mark()
        runtime = trt.Runtime(log)
        engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise PlanBuildError(
                f"TensorRT {self.version} cannot load {plan_path}: " + "; ".join(log.messages.since(mark, 5))
            )
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        stream = cuda.stream()

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            allocations: list[int] = []
            try:
                for n in inputs:
                    arr = np.ascontiguousarray(feed[n].astype(trt.nptype(engine.get_tensor_dtype(n)), copy=False))
                    if not context.set_input_shape(n, tuple(arr.shape)):
                        raise PlanBuildError(f"{plan_path}: the plan does not accept shape {list(arr.shape)} for {n!r}")
                    ptr = cuda.alloc(arr.nbytes)
                    allocations.append(ptr)
                    cuda.to_device(ptr, arr)
                    context.set_tensor_address(n, ptr)
                results: dict[str, tuple[np.ndarray, int]] = {}
                for n in outputs:
                    shape = tuple(context.get_tensor_shape(n))
                    if any(d < 0 for d in shape):
                        raise PlanBuildError(f"{plan_path}: output {n!r} has a data-dependent shape {shape}")
                    host = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(n)))
                    ptr = cuda.alloc(host.nbytes)
                    allocations.append(ptr)
                    context.set_tensor_address(n, ptr)
                    results[n] = (host, ptr)
                if not context.execute_async_v3(stream):
                    raise PlanBuildError(
                        f"{plan_path}: TensorRT execution failed: " + "; ".join(log.messages.since(mark, 5))
                    )
                cuda.synchronize(stream)
                for host, ptr in results.values():
                    cuda.to_host(host, ptr)
                return {n: host for n, (host, _) in results.items()}
            finally:
                for ptr in allocations:
                    cuda.free(ptr)

        return run
