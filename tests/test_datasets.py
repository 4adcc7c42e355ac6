"""The dataset registry and loaders, on fixtures written in the real formats."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_idx, write_idx_dataset
from train.datasets import (
    CIFAR10_LABELS,
    DataError,
    load_dataset,
    load_image_folder,
    read_idx,
    search_dirs,
    train_val_split,
)

RNG = np.random.default_rng(0)


def tiny_idx(folder: Path, n_train: int = 20, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    x = RNG.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    y = np.arange(n_train + n_test, dtype=np.uint8) % 10
    write_idx_dataset(folder, x[:n_train], y[:n_train], x[n_train:], y[n_train:])
    return x, y


def test_idx_round_trip_through_the_registry(tmp_path):
    x, y = tiny_idx(tmp_path / "fashion-mnist")
    data = load_dataset("fashion_mnist", tmp_path)
    assert data.x_train.shape == (20, 28, 28, 1) and data.x_test.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(data.x_train[..., 0], x[:20])
    np.testing.assert_array_equal(data.y_test, y[20:])
    assert data.labels[9] == "Ankle boot"


def test_uncompressed_idx_files_load_too(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    x = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.array([1, 2, 3, 4], np.uint8))
    assert load_dataset("fashion_mnist", tmp_path).y_train.tolist() == [1, 2, 3, 4]


def test_wrong_magic_names_the_file(tmp_path):
    tiny_idx(tmp_path / "fashion-mnist")
    bad = tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    write_idx(bad, np.zeros((20, 28, 28), np.uint8))  # an images file where labels belong
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: wrong magic number 2051"):
        load_dataset("fashion_mnist", tmp_path)


def test_truncated_idx_names_the_file(tmp_path):
    tiny_idx(tmp_path / "fashion-mnist")
    path = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: expected 7840 bytes"):
        read_idx(path, 2051)


def test_corrupt_gzip_names_the_file(tmp_path):
    tiny_idx(tmp_path / "fashion-mnist")
    path = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_dataset("fashion_mnist", tmp_path)


def test_missing_label_file(tmp_path):
    tiny_idx(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-images-idx3-ubyte"):
        load_dataset("fashion_mnist", tmp_path)


def test_not_found_offline_says_how_to_point_at_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("EDGEPACK_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="point --data-dir or EDGEPACK_DATA_DIR"):
        load_dataset("cifar10", tmp_path / "empty")


def test_search_order_flag_then_env_then_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert search_dirs(tmp_path / "flag") == [tmp_path / "flag", tmp_path / "env", tmp_path / "keras" / "datasets"]
    tiny_idx(tmp_path / "env" / "fashion-mnist", n_train=20)
    tiny_idx(tmp_path / "keras" / "datasets" / "fashion-mnist", n_train=30)
    assert len(load_dataset("fashion_mnist").x_train) == 20  # the environment wins over the Keras cache


def cifar_pickles(folder: Path) -> np.ndarray:
    folder.mkdir(parents=True)
    images = RNG.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": images.reshape(6, -1), b"labels": [0, 1, 2, 3, 4, 5]}, handle)
    return images


def test_cifar_pickles_in_keras_layout(tmp_path):
    images = cifar_pickles(tmp_path / "cifar-10-batches-py")
    data = load_dataset("cifar10", tmp_path)
    assert data.x_train.shape == (30, 32, 32, 3) and data.x_test.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(data.x_test[2], images[2].transpose(1, 2, 0))
    assert data.labels == CIFAR10_LABELS


def test_cifar_pickle_that_is_not_one(tmp_path):
    cifar_pickles(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 batch"):
        load_dataset("cifar10", tmp_path)


def image_tree(root: Path, classes=("cat", "dog"), per_class: int = 3, size=(32, 32)) -> None:
    for split in ("train", "test"):
        for i, label in enumerate(classes):
            folder = root / split / label
            folder.mkdir(parents=True)
            for n in range(per_class):
                Image.new("RGB", size, (40 * i, 10 * n, 200)).save(folder / f"{n:04d}.png")


def test_image_folder_directory_with_own_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    image_tree(tmp_path / "pets")
    data = load_dataset(str(tmp_path / "pets"))
    assert data.labels == ("cat", "dog") and data.name == "pets"
    assert data.x_train.shape == (6, 32, 32, 3) and data.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert tuple(data.x_test[4, 0, 0]) == (40, 10, 200)


def test_image_folder_tarball_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    image_tree(tmp_path / "tree" / "cifar10-jpeg", classes=CIFAR10_LABELS, per_class=1)
    archive = tmp_path / "data" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "cifar10-jpeg", arcname="cifar10-jpeg")
    first = load_dataset("cifar10", tmp_path / "data")
    assert first.x_train.shape == (10, 32, 32, 3) and first.y_test.tolist() == list(range(10))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    second = load_image_folder(archive, "cifar10", CIFAR10_LABELS)
    np.testing.assert_array_equal(first.x_train, second.x_train)


def test_truncated_archive_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    image_tree(tmp_path / "tree", per_class=40)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match="broken.tar.gz: unreadable or truncated archive"):
        load_image_folder(archive)


def test_unknown_class_folder_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    image_tree(tmp_path / "cifar10", classes=("airplane", "spaceship"))
    with pytest.raises(DataError, match=r"class folders \['spaceship'\] do not match"):
        load_dataset("cifar10", tmp_path)


def test_image_folder_without_a_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    image_tree(tmp_path / "pets")
    for path in sorted((tmp_path / "pets" / "test").rglob("*.png")):
        path.unlink()
    with pytest.raises(DataError, match="no images under test/<class>/"):
        load_dataset(str(tmp_path / "pets"))


def test_validation_split_is_stratified_and_disjoint():
    x = np.arange(1000)
    y = np.repeat(np.arange(10), 100)
    (x_tr, y_tr), (x_val, y_val) = train_val_split(x, y, 0.1, seed=3)
    assert len(x_val) == 100 and np.bincount(y_val).tolist() == [10] * 10
    assert not set(x_tr) & set(x_val) and len(x_tr) + len(x_val) == 1000


def test_real_fashion_mnist_splits(fashion):
    assert fashion.x_train.shape == (60000, 28, 28, 1) and fashion.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10


def test_real_cifar10_jpeg_copy(shared_data):
    data = load_dataset("cifar10", shared_data)
    assert data.x_train.shape == (50000, 32, 32, 3) and data.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(data.y_train).tolist() == [5000] * 10
