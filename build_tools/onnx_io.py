"""Read a model's interface (tensor names, data types, dims, batch dimension) from its ONNX graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from build_tools.errors import ModelInspectionError

logger = logging.getLogger(__name__)

# ONNX TensorProto element types -> Triton data type names (model_config.proto, without TYPE_).
_ONNX_TO_TRITON: dict[int, str] = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "STRING",
    onnx.TensorProto.BFLOAT16: "BF16",
}

DYNAMIC = -1


@dataclass(frozen=True)
class GraphTensor:
    """One graph input or output; dims are the full ONNX shape, -1 where symbolic or unknown."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    @property
    def batch_dim_dynamic(self) -> bool:
        return bool(self.dims) and self.dims[0] == DYNAMIC


@dataclass(frozen=True)
class GraphInterface:
    path: Path
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]
    opset: int

    def input(self, name: str) -> GraphTensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> GraphTensor | None:
        return next((t for t in self.outputs if t.name == name), None)


def _tensor(value_info: onnx.ValueInfoProto, path: Path) -> GraphTensor:
    ttype = value_info.type
    if not ttype.HasField("tensor_type"):
        raise ModelInspectionError(
            f"{path}: graph tensor {value_info.name!r} is not a plain tensor "
            f"(sequence/map types cannot be served as Triton tensors)"
        )
    elem = ttype.tensor_type.elem_type
    if elem not in _ONNX_TO_TRITON:
        raise ModelInspectionError(
            f"{path}: graph tensor {value_info.name!r} has ONNX element type "
            f"{onnx.TensorProto.DataType.Name(elem)}, which Triton cannot serve; "
            f"allowed: {', '.join(onnx.TensorProto.DataType.Name(k) for k in _ONNX_TO_TRITON)}"
        )
    if not ttype.tensor_type.HasField("shape"):
        raise ModelInspectionError(
            f"{path}: graph tensor {value_info.name!r} has no shape (rank unknown); "
            f"re-export the model with static rank"
        )
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else DYNAMIC
        for d in ttype.tensor_type.shape.dim
    )
    return GraphTensor(value_info.name, _ONNX_TO_TRITON[elem], dims)


def read_interface(path: str | Path) -> GraphInterface:
    """Inputs (excluding initializers) and outputs of the graph, as Triton sees them."""
    path = Path(path)
    if not path.is_file():
        raise ModelInspectionError(f"{path}: model file not found")
    try:
        # The weights are not needed to read the interface; skip loading them for large models.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ... for corrupt files
        raise ModelInspectionError(f"{path}: not a readable ONNX model ({e})") from e
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_tensor(v, path) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor(v, path) for v in model.graph.output)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not inputs or not outputs:
        raise ModelInspectionError(f"{path}: the graph has no inputs or no outputs")
    return GraphInterface(path=path, inputs=inputs, outputs=outputs, opset=opset)
