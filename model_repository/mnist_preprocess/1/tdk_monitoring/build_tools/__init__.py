"""Turn trained models into Triton model repositories, driven by one YAML spec.

Modules, in the order data flows through them:
  spec        -> parse and validate deploy.yaml into typed objects
  onnx_io     -> read inputs/outputs (names, types, dims, batch dimension) from ONNX graphs
  interfaces  -> resolve every model's and ensemble's interface once (tensors, labels, warmup files)
  lint        -> check a whole repository plan before anything is written
  config      -> build each model folder: its ModelConfig protobuf and the files it holds
  repository  -> write the folders, run the build steps it is given, swap the result in
  build       -> the standard build steps (shm note, TensorRT plans) that every caller uses
  served      -> the model and tensor names a classification client uses, from the spec
  server      -> the one harness that starts/stops the embedded tritonserver
  verify      -> check a running server against the spec and repository
  cli         -> `triton-repo` console script
Talking to Triton goes through the top-level `triton_api` package.
"""
