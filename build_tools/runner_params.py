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
# The router's own optional input (each image's original size, for monitoring): never sent to the target.
ROUTER_PARAM_ORIGINAL_SIZE = "original_size_input"
# "true": while one version takes all the traffic, the ensembles call it directly (no BLS hop through the
# router); control.rollout switches them back through the router when a split starts.
ROUTER_PARAM_BYPASS = "bypass_when_single_version"

# Model monitoring inside Triton (control/monitor/serving.py; the spec's `monitoring:` section).
MONITOR_PARAM_ENABLED = "monitoring.enabled"  # "true" on the model that watches its predictions
MONITOR_PARAM_MODEL = "monitoring.model"  # the model name metrics and log records carry
MONITOR_PARAM_INPUT = "monitoring.input"  # the image input the statistics are computed on
MONITOR_PARAM_SCALE = "monitoring.input_scale"  # the input value of full ink (255 for 0-255 pixels)
MONITOR_PARAM_OUTPUT = "monitoring.output"  # the class-probability output
MONITOR_PARAM_DATABASE = "monitoring.database"  # the prediction log's database URL
MONITOR_PARAM_SAMPLE = "monitoring.sample_rate"  # share of requests logged
MONITOR_PARAM_KEEP_INPUTS = "monitoring.keep_inputs_rate"  # share of logged records that keep the input
MONITOR_PARAM_MAX_ROWS = "monitoring.retention_max_rows"
MONITOR_PARAM_MAX_DAYS = "monitoring.retention_max_days"
MONITOR_PARAM_QUEUE = "monitoring.queue_size"  # records waiting for the database; beyond: dropped
MONITOR_PARAM_FLUSH_MS = "monitoring.flush_ms"  # how often metrics and the log are flushed
