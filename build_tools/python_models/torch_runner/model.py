"""Triton Python-backend model that runs a TorchScript file with PyTorch on the instance's device.

The embedded Triton has no PyTorch backend, so the build tools copy this file next to the TorchScript
file (the TorchScript variant of an ONNX model, same inputs and outputs) in each version folder.
The device follows the instance group: KIND_GPU -> the instance's CUDA device, KIND_CPU -> the CPU.
A KIND_GPU instance where torch sees no CUDA device fails at load, naming what it found.

Batching: one forward() per execute() over every request in the batch that shares non-batch dims,
split back per request. A bad request gets its own TritonError; its batch neighbours are answered.
forward() takes the config's inputs positionally, in config order, and returns a tensor or a tuple of
tensors in the config's output order (the PyTorch backend's convention for such names).

Monitoring (`monitoring.enabled`): answered requests feed the prediction metrics and log
(control/monitor/serving.py), as the ONNX runner's do.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from build_tools.python_models import batch_groups
from build_tools.runner_params import RUNNER_PARAM_TORCH_THREADS, RUNNER_PARAM_TORCHSCRIPT_FILE


def _param(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def instance_device(kind: str, device_id: int, name: str) -> torch.device:
    """The torch device for a Triton instance; raises TritonModelException when CUDA is missing."""
    if kind == "GPU":
        if not torch.cuda.is_available():
            raise pb_utils.TritonModelException(
                f"{name}: KIND_GPU instance on GPU {device_id}, but torch {torch.__version__} sees no CUDA "
                f"device (torch.version.cuda={torch.version.cuda}, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); use KIND_CPU on this machine"
            )
        if device_id >= torch.cuda.device_count():
            raise pb_utils.TritonModelException(
                f"{name}: KIND_GPU instance on GPU {device_id}, but torch sees {torch.cuda.device_count()} "
                f"CUDA device(s)"
            )
        return torch.device("cuda", device_id)
    return torch.device("cpu")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        kind = args.get("model_instance_kind", "CPU")
        self.device = instance_device(kind, int(args.get("model_instance_device_id", "0") or 0), self.name)
        threads = int(_param(self.config, RUNNER_PARAM_TORCH_THREADS, "1"))
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        path = os.path.join(
            args["model_repository"], args["model_version"], _param(self.config, RUNNER_PARAM_TORCHSCRIPT_FILE,
                                                                    "model.pt")
        )
        try:
            self.module = torch.jit.load(path, map_location=self.device).eval()
        except Exception as e:  # torch raises RuntimeError/ValueError subclasses of its own
            raise pb_utils.TritonModelException(f"{self.name}: cannot load TorchScript {path}: {e}") from e

        # (name, numpy dtype, dims without batch, optional)
        self.inputs: list[tuple[str, np.dtype, list[int]]] = []
        for inp in self.config["input"]:
            if inp.get("optional", False):
                raise pb_utils.TritonModelException(
                    f"{self.name}: optional input {inp['name']!r}: forward() takes inputs positionally, "
                    f"so every input must be present"
                )
            dtype = np.dtype(pb_utils.triton_string_to_numpy(inp["data_type"]))
            self.inputs.append((inp["name"], dtype, [int(d) for d in inp["dims"]]))
        self.outputs: list[tuple[str, np.dtype]] = [
            (out["name"], np.dtype(pb_utils.triton_string_to_numpy(out["data_type"])))
            for out in self.config["output"]
        ]
        lead = [-1] if self.max_batch_size > 0 else []
        self._expected = [lead + dims for _, _, dims in self.inputs]
        self.version = args["model_version"]
        self.monitor = None
        if _param(self.config, "monitoring.enabled", "false") == "true":
            from control.monitor.serving import ServingMonitor

            self.monitor = ServingMonitor(pb_utils, self.config, args["model_repository"], self.name)
            names = [n for n, _, _ in self.inputs]
            outs = [n for n, _ in self.outputs]
            s = self.monitor.settings
            self._watch = (names.index(s.input) if s.input in names else None,
                           outs.index(s.output) if s.output in outs else None)
        # One forward pass at load: a module whose signature does not fit the config fails here, not on
        # the first client's request.
        with torch.inference_mode():
            probe = [
                torch.zeros([1 if d < 0 else d for d in shape], dtype=_torch_dtype(dtype), device=self.device)
                for (_, dtype, _), shape in zip(self.inputs, self._expected)
            ]
            try:
                self._outputs_of(self.module(*probe))
            except Exception as e:
                raise pb_utils.TritonModelException(
                    f"{self.name}: forward() of {path} does not accept the config's inputs "
                    f"{[n for n, _, _ in self.inputs]} or return its outputs {[n for n, _ in self.outputs]}: {e}"
                ) from e

    def _outputs_of(self, result: Any) -> list[torch.Tensor]:
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(results) != len(self.outputs):
            raise ValueError(f"forward() returned {len(results)} tensor(s), the config has {len(self.outputs)}")
        return results

    def _read(self, request: Any) -> tuple[list[np.ndarray], int]:
        """The request's arrays in config order and its batch size; raises ValueError naming the problem."""
        tensors = {t.name(): t for t in request.inputs()}
        arrays: list[np.ndarray] = []
        batch = 1
        batching = self.max_batch_size > 0
        for (name, dtype, _), expected in zip(self.inputs, self._expected):
            tensor = tensors.get(name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}; expected inputs: {[i[0] for i in self.inputs]}")
            arr = tensor.as_numpy()
            if arr.dtype != dtype:
                raise ValueError(f"input {name!r} has data type {arr.dtype}, expected {dtype}")
            shape = arr.shape
            if len(shape) != len(expected) or not all(e in (-1, s) for e, s in zip(expected, shape)):
                raise ValueError(f"input {name!r} has shape {list(shape)}, expected {expected} (-1 = any)")
            if batching:
                if not arrays:
                    batch = shape[0]
                elif shape[0] != batch:
                    raise ValueError(f"input {name!r} has batch size {shape[0]}, other inputs have {batch}")
            arrays.append(arr)
        return arrays, batch

    def _error(self, message: str, code: Any = None) -> Any:
        if code is None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {message}"))
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {message}", code))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batching = self.max_batch_size > 0
        checked = []
        for i, request in enumerate(requests):
            try:
                arrays, batch = self._read(request)
            except ValueError as e:
                responses[i] = self._error(str(e), pb_utils.TritonError.INVALID_ARG)
                continue
            checked.append((i, arrays, batch))

        watched: list[tuple[str, np.ndarray, np.ndarray]] = []
        for members in batch_groups.group(checked, batching):
            feed = batch_groups.feed(members)
            try:
                with torch.inference_mode():
                    # One host->device copy per input and one device->host copy per output per group.
                    out = self._outputs_of(self.module(*(torch.from_numpy(a).to(self.device) for a in feed)))
                    results = [
                        np.ascontiguousarray(t.detach().to("cpu").numpy(), dtype=dtype)
                        for t, (_, dtype) in zip(out, self.outputs)
                    ]
            except Exception as e:  # a failed forward fails this group only
                for m in members:
                    responses[m.index] = self._error(f"torch forward failed: {e}")
                continue
            arrays_of = {m.index: m.arrays for m in members}
            for i, rows in batch_groups.split(members, results):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, r) for (name, _), r in zip(self.outputs, rows)]
                )
                if self.monitor is not None and None not in self._watch:
                    k_in, k_out = self._watch
                    inp, answer = arrays_of[i][k_in], rows[k_out]
                    # Without batching a request has no batch dimension: the monitor wants one.
                    watched.append((requests[i].request_id(), inp if batching else inp[None],
                                    answer if batching else answer[None]))
        if watched:
            try:
                self.monitor.observe(self.version, [w[0] for w in watched], [w[1] for w in watched],
                                     [w[2] for w in watched])
            except Exception as e:  # monitoring never fails a request
                pb_utils.Logger.log_warn(f"{self.name}: monitoring failed (answers unaffected): {e!r}")
        return responses

    def finalize(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        self.module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
