"""Triton Python-backend model that runs an ONNX file with ONNX Runtime on the CPU.

The embedded Triton (the binary inside the nvidia-pytriton wheel) has no onnxruntime backend, so the
build tools copy this file next to the ONNX file in each version folder. Inputs and outputs come from
config.pbtxt (the build tools write it from the graph), never from assumptions about the model.

Batching: one session run per execute() over every request in the batch that shares non-batch dims,
split back per request. A bad request gets its own TritonError; its batch neighbours are answered.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _param(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        onnx_file = _param(self.config, "onnx_file", "model.onnx")
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(_param(self.config, "intra_op_threads", "1"))
        opts.inter_op_num_threads = int(_param(self.config, "inter_op_threads", "1"))
        level = _param(self.config, "graph_optimization_level", "all")
        if level not in _OPT_LEVELS:
            raise pb_utils.TritonModelException(
                f"{self.name}: parameter graph_optimization_level={level!r}; allowed: {sorted(_OPT_LEVELS)}"
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

    def _read(self, request: Any) -> tuple[dict[str, np.ndarray], int]:
        """The request's arrays and its batch size; raises ValueError naming the problem."""
        arrays: dict[str, np.ndarray] = {}
        batch = 1
        for name, dtype, dims, optional in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                if optional:
                    continue
                raise ValueError(f"missing input {name!r}; expected inputs: {[i[0] for i in self.inputs]}")
            arr = tensor.as_numpy()
            if arr.dtype != dtype:
                raise ValueError(f"input {name!r} has data type {arr.dtype}, expected {dtype}")
            shape = list(arr.shape)
            expected = ([-1] if self.max_batch_size > 0 else []) + dims
            if len(shape) != len(expected) or any(e != -1 and e != s for e, s in zip(expected, shape)):
                raise ValueError(f"input {name!r} has shape {shape}, expected {expected} (-1 = any)")
            if self.max_batch_size > 0:
                if name == self.inputs[0][0] or not arrays:
                    batch = shape[0]
                elif shape[0] != batch:
                    raise ValueError(f"input {name!r} has batch size {shape[0]}, other inputs have {batch}")
            arrays[name] = arr
        return arrays, batch

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        # Requests can only share a session run when their non-batch dims (and inputs) agree.
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray], int]]] = {}
        for i, request in enumerate(requests):
            try:
                arrays, batch = self._read(request)
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.name}: {e}", pb_utils.TritonError.INVALID_ARG)
                )
                continue
            if self.max_batch_size > 0:
                key = tuple((n, a.shape[1:]) for n, a in sorted(arrays.items()))
            else:
                key = ("request", i)
            groups.setdefault(key, []).append((i, arrays, batch))

        for members in groups.values():
            if len(members) == 1:
                feed = members[0][1]
            else:
                feed = {n: np.concatenate([m[1][n] for m in members]) for n in members[0][1]}
            try:
                results = self.session.run(self.output_names, feed)
            except Exception as e:  # onnxruntime errors are per run: fail this group only
                for i, _, _ in members:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{self.name}: onnxruntime failed: {e}")
                    )
                continue
            offset = 0
            for i, _, batch in members:
                if self.max_batch_size > 0:
                    parts = [r[offset:offset + batch] for r in results]
                    offset += batch
                else:
                    parts = results
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(part, dtype=dtype))
                    for (name, dtype), part in zip(self.outputs, parts)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.session = None
