"""Turn trained models into Triton model repositories, driven by one YAML spec.

Modules, in the order data flows through them:
  spec        -> parse and validate deploy.yaml into typed objects
  onnx_io     -> read inputs/outputs (names, types, dims, batch dimension) from ONNX graphs
  config      -> build ModelConfig protobufs (Triton's own schema) per model and flavor
  lint        -> check a whole repository plan before anything is written
  repository  -> assemble the ngc and embedded repositories on disk
  server      -> the one harness that starts/stops the embedded tritonserver
  cli         -> `triton-repo` console script
"""
