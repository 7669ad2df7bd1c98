"""What the lifecycle needs from a running Triton, over HTTP or gRPC: the repository API (load with a
config override, unload, index) and inference with request parameters and a request id.

Kept to one small module so the lifecycle can move onto a shared client layer without touching the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.json_format import MessageToDict, MessageToJson
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from build_tools.errors import ClientError

logger = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")


class ControlClient:
    """One connection to one server; every tritonclient error becomes a ClientError naming the call."""

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 300.0) -> None:
        if protocol not in PROTOCOLS:
            raise ClientError(f"protocol {protocol!r} is not supported; expected one of {PROTOCOLS}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self._mod: Any = httpclient if protocol == "http" else grpcclient
        try:
            if protocol == "http":
                # Loads can take a while (warmup): the network timeout must outlast them.
                self._client: Any = httpclient.InferenceServerClient(
                    url, connection_timeout=timeout_s, network_timeout=timeout_s
                )
            else:
                self._client = grpcclient.InferenceServerClient(url)
        except InferenceServerException as e:
            raise ClientError(f"cannot create a {protocol} client for {url}: {e.message()}") from e

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as e:
            raise ClientError(f"{what} failed on {self.protocol}://{self.url}: {e.message()}") from e
        except OSError as e:
            raise ClientError(f"{what} failed on {self.protocol}://{self.url}: {e}") from e

    # -- repository API ----------------------------------------------------------------------------
    def load(self, model: str, config: mc.ModelConfig | None = None) -> None:
        """Load (or reload) a model; with `config`, Triton uses it instead of the config.pbtxt on disk."""
        kwargs: dict[str, Any] = {}
        if config is not None:
            kwargs["config"] = MessageToJson(config, preserving_proto_field_name=True, indent=None)
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        self._call(f"load of {model!r}", self._client.load_model, model, **kwargs)

    def unload(self, model: str) -> None:
        self._call(f"unload of {model!r}", self._client.unload_model, model)

    def index(self) -> list[dict[str, Any]]:
        index = self._call("repository index", self._client.get_model_repository_index)
        if isinstance(index, list):
            return index
        return [MessageToDict(m, preserving_proto_field_name=True) for m in index.models]

    def ready_versions(self, model: str) -> set[int]:
        return {
            int(m["version"]) for m in self.index()
            if m.get("name") == model and m.get("state") == "READY" and m.get("version")
        }

    def model_config(self, model: str) -> dict[str, Any]:
        cfg = self._call(f"config of {model!r}", self._client.get_model_config, model)
        if isinstance(cfg, dict):
            return cfg
        return MessageToDict(cfg.config, preserving_proto_field_name=True)

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except (InferenceServerException, OSError):
            return False

    # -- inference ---------------------------------------------------------------------------------
    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        parameters: Mapping[str, Any] | None = None,
        request_id: str = "",
        version: str = "",
    ) -> dict[str, np.ndarray]:
        built = []
        for name, array in inputs.items():
            dtype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
            inp = self._mod.InferInput(name, list(array.shape), dtype)
            inp.set_data_from_numpy(array)
            built.append(inp)
        requested = [self._mod.InferRequestedOutput(n) for n in outputs]
        result = self._call(
            f"inference on {model!r}", self._client.infer, model, built, model_version=version,
            outputs=requested, request_id=request_id, parameters=dict(parameters) if parameters else None,
        )
        return {n: result.as_numpy(n) for n in outputs}
