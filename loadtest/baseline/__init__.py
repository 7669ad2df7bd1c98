"""The seed's serving approach (a Flask app around ONNX Runtime), kept as the benchmark baseline."""
