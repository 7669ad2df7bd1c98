"""Tiny Python-backend models for harness tests: a config built as a ModelConfig, plus a model.py."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''

# Crashes tritonserver while it unloads: the stub's parent is the server, and SIGSEGV is what a real
# crash in a backend during unload delivers.
CRASH_ON_UNLOAD = IDENTITY + '''
    def finalize(self):
        import os, signal
        os.kill(os.getppid(), signal.SIGSEGV)
'''


def python_model_repository(root: Path, name: str = "identity", source: str = IDENTITY) -> Path:
    """A repository with one Python-backend model: FP32 x [1] -> y [1], one CPU instance."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[1])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    (root / name / "1" / "model.py").write_text(source)
    return root
