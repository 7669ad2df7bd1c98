"""Reading interfaces from ONNX graphs: names, Triton data types, dims, batch dimension."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_tools.errors import ModelInspectionError
from build_tools.onnx_io import read_interface
from tests.support import onnx_models


def test_interface_read_when_graph_has_symbolic_dims(tmp_path: Path) -> None:
    iface = read_interface(onnx_models.dynamic_dim(tmp_path / "m.onnx"))
    assert [(t.name, t.data_type, t.dims) for t in iface.inputs] == [("x", "FP32", (-1, -1))]
    assert [t.name for t in iface.outputs] == ["total", "scaled"]
    assert iface.inputs[0].batch_dim_dynamic and iface.opset == 17


def test_initializers_skipped_when_listed_as_inputs(tmp_path: Path) -> None:
    iface = read_interface(onnx_models.int64_input(tmp_path / "m.onnx"))
    assert [(t.name, t.data_type) for t in iface.inputs] == [("ids", "INT64")]
    assert [(t.name, t.data_type) for t in iface.outputs] == [("tripled", "INT64"), ("as_float", "FP32")]


def test_fixed_batch_reported_when_exported_with_batch_one(tmp_path: Path) -> None:
    iface = read_interface(onnx_models.fixed_batch(tmp_path / "m.onnx"))
    assert iface.inputs[0].dims == (1, 3) and not iface.inputs[0].batch_dim_dynamic


def test_inspection_error_names_file_when_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model at all")
    with pytest.raises(ModelInspectionError, match=r"bad\.onnx"):
        read_interface(bad)
    with pytest.raises(ModelInspectionError, match="not found"):
        read_interface(tmp_path / "missing.onnx")
