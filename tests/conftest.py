"""Shared fixtures: real Fashion-MNIST subsets written in the canonical formats, and a small
model trained and exported once per session through the real commands."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["EDGEPACK_OFFLINE"] = "1"  # tests never download

ROOT = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (gzipped when the name ends in .gz), as the canonical release does."""
    magic = 0x08 << 8 | array.ndim  # 0x08: unsigned byte
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_idx_dataset(folder: Path, x_train, y_train, x_test, y_test) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", x_train.reshape(-1, 28, 28))
    write_idx(folder / "train-labels-idx1-ubyte.gz", y_train)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x_test.reshape(-1, 28, 28))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y_test)
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets, from EDGEPACK_DATA_DIR or ../shared/data; tests needing them skip otherwise."""
    candidates = [os.environ.get("EDGEPACK_DATA_DIR"), str(ROOT.parent / "shared" / "data")]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    pytest.skip("real datasets absent: set EDGEPACK_DATA_DIR to a folder holding fashion-mnist/ (../shared/data)")


@pytest.fixture(scope="session")
def fashion(shared_data):
    from train.datasets import load_dataset

    return load_dataset("fashion_mnist", shared_data)


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, fashion) -> Path:
    """12,000 training images and the full 10,000-image test split of Fashion-MNIST, as IDX files.

    The whole test split keeps the gate's default thresholds meaningful (0.05 pp is 5 images).
    """
    from train.datasets import subset

    small = subset(fashion, 12000, 10000, seed=1)
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root / "fashion-mnist", small.x_train, small.y_train, small.x_test, small.y_test)
    return root


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory, small_data_dir) -> Path:
    """models/fashion_mnist/model.keras: the baseline CNN trained for 8 epochs by `python -m train`."""
    from train.__main__ import main

    out = tmp_path_factory.mktemp("models")
    assert (
        main(
            [
                "--dataset",
                "fashion_mnist",
                "--arch",
                "baseline",
                "--epochs",
                "8",
                "--out",
                str(out),
                "--data-dir",
                str(small_data_dir),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def exported_models(trained_models, small_data_dir) -> Path:
    """The trained model exported to every default artifact by `python -m export`."""
    from export.__main__ import main

    assert (
        main(["--dataset", "fashion_mnist", "--models-dir", str(trained_models), "--data-dir", str(small_data_dir)])
        == 0
    )
    return trained_models


@pytest.fixture(scope="session")
def int8_model(exported_models) -> Path:
    return exported_models / "fashion_mnist" / "model_int8.onnx"


@pytest.fixture(scope="session")
def fp32_model(exported_models) -> Path:
    return exported_models / "fashion_mnist" / "model_fp32.onnx"
