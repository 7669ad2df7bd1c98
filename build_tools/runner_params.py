"""Parameter keys of the generated Python-backend models (the embedded runners: ONNX Runtime, torch; the
lifecycle router): written by build_tools.config, read by the models and by control.rollout.

A leaf module (no imports) so the runner, which runs inside Triton's Python-backend stub, can import it.
"""

RUNNER_PARAM_ONNX_FILE = "onnx_file"
RUNNER_PARAM_INTRA = "intra_op_threads"
RUNNER_PARAM_INTER = "inter_op_threads"
RUNNER_PARAM_OPT_LEVEL = "graph_optimization_level"
RUNNER_PARAM_RANGE_PREFIX = "input_range."  # + input name: "low,high" (values outside are refused)
RUNNER_PARAM_TORCHSCRIPT_FILE = "torchscript_file"
RUNNER_PARAM_TORCH_THREADS = "torch_threads"

# The lifecycle router (build_tools/python_models/router).
ROUTER_PARAM_TARGET = "target_model"
ROUTER_PARAM_WEIGHTS = "weights"
ROUTER_PARAM_PIN = "pin_parameter"
