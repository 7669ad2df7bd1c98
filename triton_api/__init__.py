"""The one Triton client layer, shared by build_tools (verify, the server harness), clients/ and loadtest/.

  client   -> TritonClient / AsyncTritonClient over tritonclient HTTP and gRPC: readiness, metadata,
              config, repository index, load/unload (with a config override), inference, classification
  metrics  -> scrape the Prometheus metrics endpoint and read one metric
  endpoints -> HOST:PORT addresses as users type them (http:// and grpc:// accepted), checked early

It depends only on tritonclient and build_tools.errors (the one exception hierarchy), so every package
above it may use it. loadtest/loadgen.py keeps its own minimal client on purpose (it measures clients).
"""

from triton_api.client import (
    PROTOCOLS,
    AsyncTritonClient,
    Classification,
    PreparedRequest,
    Protocol,
    TritonClient,
    client_module,
    infer_inputs,
)
from triton_api.endpoints import DEFAULT_PORTS, parse_endpoint
from triton_api.metrics import metric_series, metric_value, scrape

__all__ = [
    "DEFAULT_PORTS",
    "PROTOCOLS",
    "AsyncTritonClient",
    "Classification",
    "PreparedRequest",
    "Protocol",
    "TritonClient",
    "client_module",
    "infer_inputs",
    "metric_series",
    "metric_value",
    "parse_endpoint",
    "scrape",
]
