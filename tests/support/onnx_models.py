"""Small ONNX models the tests build themselves, each exercising one thing the build tools must handle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime 1.32 and by the 24.10 image's onnxruntime
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def multi_input(path: Path) -> Path:
    """Two FP32 inputs; the output name `sum:0` is not a valid identifier."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])
    out = helper.make_tensor_value_info("sum:0", TensorProto.FLOAT, ["N", 4])
    diff = helper.make_tensor_value_info("diff", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Add", ["a", "b"], ["sum:0"]), helper.make_node("Sub", ["a", "b"], ["diff"])]
    return _save(helper.make_graph(nodes, "multi_input", [a, b], [out, diff]), path)


def int64_input(path: Path) -> Path:
    """INT64 ids -> ids * 3 (INT64) and a FP32 embedding-like projection."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])
    tripled = helper.make_tensor_value_info("tripled", TensorProto.INT64, ["N", 3])
    as_float = helper.make_tensor_value_info("as_float", TensorProto.FLOAT, ["N", 3])
    three = numpy_helper.from_array(np.array(3, dtype=np.int64), "three")
    nodes = [
        helper.make_node("Mul", ["ids", "three"], ["tripled"]),
        helper.make_node("Cast", ["ids"], ["as_float"], to=TensorProto.FLOAT),
    ]
    return _save(helper.make_graph(nodes, "int64_input", [ids], [tripled, as_float], [three]), path)


def dynamic_dim(path: Path) -> Path:
    """[N, L] with a variable sequence length L: per-row sum and a scaled copy."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1])
    scaled = helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", "L"])
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
        helper.make_node("Mul", ["x", "half"], ["scaled"]),
    ]
    return _save(helper.make_graph(nodes, "dynamic_dim", [x], [total, scaled], [axes, half]), path)


def fixed_batch(path: Path) -> Path:
    """Exported with batch fixed to 1: [1, 3] -> Relu."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    return _save(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed_batch", [x], [y]), path)


def classifier(path: Path, seed: int = 0, classes: int = 4) -> Path:
    """A tiny image classifier [N,1,8,8] -> softmax [N,classes]; the seed changes its weights."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])
    shape = numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape")
    w = numpy_helper.from_array(rng.normal(size=(64, classes)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Reshape", ["pixels", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
    ]
    return _save(helper.make_graph(nodes, "classifier", [x], [y], [shape, w]), path)


def build_all(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {
        "multi_input": multi_input(root / "multi_input.onnx"),
        "int64_input": int64_input(root / "int64_input.onnx"),
        "dynamic_dim": dynamic_dim(root / "dynamic_dim.onnx"),
        "fixed_batch": fixed_batch(root / "fixed_batch.onnx"),
        "classifier": classifier(root / "classifier.onnx"),
    }


# The spec the server tests serve: one model per ONNX file above, each with the settings it tests.
def models_spec(root: Path, output: Path, mnist_onnx: Path | None = None) -> dict[str, Any]:
    files = build_all(root / "onnx")
    (root / "classes.txt").write_text("cat\ndog\nbird\nfish\n")
    spec: dict[str, Any] = {
        "flavors": {"embedded": {"output": str(output)}},
        "models": {
            "t_multi_input": {
                "source": str(files["multi_input"]),
                "max_batch_size": 16,
                # A long queue delay with one instance makes batching under concurrent load certain.
                "dynamic_batching": {"preferred_batch_size": [8, 16], "max_queue_delay_microseconds": 20000},
                "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 1}]},
            },
            "t_int64": {
                "source": str(files["int64_input"]),
                "max_batch_size": 8,
                "dynamic_batching": {"max_queue_delay_microseconds": 100},
                "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 3}]},
                "warmup": [{"name": "zeros", "batch_size": 2, "data": "zero"}],
            },
            "t_dynamic_dim": {
                "source": str(files["dynamic_dim"]),
                "max_batch_size": 8,
                "dynamic_batching": {"max_queue_delay_microseconds": 5000},
                "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 1}]},
            },
            "t_fixed_batch": {
                "source": str(files["fixed_batch"]),
                "max_batch_size": 0,
                "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 1}]},
            },
            "t_classifier": {
                "versions": {
                    1: str(files["classifier"]),
                    2: str(classifier(root / "onnx" / "classifier_v2.onnx", seed=1)),
                },
                "max_batch_size": 8,
                "inputs": {"pixels": {"format": "FORMAT_NCHW"}},
                "outputs": {"scores": {"labels": str(root / "classes.txt")}},
                "version_policy": {"all": True},
                "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 1}]},
            },
        },
    }
    if mnist_onnx is not None:
        # Version 2 is a deliberately different model: evaluate must catch the broken parity.
        spec["models"]["t_mnist_versions"] = {
            "versions": {1: str(mnist_onnx), 2: str(perturbed_copy(mnist_onnx, root / "onnx" / "mnist_v2.onnx"))},
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_microseconds": 100},
            "version_policy": {"all": True},
            "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 1}]},
        }
        # Load shedding: a short queue and a queue budget; past capacity the server refuses at once.
        spec["models"]["t_mnist_shedding"] = {
            "source": str(mnist_onnx),
            "max_batch_size": 64,
            "dynamic_batching": dict(SHEDDING_POLICY),
            # Three instances: with one, the lost wake-up of docs/stall.md hits every full-queue cycle.
            "instance_groups": {"embedded": [{"kind": "KIND_CPU", "count": 3}]},
        }
    return spec


# The queue policy of t_mnist_shedding: at most 8 requests queued, none queued longer than 100 ms,
# clients may ask for less (Triton's per-request `timeout`).
SHEDDING_POLICY: dict[str, Any] = {
    "max_queue_delay_microseconds": 0,
    "max_queue_size": 8,
    "default_timeout_microseconds": 100_000,
    "allow_timeout_override": True,
}


def perturbed_copy(src: Path, dst: Path, seed: int = 0, scale: float = 0.05) -> Path:
    """The same graph with noisy weights: a 'retrained' version whose predictions differ a little."""
    from clients.lifecycle_demo import perturbed_copy as perturb

    return perturb(src, dst, scale=scale, seed=seed)


def unloadable_copy(src: Path, dst: Path) -> Path:
    """The same interface (the file parses and lints), but ONNX Runtime refuses to build a session:
    one extra node uses an operator that exists in no domain."""
    model = onnx.load(str(src))
    first_input = model.graph.input[0].name
    model.graph.node.append(helper.make_node("NoSuchOperator", [first_input], ["unused_out"], domain="no.such"))
    model.opset_import.append(helper.make_opsetid("no.such", 1))
    onnx.save(model, str(dst))
    return dst


def slow_copy(src: Path, dst: Path, rounds: int = 10, width: int = 1024) -> Path:
    """The same predictions, much slower: a chain of large MatMuls on the input, multiplied by zero and
    added to the output (ONNX Runtime does not fold it away), so only latency changes."""
    model = onnx.load(str(src))
    graph = model.graph
    inp, out = graph.input[0], graph.output[0]
    features = int(np.prod([d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]))
    rng = np.random.default_rng(0)
    for node in graph.node:  # the old output becomes an internal tensor
        node.output[:] = [f"{o}__fast" if o == out.name else o for o in node.output]
    graph.initializer.extend([
        numpy_helper.from_array(np.array([-1, features], dtype=np.int64), "slow_shape"),
        numpy_helper.from_array((rng.normal(size=(features, width)) * 0.01).astype(np.float32), "slow_w0"),
        numpy_helper.from_array((rng.normal(size=(width, width)) * 0.01).astype(np.float32), "slow_w"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero"),
    ])
    nodes = [helper.make_node("Reshape", [inp.name, "slow_shape"], ["slow_flat"]),
             helper.make_node("MatMul", ["slow_flat", "slow_w0"], ["slow_0"])]
    for i in range(rounds):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{rounds}"], ["slow_sum"], keepdims=1),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", [f"{out.name}__fast", "slow_nothing"], [out.name]),
    ]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def tiny_classifier(
    path: Path, classes: int = 3, size: int = 4, seed: int = 0, *, input_name: str = "image",
    uint8_output: bool = False,
) -> Path:
    """image [N,1,size,size] -> probabilities [N,classes]: Flatten, MatMul, Add, Softmax (opset 13).

    uint8_output adds `top` [N,1] UINT8, the top class (ArgMax, Cast), as label outputs often are.
    """
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(size * size, classes)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "B")
    nodes = [
        helper.make_node("Flatten", [input_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])]
    if uint8_output:
        nodes += [
            helper.make_node("ArgMax", ["logits"], ["top64"], axis=1, keepdims=1),
            helper.make_node("Cast", ["top64"], ["top"], to=TensorProto.UINT8),
        ]
        outputs.append(helper.make_tensor_value_info("top", TensorProto.UINT8, ["N", 1]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 1, size, size])],
        outputs,
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def with_output_offset(source: Path, path: Path, offset: np.ndarray) -> Path:
    """A copy of ``source`` whose first output has ``offset`` added (a reference that drifts on purpose)."""
    model = onnx.load(str(source))
    graph = model.graph
    name = graph.output[0].name
    raw = f"{name}_before_offset"
    for node in graph.node:
        node.output[:] = [raw if o == name else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.asarray(offset, dtype=np.float32), f"{name}_offset"))
    graph.node.append(helper.make_node("Add", [raw, f"{name}_offset"], [name]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
