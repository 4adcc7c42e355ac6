"""Shared fixtures: real Fashion-MNIST subsets written in the canonical formats, and a small
model trained and exported once per session through the real commands."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["EDGEPACK_OFFLINE"] = "1"  # tests never download

ROOT = Path(__file__).resolve().parent.parent


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once per test run.

    Under pytest-xdist (``make test`` runs two workers) each worker has its own session fixtures:
    training the same model in both at once would cost the two cores twice. The first worker to
    ask builds it under a file lock in the run's shared temporary folder; the others wait and reuse it.
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    folder = root / name
    with FileLock(f"{folder}.lock"):
        if not (root / f"{name}.built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (root / f"{name}.built").touch()
    return folder


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
    """models/fashion_mnist/: the baseline CNN trained for 8 epochs by `python -m train`, then
    exported to every default artifact by `python -m export` (in one step, so that no test, in
    either pytest worker, ever sees the folder halfway through its export)."""
    from export.__main__ import main as export
    from train.__main__ import main as train

    def build(out: Path) -> None:
        data = ["--dataset", "fashion_mnist", "--data-dir", str(small_data_dir)]
        assert train([*data, "--arch", "baseline", "--epochs", "8", "--out", str(out)]) == 0
        assert export([*data, "--models-dir", str(out)]) == 0

    return built_once(tmp_path_factory, "models", build)


@pytest.fixture(scope="session")
def exported_models(trained_models) -> Path:
    """The trained model's release folder, with every default artifact."""
    return trained_models


@pytest.fixture(scope="session")
def int8_model(exported_models) -> Path:
    return exported_models / "fashion_mnist" / "model_int8.onnx"


@pytest.fixture(scope="session")
def fp32_model(exported_models) -> Path:
    return exported_models / "fashion_mnist" / "model_fp32.onnx"


PATTERN_CLASSES = ("checks", "hstripes", "rings", "vstripes")


def pattern_image(kind: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A noisy, randomly coloured and phased pattern of class ``kind`` (uint8 HxWx3)."""
    y, x = np.mgrid[0:size, 0:size]
    period, phase = rng.uniform(3, 6), rng.uniform(0, 2 * np.pi)
    waves = {
        0: np.sign(np.sin(2 * x / period + phase) * np.sin(2 * y / period + phase)),
        1: np.sin(2 * y / period + phase),
        2: np.sin(2 * np.hypot(x - size / 2, y - size / 2) / period + phase),
        3: np.sin(2 * x / period + phase),
    }
    image = 0.5 + 0.4 * waves[kind][..., None] * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 0.08, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def pattern_folder(tmp_path_factory) -> Path:
    """A user's image-folder dataset: train/<class>/*.png and test/<class>/*.png, four classes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("patterns")
    rng = np.random.default_rng(0)
    for split, count in (("train", 250), ("test", 250)):
        for kind, name in enumerate(PATTERN_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(pattern_image(kind, rng)).save(folder / f"{i:03d}.png")
    return root


def deterministic(seed: int) -> None:
    """Seeds and deterministic kernels, so that a model a test trains is the same under any load
    (TensorFlow's reductions otherwise depend on how threads are scheduled)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit_user_model(model, folder: Path, epochs: int, run_eagerly: bool = False):
    """Train a user's model the way a user would: Keras fit on the decoded folder, raw 0..255 pixels.

    ``run_eagerly`` skips tracing the training step, which for a keras.applications network takes
    longer (about 40 s here) than a few eager steps."""
    import keras

    from train.datasets import load_image_folder

    data = load_image_folder(folder)
    deterministic(0)
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"], run_eagerly=run_eagerly
    )
    model.fit(data.x_train.astype("float32"), data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return data


@pytest.fixture(scope="session")
def mobilenet_model(tmp_path_factory, pattern_folder) -> Path:
    """keras.applications MobileNetV2 (alpha 0.35, 32x32, weights=None) inside a functional model that
    takes raw 0..255 pixels and scales them itself with Rescaling(1/127.5, offset=-1), as
    include_preprocessing models do."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    base = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    for layer in base.layers:  # so that moving statistics settle within seconds of training
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    x = keras.layers.Dropout(0.2)(base(x))
    model = keras.Model(inputs, keras.layers.Dense(len(PATTERN_CLASSES), activation="softmax")(x))
    # 25 epochs: 99.8% on the test patterns, so both int8 artifacts pass plainly with a wide margin
    # (drop bound 0.15 / 0.05 pp); at 15 epochs (98.8%, overfit) near-ties decided the gate

    def fit(folder: Path) -> None:
        fit_user_model(model, pattern_folder, epochs=25)
        model.save(folder / "mobilenet.keras")

    return built_once(tmp_path_factory, "mobilenet", fit) / "mobilenet.keras"


@pytest.fixture(scope="session")
def nested_model(tmp_path_factory, pattern_folder) -> Path:
    """A functional model nesting another, with the ops users' models have: Rescaling, augmentation,
    separable and depthwise convolutions, residual Add, Concatenate, ReLU6, hard-swish, swish,
    global pooling, Dropout; 40x40 input (the data is 32x32) and logits out (no softmax)."""
    import keras
    from keras import layers

    inner_in = keras.Input((40, 40, 3))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inner_in)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(max_value=6)(x)
    y = layers.SeparableConv2D(16, 3, padding="same", activation="hard_swish")(x)
    x = layers.Add()([x, y])
    z = layers.DepthwiseConv2D(3, padding="same", activation="swish")(x)
    x = layers.Concatenate()([x, z])
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    inner = keras.Model(inner_in, layers.GlobalAveragePooling2D()(x), name="backbone")
    inputs = keras.Input((40, 40, 3))
    x = layers.RandomTranslation(0.1, 0.1)(inputs)
    x = layers.Rescaling(1 / 255)(x)
    x = layers.Dropout(0.1)(inner(x))
    model = keras.Model(inputs, layers.Dense(len(PATTERN_CLASSES))(x), name="nested")
    from runtime.metadata import ModelInfo
    from runtime.preprocess import to_pixels
    from train.datasets import load_image_folder

    data = load_image_folder(pattern_folder)
    sized = to_pixels(data.x_train, ModelInfo(labels=PATTERN_CLASSES, height=40, width=40, channels=3))

    def fit(folder: Path) -> None:
        deterministic(0)
        model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(sized.astype("float32"), data.y_train, epochs=10, batch_size=32, verbose=0)
        model.save(folder / "nested.keras")

    return built_once(tmp_path_factory, "nested", fit) / "nested.keras"
