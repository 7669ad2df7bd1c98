"""The one Triton client: tritonclient's HTTP and gRPC APIs (sync and asyncio) behind one interface.

Everything that talks to Triton (clients, the Locust users, `verify`, the CLI and the server harness's
readiness checks) goes through here, so callers never branch on the protocol. Inputs and outputs are
numpy arrays keyed by tensor name; data types come from the arrays. Every tritonclient error, and a
server that cannot be reached, becomes a ClientError (`raise ... from e`) naming the call, the server
and the server's message, so a CLI can print one line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from build_tools.errors import ClientError, ServerUnreachableError

logger = logging.getLogger(__name__)

Protocol = Literal["http", "grpc"]
PROTOCOLS: tuple[Protocol, ...] = ("http", "grpc")


class _GrpcClient(grpcclient.InferenceServerClient):
    """tritonclient's gRPC client, closed once. Its ``__del__`` closes the channel again, and when the
    garbage collector runs that at interpreter exit, ``Channel.close`` can block forever on a gRPC mutex:
    a Locust run that had closed every client hung at exit (py-spy: ``gc_collect_main`` ->
    ``InferenceServerClient.__del__`` -> ``Channel._close`` -> ``pthread_mutex_lock``). At exit the
    process's sockets go with it, so nothing is left to close there."""

    _closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        super().close()

    def __del__(self) -> None:
        if not self._closed and not sys.is_finalizing():
            self.close()


@dataclass(frozen=True)
class Classification:
    """One entry of Triton's classification extension: `score:index:label`."""

    score: float
    index: int
    label: str

    @classmethod
    def parse(cls, raw: bytes | str) -> Classification:
        text = raw.decode() if isinstance(raw, bytes) else raw
        score, index, *label = text.split(":", 2)
        return cls(float(score), int(index), label[0] if label else "")


def _triton_dtype(array: np.ndarray) -> str:
    if array.dtype == np.object_ or array.dtype.kind in ("S", "U"):
        return "BYTES"
    return str(np_to_triton_dtype(array.dtype))


def infer_inputs(mod: Any, inputs: Mapping[str, np.ndarray]) -> list[Any]:
    """tritonclient InferInputs (of the http or grpc module `mod`) holding the arrays (binary on HTTP)."""
    built = []
    for name, array in inputs.items():
        inp = mod.InferInput(name, list(array.shape), _triton_dtype(array))
        inp.set_data_from_numpy(array)
        built.append(inp)
    return built


def client_module(protocol: Protocol) -> Any:
    """tritonclient.http or tritonclient.grpc (its InferInput, InferRequestedOutput, exception types)."""
    return httpclient if protocol == "http" else grpcclient


@dataclass(frozen=True)
class PreparedRequest:
    """An inference request serialized once and sent many times (load generators)."""

    model: str
    inputs: list[Any]
    outputs: list[Any]
    output_names: tuple[str, ...]
    version: str = ""


class TritonClient:
    """A connection to one server over one protocol. `url` is host:port (no scheme)."""

    def __init__(
        self, url: str, protocol: Protocol = "http", timeout_s: float = 60.0, concurrency: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`headers` go with every call: the admin header of a server whose operator APIs are restricted
        (for gRPC its metadata key, `triton-grpc-protocol-<header>`; see build_tools.server)."""
        if protocol not in PROTOCOLS:
            raise ClientError(f"protocol {protocol!r} is not supported; expected one of {PROTOCOLS}")
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.headers = dict(headers) if headers else None
        self._mod: Any = httpclient if protocol == "http" else grpcclient
        try:
            if protocol == "http":
                self._client: Any = httpclient.InferenceServerClient(
                    url, concurrency=concurrency, connection_timeout=timeout_s, network_timeout=timeout_s
                )
            else:
                self._client = _GrpcClient(url)
        except InferenceServerException as e:
            raise ClientError(f"cannot create a {protocol} client for {url}: {e.message()}") from e

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- server state ------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.protocol == "grpc" and "client_timeout" not in kwargs:
            kwargs["client_timeout"] = self.timeout_s
        if self.headers and "headers" not in kwargs:
            kwargs["headers"] = self.headers
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as e:
            if _unreachable(e):
                raise ServerUnreachableError(unreachable_message(self.protocol, self.url, e.message())) from e
            raise ClientError(f"{what} failed on {self.protocol}://{self.url}: {e.message()}") from e
        except OSError as e:  # refused or reset connections (tritonclient.http lets these through)
            detail = f"{type(e).__name__}: {e}"
            raise ServerUnreachableError(unreachable_message(self.protocol, self.url, detail)) from e

    def is_ready(self) -> bool:
        """Server readiness; False (not an error) while the server is not up yet."""
        try:
            return bool(self._call("server readiness", self._client.is_server_ready))
        except ClientError:
            return False

    def is_model_ready(self, model: str, version: str = "") -> bool:
        try:
            return bool(self._call(f"readiness of {model!r}", self._client.is_model_ready, model, version))
        except ClientError:
            return False

    def server_metadata(self) -> dict[str, Any]:
        meta = self._call("server metadata", self._client.get_server_metadata)
        return meta if isinstance(meta, dict) else _message_to_dict(meta)

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        cfg = self._call(f"config of {model!r}", self._client.get_model_config, model, version)
        if isinstance(cfg, dict):
            return cfg
        return _message_to_dict(cfg.config)

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        meta = self._call(f"metadata of {model!r}", self._client.get_model_metadata, model, version)
        return meta if isinstance(meta, dict) else _message_to_dict(meta)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model the server knows: name, version, state and reason (strings), as HTTP reports them."""
        index = self._call("repository index", self._client.get_model_repository_index)
        if isinstance(index, list):
            return [dict(m) for m in index]
        return [_message_to_dict(m) for m in index.models]

    def load_model(self, model: str, config: Mapping[str, Any] | str | None = None) -> None:
        """Load (or reload) a model; `config` (a JSON string or a dict) overrides its config.pbtxt."""
        override = json.dumps(config) if isinstance(config, Mapping) else config
        self._call(f"load of {model!r}", self._client.load_model, model, config=override)

    def unload_model(self, model: str, unload_dependents: bool = False) -> None:
        self._call(f"unload of {model!r}", self._client.unload_model, model, unload_dependents=unload_dependents)

    # -- inference ---------------------------------------------------------------------------------
    def _outputs(self, outputs: Sequence[str] | None, class_count: int) -> list[Any] | None:
        if not outputs:
            return None
        return [self._mod.InferRequestedOutput(name, class_count=class_count) for name in outputs]

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
        class_count: int = 0,
        parameters: Mapping[str, Any] | None = None,
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run one request; returns every requested (or every) output as numpy."""
        result = self._call(
            f"inference on {model!r}" + (f" version {version}" if version else ""),
            self._client.infer,
            model,
            infer_inputs(self._mod, inputs),
            model_version=version,
            outputs=self._outputs(outputs, class_count),
            parameters=dict(parameters) if parameters else None,
            request_id=request_id,
        )
        names = outputs or [o["name"] for o in _response_outputs(result)]
        return {name: result.as_numpy(name) for name in names}

    def prepare(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], version: str = ""
    ) -> PreparedRequest:
        """Build the request's tensors now, so `send` only sends (what a load generator times)."""
        return PreparedRequest(
            model, infer_inputs(self._mod, inputs), self._outputs(outputs, 0) or [], tuple(outputs), version
        )

    def send(self, request: PreparedRequest) -> dict[str, np.ndarray]:
        """Send a prepared request; returns its requested outputs as numpy."""
        result = self._call(
            f"inference on {request.model!r}" + (f" version {request.version}" if request.version else ""),
            self._client.infer,
            request.model,
            request.inputs,
            model_version=request.version,
            outputs=request.outputs,
        )
        return {name: result.as_numpy(name) for name in request.output_names}

    def classify(
        self, model: str, inputs: Mapping[str, np.ndarray], output: str, top_k: int = 1, version: str = ""
    ) -> list[list[Classification]]:
        """Top-k classifications per batch element, through Triton's classification extension."""
        raw = self.infer(model, inputs, [output], version=version, class_count=top_k)[output]
        # Triton returns at most as many entries as there are classes: split by batch element, not by top_k.
        batch = len(next(iter(inputs.values())))
        rows = raw.reshape(batch, -1)
        return [[Classification.parse(x) for x in row] for row in rows]


def unreachable_message(protocol: str, url: str, detail: str) -> str:
    return (
        f"cannot reach the server at {protocol}://{url} ({detail.strip().splitlines()[0] if detail else ''}); "
        f"expected Triton listening there: start it (`make serve`) or pass its address"
    )


def _unreachable(e: InferenceServerException) -> bool:
    """gRPC reports a refused connection as UNAVAILABLE; tritonclient.http's aio client as a ClientError."""
    return str(e.status()) in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


def _response_outputs(result: Any) -> list[dict[str, Any]]:
    response = result.get_response()
    if isinstance(response, dict):
        return list(response.get("outputs", []))
    return [{"name": o.name} for o in response.outputs]


def _message_to_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


class AsyncTritonClient:
    """The asyncio twin of TritonClient (tritonclient's http.aio / grpc.aio), for concurrent clients."""

    def __init__(self, url: str, protocol: Protocol = "http") -> None:
        if protocol not in PROTOCOLS:
            raise ClientError(f"protocol {protocol!r} is not supported; expected one of {PROTOCOLS}")
        import tritonclient.grpc.aio as grpc_aio
        import tritonclient.http.aio as http_aio

        self.url = url
        self.protocol = protocol
        self._mod: Any = httpclient if protocol == "http" else grpcclient
        self._client: Any = (http_aio if protocol == "http" else grpc_aio).InferenceServerClient(url)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncTritonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        try:
            meta = await self._client.get_model_metadata(model, version)
        except InferenceServerException as e:
            if _unreachable(e):
                raise ServerUnreachableError(unreachable_message(self.protocol, self.url, e.message())) from e
            raise ClientError(f"metadata of {model!r} failed on {self.protocol}://{self.url}: {e.message()}") from e
        except (TimeoutError, OSError, aiohttp.ClientError) as e:  # http.aio lets these through
            detail = str(e) or type(e).__name__
            raise ServerUnreachableError(unreachable_message(self.protocol, self.url, detail)) from e
        return meta if isinstance(meta, dict) else _message_to_dict(meta)

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], version: str = ""
    ) -> dict[str, np.ndarray]:
        requested = [self._mod.InferRequestedOutput(name) for name in outputs]
        try:
            result = await self._client.infer(
                model, infer_inputs(self._mod, inputs), model_version=version, outputs=requested
            )
        except InferenceServerException as e:
            raise ClientError(
                f"inference on {model!r}{f' version {version}' if version else ''} failed on "
                f"{self.protocol}://{self.url}: {e.message()}"
            ) from e
        except (TimeoutError, OSError, aiohttp.ClientError) as e:
            detail = str(e) or type(e).__name__
            raise ServerUnreachableError(unreachable_message(self.protocol, self.url, detail)) from e
        return {name: result.as_numpy(name) for name in outputs}
