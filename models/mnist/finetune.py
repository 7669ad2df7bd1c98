"""The showcase's part of `triton-repo finetune` (deploy.yaml `lifecycle.finetune.adapter`).

control/finetune.py is generic: it calls these functions of the model's adapter file, and nothing else
about MNIST. The network and its training helpers are train.py's (the script that made the champion).

    load_network(onnx_path) -> torch.nn.Module    trainable network with the served file's weights (logits)
    export_module(network) -> torch.nn.Module     what is exported: the served signature (probabilities)
    replay_data() -> (uint8 inputs, int64 labels)  the original training data, model-ready
    augment(batch, generator) -> batch             the training augmentation (optional)

The drift scenario (`make drift-demo`, clients/drift_demo.py, generic too) calls these:

    stream_data() -> (uint8 inputs, int64 labels)  labelled data the monitoring reference never saw
    SHIFTS: {name: fn(uint8 inputs) -> inputs}     the shifts the spec may choose
                                                   (monitoring.models.<name>.shift)
    encode_request(input) -> bytes                 one model-ready input as the ensemble's raw request

`thicker_pen` is the showcase's shift for the tests and the measurement: the same digits written with a
thicker pen (grey-level dilation), which the champion reads much worse.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# Augmentation while fine-tuning: train.py's defaults (the champion was trained with them).
MAX_DEGREES = 12.0
MAX_SHIFT_PX = 2.5


def _train_module() -> ModuleType:
    """train.py, loaded by path (models/mnist is not a package)."""
    name = "mnist_train_for_finetune"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "train.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_network(onnx_path: Path) -> torch.nn.Module:
    # The served ONNX file has BatchNorm folded into the convolutions; train.py rebuilds the network
    # from it exactly (control/finetune.py keeps BatchNorm statistics frozen while fine-tuning).
    return _train_module().net_from_onnx(Path(onnx_path))


def export_module(network: torch.nn.Module) -> torch.nn.Module:
    return _train_module().ProbabilityModel(network)


def replay_data() -> tuple[np.ndarray, np.ndarray]:
    """The 4,500 training digits of the canonical split, as [N, 1, 28, 28] uint8 (the model's input)."""
    from clients.datasets import mnist_train

    data = mnist_train()
    return data.images[:, None], data.labels


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return _train_module().random_affine(batch, generator, MAX_DEGREES, MAX_SHIFT_PX)


def thicker_pen(images: np.ndarray, radius: int = 2) -> np.ndarray:
    """Grey-level dilation with a (2r+1)^2 square: every stroke `radius` pixels wider on each side."""
    out = images.copy()
    pad = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(radius, radius), (radius, radius)])
    h, w = images.shape[-2:]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            np.maximum(out, pad[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w], out=out)
    return out


def thicker_pen_1px(images: np.ndarray) -> np.ndarray:
    """The drift scenario's shift: a pen 1 px thicker on every side (3x3 dilation). Through the served
    ensemble (raw PNG bytes) the preprocessing still reads every such digit; at 2 px some digits are
    mostly ink and it refuses them as 'no digit' (measured with the drift demo)."""
    return thicker_pen(images, radius=1)


SHIFTS = {"thicker_pen": thicker_pen_1px, "thicker_pen_2px": thicker_pen}


def stream_data() -> tuple[np.ndarray, np.ndarray]:
    """The drift scenario's traffic: the training split (the reference is the held-out split), as
    [N, 1, 28, 28] uint8 and int64 labels."""
    return replay_data()


def encode_request(image: np.ndarray) -> bytes:
    """A model-ready digit (28x28 uint8, any leading dims of size 1) as the PNG a client would send."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    pixels = np.asarray(image, dtype=np.uint8).reshape(image.shape[-2:])
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_shifted_sets(folder: Path, feedback: int = 500, seed: int = 13, radius: int = 2) -> list[Path]:
    """The thicker-pen measurement's inputs: `feedback` training digits (labelled feedback) and the 500
    held-out digits (to report on; never trained on), both as .npz with `images` and `labels`."""
    from clients.datasets import mnist_train

    folder.mkdir(parents=True, exist_ok=True)
    train = mnist_train()
    pick = np.random.default_rng(seed).choice(len(train), feedback, replace=False)
    holdout = np.load(HERE / "holdout_digits.npz")["image"]
    paths = [folder / "thicker_pen_feedback.npz", folder / "thicker_pen_holdout.npz"]
    np.savez(paths[0], images=thicker_pen(train.images[pick][:, None], radius), labels=train.labels[pick])
    np.savez(paths[1], images=thicker_pen(holdout, radius), labels=np.load(HERE / "holdout_labels.npy"))
    return paths


if __name__ == "__main__":
    import argparse

    if str(HERE.parents[1]) not in sys.path:
        sys.path.insert(0, str(HERE.parents[1]))
    parser = argparse.ArgumentParser(description="write the thicker-pen feedback and held-out sets (.npz)")
    parser.add_argument("--out", type=Path, default=Path("build/finetune"))
    parser.add_argument("--feedback", type=int, default=500)
    parser.add_argument("--radius", type=int, default=2, help="pixels added to each side of every stroke")
    ns = parser.parse_args()
    for written in write_shifted_sets(ns.out, ns.feedback, radius=ns.radius):
        print(written)
