"""Triton Python-backend model that runs an ONNX file with ONNX Runtime on the CPU.

The embedded Triton (the binary inside the nvidia-pytriton wheel) has no onnxruntime backend, so the
build tools copy this file next to the ONNX file in each version folder. Inputs and outputs come from
config.pbtxt (the build tools write it from the graph), never from assumptions about the model.

Batching: one session run per execute() over every request in the batch that shares non-batch dims,
split back per request. A bad request gets its own TritonError; its batch neighbours are answered.

Monitoring (`monitoring.enabled`, set when the model is watched and has no lifecycle router in front):
answered requests feed the prediction metrics and log (control/monitor/serving.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from build_tools.python_models import batch_groups
from build_tools.runner_params import (
    RUNNER_PARAM_INTER,
    RUNNER_PARAM_INTRA,
    RUNNER_PARAM_ONNX_FILE,
    RUNNER_PARAM_OPT_LEVEL,
    RUNNER_PARAM_RANGE_PREFIX,
)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _param(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _ranges(config: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """{input: (low, high)} from the `input_range.<input>` parameters the build tools write."""
    out: dict[str, tuple[float, float]] = {}
    for key, value in config.get("parameters", {}).items():
        if key.startswith(RUNNER_PARAM_RANGE_PREFIX):
            low, high = (float(v) for v in value["string_value"].split(","))
            out[key[len(RUNNER_PARAM_RANGE_PREFIX):]] = (low, high)
    return out


def check_values(name: str, arr: np.ndarray, value_range: tuple[float, float] | None) -> None:
    """Refuse non-finite floats and values outside the declared range, naming the tensor and the count.

    NaN or +-Inf would come back as all-NaN probabilities, and huge values saturate the network into a
    confident wrong answer; both are client bugs to report, not to answer. min/max first: one pass
    each over a request that is fine, the counting only for a request that is not.
    """
    if arr.size == 0:
        return
    floating = arr.dtype.kind == "f"
    if floating or value_range is not None:
        low_seen, high_seen = arr.min(), arr.max()
        if floating and not (np.isfinite(low_seen) and np.isfinite(high_seen)):
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise ValueError(
                f"input {name!r} has {bad} non-finite value(s) (NaN or +-Inf) out of {arr.size}; expected "
                + (f"finite values in [{value_range[0]:g}, {value_range[1]:g}]" if value_range else "finite values")
            )
        if value_range is not None and (low_seen < value_range[0] or high_seen > value_range[1]):
            low, high = value_range
            bad = int(np.count_nonzero((arr < low) | (arr > high)))
            raise ValueError(
                f"input {name!r} has {bad} value(s) outside [{low:g}, {high:g}] out of {arr.size} "
                f"(seen {float(low_seen):g} to {float(high_seen):g})"
            )


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        onnx_file = _param(self.config, RUNNER_PARAM_ONNX_FILE, "model.onnx")
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(_param(self.config, RUNNER_PARAM_INTRA, "1"))
        opts.inter_op_num_threads = int(_param(self.config, RUNNER_PARAM_INTER, "1"))
        level = _param(self.config, RUNNER_PARAM_OPT_LEVEL, "all")
        if level not in _OPT_LEVELS:
            raise pb_utils.TritonModelException(
                f"{self.name}: parameter {RUNNER_PARAM_OPT_LEVEL}={level!r}; allowed: {sorted(_OPT_LEVELS)}"
            )
        opts.graph_optimization_level = _OPT_LEVELS[level]
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise pb_utils.TritonModelException(f"{self.name}: cannot load {path}: {e}") from e

        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        # (name, numpy dtype, dims without batch, optional)
        self.inputs: list[tuple[str, np.dtype, list[int], bool]] = []
        for inp in self.config["input"]:
            if inp["name"] not in graph_inputs:
                raise pb_utils.TritonModelException(
                    f"{self.name}: config input {inp['name']!r} is not a graph input; graph inputs: "
                    f"{sorted(graph_inputs)}"
                )
            dtype = pb_utils.triton_string_to_numpy(inp["data_type"])
            self.inputs.append((inp["name"], np.dtype(dtype), [int(d) for d in inp["dims"]],
                                bool(inp.get("optional", False))))
        self.outputs: list[tuple[str, np.dtype]] = []
        for out in self.config["output"]:
            if out["name"] not in graph_outputs:
                raise pb_utils.TritonModelException(
                    f"{self.name}: config output {out['name']!r} is not a graph output; graph outputs: "
                    f"{sorted(graph_outputs)}"
                )
            self.outputs.append((out["name"], np.dtype(pb_utils.triton_string_to_numpy(out["data_type"]))))
        self.output_names = [name for name, _ in self.outputs]
        declared = _ranges(self.config)
        unknown = sorted(set(declared) - {name for name, _, _, _ in self.inputs})
        if unknown:
            raise pb_utils.TritonModelException(f"{self.name}: input_range for unknown input(s) {unknown}")
        self._value_ranges = [declared.get(name) for name, _, _, _ in self.inputs]
        # Per input: its dims as a tuple when all are fixed (checked with one tuple compare), and the
        # full expected shape (-1 = any) for the message and for variable dims.
        lead = [-1] if self.max_batch_size > 0 else []
        self._shape_checks: list[tuple[tuple[int, ...] | None, list[int]]] = [
            (tuple(dims) if all(d >= 0 for d in dims) else None, lead + dims) for _, _, dims, _ in self.inputs
        ]
        self.version = args["model_version"]
        self.monitor = None
        if _param(self.config, "monitoring.enabled", "false") == "true":
            # Imported only when asked for: the watching code lives in the project's package.
            from control.monitor.serving import ServingMonitor

            self.monitor = ServingMonitor(pb_utils, self.config, args["model_repository"], self.name)

    def _read(self, request: Any) -> tuple[dict[str, np.ndarray], int]:
        """The request's arrays and its batch size; raises ValueError naming the problem."""
        return self.check({t.name(): t.as_numpy() for t in request.inputs()})

    def check(self, tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The arrays of one request, in config order, and its batch size; raises ValueError naming the problem.

        Runs once per request on the serving path: the expected shapes and value ranges are precomputed
        in initialize; non-finite floats and values outside a declared `input_range` are refused here.
        """
        arrays: dict[str, np.ndarray] = {}
        batch = 1
        batching = self.max_batch_size > 0
        for (name, dtype, _, optional), (fixed, expected), value_range in zip(
            self.inputs, self._shape_checks, self._value_ranges
        ):
            arr = tensors.get(name)
            if arr is None:
                if optional:
                    continue
                raise ValueError(f"missing input {name!r}; expected inputs: {[i[0] for i in self.inputs]}")
            if arr.dtype != dtype:
                raise ValueError(f"input {name!r} has data type {arr.dtype}, expected {dtype}")
            shape = arr.shape
            if fixed is not None:
                ok = (len(shape) == len(fixed) + 1 and shape[1:] == fixed) if batching else shape == fixed
            else:
                ok = len(shape) == len(expected) and all(e in (-1, s) for e, s in zip(expected, shape))
            if not ok:
                raise ValueError(f"input {name!r} has shape {list(shape)}, expected {expected} (-1 = any)")
            if batching:
                if not arrays:
                    batch = shape[0]
                elif shape[0] != batch:
                    raise ValueError(f"input {name!r} has batch size {shape[0]}, other inputs have {batch}")
            check_values(name, arr, value_range)
            arrays[name] = arr
        return arrays, batch

    def _error(self, message: str, code: Any = None) -> Any:
        if code is None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {message}"))
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {message}", code))

    def execute(self, requests: list[Any]) -> list[Any]:
        read: list[tuple[dict[str, np.ndarray], int] | ValueError] = []
        for request in requests:
            try:
                read.append(self._read(request))
            except ValueError as e:
                read.append(e)
        responses = []
        results = self.infer(read)
        if self.monitor is not None:
            try:
                self._observe(requests, read, results)
            except Exception as e:  # monitoring never fails a request
                pb_utils.Logger.log_warn(f"{self.name}: monitoring failed (answers unaffected): {e!r}")
        for result in results:
            if isinstance(result, ValueError):
                responses.append(self._error(str(result), pb_utils.TritonError.INVALID_ARG))
            elif isinstance(result, str):
                responses.append(self._error(result))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, r) for name, r in zip(self.output_names, result)]
                ))
        return responses

    def _observe(self, requests: list[Any], read: list[Any], results: list[Any]) -> None:
        settings = self.monitor.settings
        try:
            out_index = self.output_names.index(settings.output)
        except ValueError:
            return
        ids, inputs, outputs = [], [], []
        for request, item, result in zip(requests, read, results):
            if isinstance(result, (ValueError, str)) or isinstance(item, ValueError):
                continue
            arr = item[0].get(settings.input)
            if arr is None:
                continue
            ids.append(request.request_id())
            batching = self.max_batch_size > 0
            inputs.append(arr if batching else arr[None])
            outputs.append(result[out_index] if batching else result[out_index][None])
        self.monitor.observe(self.version, ids, inputs, outputs)

    def infer(
        self, read: list[tuple[dict[str, np.ndarray], int] | ValueError]
    ) -> list[list[np.ndarray] | ValueError | str]:
        """Per request (checked by ``check``, or its ValueError): its outputs, in config order, or why it failed.

        Requests whose non-batch dims agree share one session run; a failed run fails its group only.
        """
        answers: list[list[np.ndarray] | ValueError | str] = [[] for _ in read]
        checked = []
        for i, item in enumerate(read):
            if isinstance(item, ValueError):
                answers[i] = item
            else:
                checked.append((i, *item))
        outputs = self.outputs
        # Inputs are read in config order, so equal names and non-batch dims mean one session run.
        for members in batch_groups.group(checked, self.max_batch_size > 0):
            feed = batch_groups.feed(members)
            try:
                results = self.session.run(self.output_names, feed)
            except Exception as e:  # onnxruntime errors are per run: fail this group only
                for m in members:
                    answers[m.index] = f"onnxruntime failed: {e}"
                continue
            # One conversion per run (not per request); row slices of a C-contiguous array stay contiguous.
            results = [
                r if r.dtype == dtype and r.flags.c_contiguous else np.ascontiguousarray(r, dtype=dtype)
                for r, (_, dtype) in zip(results, outputs)
            ]
            for i, rows in batch_groups.split(members, results):
                answers[i] = rows
        return answers

    def finalize(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        self.session = None
